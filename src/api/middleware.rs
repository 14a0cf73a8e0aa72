//! Headers on every response (`Cache-Control: no-store`, `X-Request-Id`), one log line and the
//! metrics per request.
//!
//! The request line carries the request id, route pattern, method, status, the operation, what
//! the request came to (`outcome`: `applied`, `replayed`, a problem code, or `ok` for a read),
//! the tenant, the wallet, hold or transaction named in the path (only a well-formed id), the
//! first 16 hex digits of the SHA-256 of the `Idempotency-Key` (never the key itself) and the
//! latency in whole microseconds. Everything logged while the request is handled runs inside
//! a `request` span holding its id, so the error mapping's lines carry it too.
//!
//! Levels: a 500 is ERROR, any other 5xx WARN, a successful `/healthz`, `/readyz` or `/metrics`
//! DEBUG (probes and scrapes), everything else (4xx included: the client's doing, not the
//! service's) INFO.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest, web};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::state::AppState;
use crate::domain::TenantId;
use crate::metrics::Operation;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest client-supplied request id we echo; longer ones are replaced (the id lands in
/// every log line of the request).
const REQUEST_ID_LEN_MAX: usize = 1024;
/// Hex digits of the idempotency key's SHA-256 in the request line: enough to find a key's
/// requests, too few to matter if the key were guessable.
const KEY_HASH_HEX_DIGITS: usize = 16;

/// What a response says its request came to, put in the response's extensions where the
/// response is made (`respond`, `ApiError::error_response`) and read here: `applied`,
/// `replayed`, or the problem code answered. Always one of a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseCode(pub &'static str);

/// The authenticated tenant, noted in the request's extensions for the request line.
#[derive(Debug, Clone, Copy)]
struct RequestTenant(TenantId);

/// Notes the request's tenant once its caller is known (the `Caller` extractor calls this).
pub fn note_tenant(request: &HttpRequest, tenant: TenantId) {
    request.extensions_mut().insert(RequestTenant(tenant));
}

/// The client's `X-Request-Id` if it is printable ASCII (spaces included) and at most
/// [`REQUEST_ID_LEN_MAX`] bytes, else a fresh UUID.
fn request_id(request: &ServiceRequest) -> HeaderValue {
    request
        .headers()
        .get(&REQUEST_ID)
        .filter(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= REQUEST_ID_LEN_MAX
                && bytes.iter().all(|b| (0x20..=0x7E).contains(b))
        })
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::now_v7().to_string())
                .unwrap_or(HeaderValue::from_static("unknown"))
        })
}

/// The mutating operation behind a route pattern, if it is one.
fn mutating_operation(method: &Method, route: &str) -> Option<Operation> {
    if method != Method::POST {
        return None;
    }
    Some(match route {
        "/v1/wallets" => Operation::CreateWallet,
        "/v1/wallets/{id}/debit" => Operation::Debit,
        "/v1/wallets/{id}/credit" => Operation::Credit,
        "/v1/wallets/{id}/holds" => Operation::PlaceHold,
        "/v1/holds/{id}/capture" => Operation::Capture,
        "/v1/holds/{id}/void" => Operation::Void,
        "/v1/transactions/{id}/reverse" => Operation::Reverse,
        _ => return None,
    })
}

/// The request line's `operation`: a mutating one, or the read a GET route serves.
fn operation_name(method: &Method, route: &str) -> Option<&'static str> {
    if let Some(operation) = mutating_operation(method, route) {
        return Some(operation.as_str());
    }
    if method != Method::GET {
        return None;
    }
    Some(match route {
        "/v1/wallets/{id}" => "get_wallet",
        "/v1/wallets/{id}/ledger" => "ledger",
        "/v1/wallets/{id}/audit" => "audit",
        "/v1/wallets/{id}/balance" => "balance_as_of",
        "/v1/transactions/{id}" => "get_transaction",
        "/v1/holds/{id}" => "get_hold",
        "/v1/ledger/export" => "export",
        "/healthz" => "healthz",
        "/readyz" => "readyz",
        "/metrics" => "metrics",
        "/openapi.json" => "openapi",
        _ => return None,
    })
}

/// The ids a request line names: the path's `{id}` when it is a UUID, by what it names.
#[derive(Default)]
struct PathIds {
    wallet: Option<String>,
    hold: Option<String>,
    transaction: Option<String>,
}

/// Read after the call: the path's parameters are known once the router matched it.
fn path_ids(request: &HttpRequest, route: &str) -> PathIds {
    let Some(id) = request
        .match_info()
        .get("id")
        .and_then(|id| uuid::Uuid::try_parse(id).ok())
        .map(|id| id.to_string())
    else {
        return PathIds::default();
    };
    let mut ids = PathIds::default();
    if route.starts_with("/v1/wallets/{id}") {
        ids.wallet = Some(id);
    } else if route.starts_with("/v1/holds/{id}") {
        ids.hold = Some(id);
    } else if route.starts_with("/v1/transactions/{id}") {
        ids.transaction = Some(id);
    }
    ids
}

