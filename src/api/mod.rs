//! HTTP only: routes, extractors, representations and the problem+json mapping. Business
//! decisions live in `pipeline`; this layer parses, calls, and renders.

pub mod audit;
pub mod caller;
pub mod error;
pub mod extract;
pub mod holds;
pub mod middleware;
pub mod openapi_schemas;
pub mod ops;
pub mod respond;
pub mod state;
pub mod transactions;
pub mod wallets;

use actix_web::{Route, web};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use error::ApiError;
pub use state::AppState;

/// Routes of the service. Each resource answers 405 (with `Allow`) for other methods; unknown
/// paths answer 404, both as problem documents.
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .service(resource("/healthz", web::get().to(ops::healthz), "GET"))
        .service(resource("/readyz", web::get().to(ops::readyz), "GET"))
        .service(resource("/metrics", web::get().to(ops::metrics), "GET"))
        .service(resource(
            "/openapi.json",
            web::get().to(ops::openapi),
            "GET",
        ))
        .service(resource("/docs", web::get().to(ops::docs), "GET"))
        .service(resource(
            "/docs/{file:.*}",
            web::get().to(ops::docs_asset),
            "GET",
        ))
        .service(resource(
            "/v1/wallets",
            web::post().to(wallets::create_wallet),
            "POST",
        ))
        .service(resource(
            "/v1/wallets/{id}",
            web::get().to(wallets::get_wallet),
            "GET",
        ))
        .service(resource(
            "/v1/wallets/{id}/debit",
            web::post().to(wallets::debit),
            "POST",
        ))
        .service(resource(
            "/v1/wallets/{id}/credit",
            web::post().to(wallets::credit),
            "POST",
        ))
        .service(resource(
            "/v1/wallets/{id}/ledger",
            web::get().to(wallets::ledger),
            "GET",
        ))
        .service(resource(
            "/v1/transactions/{id}",
            web::get().to(transactions::get_transaction),
            "GET",
        ))
        .service(resource(
            "/v1/transactions/{id}/reverse",
            web::post().to(transactions::reverse),
            "POST",
        ))
        .service(resource(
            "/v1/wallets/{id}/holds",
            web::post().to(holds::place_hold),
            "POST",
        ))
        .service(resource(
            "/v1/holds/{id}",
            web::get().to(holds::get_hold),
            "GET",
        ))
        .service(resource(
            "/v1/holds/{id}/capture",
            web::post().to(holds::capture_hold),
            "POST",
        ))
        .service(resource(
            "/v1/holds/{id}/void",
            web::post().to(holds::void_hold),
            "POST",
        ))
        .service(resource(
            "/v1/wallets/{id}/audit",
            web::get().to(audit::audit_wallet),
            "GET",
        ))
        .service(resource(
            "/v1/wallets/{id}/balance",
            web::get().to(audit::balance_as_of),
            "GET",
        ))
        .service(resource(
            "/v1/ledger/export",
            web::get().to(audit::export_ledger),
            "GET",
        ))
        .default_service(web::to(|| async {
            Err::<actix_web::HttpResponse, _>(ApiError::RouteNotFound)
        }));
}

fn resource(path: &str, route: Route, allow: &'static str) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(move || async move {
            Err::<actix_web::HttpResponse, _>(ApiError::MethodNotAllowed(allow))
        }))
}

/// The routes that need no API key; every other operation needs one (`security: []` on these).
pub const PUBLIC_PATHS: [&str; 5] = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs"];

#[derive(OpenApi)]
#[openapi(
    info(title = "walletd", description = "Idempotent wallet debit/credit service. Every `/v1` \
        route needs `Authorization: Bearer <api key>`; each operation names the scope its key \
        must carry. Every mutating POST needs an `Idempotency-Key`. Money is a decimal string. \
        Errors are RFC 9457 problem documents with a stable `code`."),
    servers((url = "/", description = "The walletd that serves this document")),
    tags(
        (name = "wallets", description = "Wallets, their debits and credits, and the ledger"),
        (name = "holds", description = "Authorize now, capture later"),
        (name = "transactions", description = "Ledger entries and their reversals"),
        (name = "ledger", description = "Finance reads: audit, balance as of an instant, export"),
        (name = "operations", description = "Liveness, readiness, metrics, this document and \
            its Swagger UI; no authentication"),
    ),
    security(("bearer" = [])),
    paths(
        wallets::create_wallet, wallets::get_wallet, wallets::debit, wallets::credit, wallets::ledger,
        transactions::get_transaction, transactions::reverse,
        holds::place_hold, holds::get_hold, holds::capture_hold, holds::void_hold,
        audit::audit_wallet, audit::balance_as_of, audit::export_ledger,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi, ops::docs,
    ),
    components(
        schemas(openapi_schemas::Problem, openapi_schemas::ReplayedFlag),
        responses(
            openapi_schemas::BadEntryRequest, openapi_schemas::BadQuery,
            openapi_schemas::Unauthorized, openapi_schemas::Forbidden,
            openapi_schemas::WalletNotFound, openapi_schemas::TransactionNotFound,
            openapi_schemas::IdempotencyKeyInProgress, openapi_schemas::PayloadTooLarge,
            openapi_schemas::RequestTimeout, openapi_schemas::IdempotencyKeyExpired,
            openapi_schemas::UnsupportedMediaType, openapi_schemas::DebitDeclined,
            openapi_schemas::CreditDeclined, openapi_schemas::IdempotencyKeyReused,
            openapi_schemas::RateLimited, openapi_schemas::Unavailable,
            openapi_schemas::HoldNotFound, openapi_schemas::ReverseNotFound,
            openapi_schemas::PlaceHoldDeclined, openapi_schemas::CaptureDeclined,
            openapi_schemas::VoidDeclined, openapi_schemas::ReverseDeclined,
        ),
    ),
    modifiers(&BearerAuth, &CommonHeaders)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("wd_<key id>_<secret>")
                    .description(Some(
                        "An API key from `walletd tenant create` or `walletd key create`. A key \
                         carries scopes (`wallets:write`, `wallets:read`, `ledger:read`); each \
                         operation's description names the one it needs (403 `forbidden` \
                         without it). Missing or unknown key: 401.",
                    ))
                    .build(),
            ),
        );
    }
}

/// `Cache-Control` and `X-Request-Id` on every documented response.
struct CommonHeaders;

impl utoipa::Modify for CommonHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut add = |response: &mut utoipa::openapi::RefOr<utoipa::openapi::Response>| {
            if let utoipa::openapi::RefOr::T(response) = response {
                openapi_schemas::add_common_headers(response);
            }
        };
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ]
            .into_iter()
            .flatten()
            {
                operation
                    .responses
                    .responses
                    .values_mut()
                    .for_each(&mut add);
            }
        }
        if let Some(components) = openapi.components.as_mut() {
            components.responses.values_mut().for_each(&mut add);
        }
    }
}

/// The OpenAPI document, rendered once at start.
pub fn openapi_json() -> anyhow::Result<String> {
    let mut doc = serde_json::to_value(ApiDoc::openapi())?;
    openapi_schemas::finish_document(&mut doc);
    Ok(serde_json::to_string_pretty(&doc)?)
}