/// The first [`KEY_HASH_HEX_DIGITS`] hex digits of the SHA-256 of the `Idempotency-Key`.
fn idempotency_key_hash(request: &ServiceRequest) -> Option<String> {
    let key = request.headers().get("idempotency-key")?;
    let mut hex = hex::encode(Sha256::digest(key.as_bytes()));
    hex.truncate(KEY_HASH_HEX_DIGITS);
    Some(hex)
}

/// The request line, at `$level`.
macro_rules! request_line {
    ($level:expr, $line:expr) => {{
        let line = $line;
        tracing::event!(
            $level,
            request_id = line.request_id,
            method = %line.method,
            route = %line.route,
            status = line.status,
            operation = line.operation,
            outcome = line.outcome,
            tenant = line.tenant.as_deref(),
            wallet = line.ids.wallet.as_deref(),
            hold = line.ids.hold.as_deref(),
            transaction = line.ids.transaction.as_deref(),
            idempotency_key_sha256 = line.key_hash.as_deref(),
            latency_us = line.latency_us,
            "request"
        )
    }};
}

struct RequestLine<'a> {
    request_id: &'a str,
    method: &'a Method,
    route: &'a str,
    status: u16,
    operation: Option<&'static str>,
    outcome: &'static str,
    tenant: Option<String>,
    ids: PathIds,
    key_hash: Option<String>,
    latency_us: u64,
}

pub async fn request_context(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let started = Instant::now();
    let id = request_id(&request);
    let id_text = id.to_str().unwrap_or("").to_owned();
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let method = request.method().clone();
    let route = request
        .match_pattern()
        .unwrap_or_else(|| "<unmatched>".to_owned());
    let key_hash = idempotency_key_hash(&request);
    // What the pipeline logs inside this span names the request and the key's hash.
    let span = tracing::info_span!(
        "request",
        request_id = %id_text,
        idempotency_key_sha256 = key_hash.as_deref()
    );
    let mut response = next.call(request).instrument(span).await?;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(REQUEST_ID, id);
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    let answered = response
        .response()
        .extensions()
        .get::<ResponseCode>()
        .map(|code| code.0);
    let tenant = response
        .request()
        .extensions()
        .get::<RequestTenant>()
        .map(|tenant| tenant.0.to_string());
    let ids = path_ids(response.request(), &route);
    let mutating = mutating_operation(&method, &route);
    if let Some(state) = state {
        state
            .metrics
            .record_http(method.as_str(), &route, status, elapsed);
        if let Some(operation) = mutating {
            state
                .metrics
                .record_decision(operation, answered.unwrap_or("other"));
        }
    }
    let outcome = match answered {
        Some(code) => code,
        None if response.status().is_success() => "ok",
        None => "other",
    };
    let line = RequestLine {
        request_id: &id_text,
        method: &method,
        route: &route,
        status,
        operation: operation_name(&method, &route),
        outcome,
        tenant,
        ids,
        key_hash,
        latency_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
    };
    let probe = matches!(line.operation, Some("healthz" | "readyz" | "metrics"));
    match status {
        500 => request_line!(tracing::Level::ERROR, line),
        501.. => request_line!(tracing::Level::WARN, line),
        // Probes and scrapes arrive every few seconds from machines: DEBUG unless they fail.
        200..=299 if probe => request_line!(tracing::Level::DEBUG, line),
        _ => request_line!(tracing::Level::INFO, line),
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mutating_route_names_its_operation() {
        let routes = [
            ("/v1/wallets", "create_wallet"),
            ("/v1/wallets/{id}/debit", "debit"),
            ("/v1/wallets/{id}/credit", "credit"),
            ("/v1/wallets/{id}/holds", "place_hold"),
            ("/v1/holds/{id}/capture", "capture"),
            ("/v1/holds/{id}/void", "void"),
            ("/v1/transactions/{id}/reverse", "reverse"),
        ];
        for (route, name) in routes {
            let operation = mutating_operation(&Method::POST, route).map(Operation::as_str);
            assert_eq!(operation, Some(name), "{route}");
            assert_eq!(mutating_operation(&Method::GET, route), None);
        }
        assert_eq!(
            operation_name(&Method::GET, "/v1/wallets/{id}"),
            Some("get_wallet")
        );
        assert_eq!(operation_name(&Method::PUT, "/v1/wallets/{id}"), None);
        assert_eq!(operation_name(&Method::POST, "<unmatched>"), None);
    }
}
