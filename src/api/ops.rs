//! Operational routes (no authentication): liveness, readiness, metrics, the OpenAPI document
//! and its Swagger UI.

use std::sync::{Arc, LazyLock};

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
use super::openapi_schemas::examples;
use super::respond::json_ok;
use super::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(schema_with = health_status)]
    status: &'static str,
}

fn health_status() -> utoipa::openapi::Object {
    one_of_strings(&["ok"])
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    description = "200 whenever the process answers; checks no dependency. No authentication.",
    responses((status = 200, description = "The process answers", body = Health,
        example = examples::health)),
    security())]
pub async fn healthz() -> Result<HttpResponse, ApiError> {
    json_ok(&Health { status: "ok" })
}

#[derive(Serialize, ToSchema)]
pub struct RedisNodeStatus {
    /// `host:port` (never a password).
    node: String,
    /// `up` or `down`.
    #[schema(schema_with = up_or_down)]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `degraded` (ready, some Redis nodes down) or `unavailable`.
    #[schema(schema_with = readiness_status)]
    status: &'static str,
    /// `up` or `down`.
    #[schema(schema_with = up_or_down)]
    postgres: &'static str,
    redis: Vec<RedisNodeStatus>,
}

fn one_of_strings(values: &[&'static str]) -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

fn up_or_down() -> utoipa::openapi::Object {
    one_of_strings(&["up", "down"])
}

fn readiness_status() -> utoipa::openapi::Object {
    one_of_strings(&["ready", "degraded", "unavailable"])
}

/// Readiness: 200 when Postgres answers, takes writes and has every migration, else 503.
/// Served from a probe result at most 1 s old (see `readiness`).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    description = "Whether this replica can serve: Postgres reachable, taking writes and \
        migrated, and the state of each Redis node (never a password). No authentication.",
    responses(
        (status = 200, description = "Ready (`ready`, or `degraded`: some Redis nodes are down)", body = Readiness,
            example = examples::readiness),
        (status = 503, description = "Postgres is unreachable or not migrated", body = Readiness,
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again")),
            example = json!({"status": "unavailable", "postgres": "down",
                "redis": [{"node": "127.0.0.1:6379", "status": "up"}]})),
    ),
    security())]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let probe = state.readiness.current(&state.db, &state.redis).await;
    let redis: Vec<RedisNodeStatus> = probe
        .redis
        .into_iter()
        .map(|(node, up)| RedisNodeStatus {
            node,
            status: up_or_down_word(up),
        })
        .collect();
    let status = match (probe.postgres_up, redis.iter().all(|n| n.status == "up")) {
        (false, _) => "unavailable",
        (true, true) => "ready",
        (true, false) => "degraded",
    };
    let body = Readiness {
        status,
        postgres: up_or_down_word(probe.postgres_up),
        redis,
    };
    let mut response = if probe.postgres_up {
        HttpResponse::Ok()
    } else {
        let mut unavailable = HttpResponse::ServiceUnavailable();
        unavailable.insert_header((header::RETRY_AFTER, "1"));
        unavailable
    };
    response.json(body)
}

fn up_or_down_word(up: bool) -> &'static str {
    if up { "up" } else { "down" }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    description = "Prometheus text format: requests, latencies, decisions by outcome, lock \
        waits, idempotent replays, pool usage. No authentication.",
    responses((status = 200, description = "Prometheus text format",
        content((String = "text/plain", example = json!(examples::METRICS))))),
    security())]
pub async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let text = state
        .metrics
        .render(state.db.status(), state.auth.unknown_key_entries())
        .map_err(ApiError::Internal)?;
    Ok(HttpResponse::Ok()
        .insert_header((
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        ))
        .body(text))
}

/// This API's OpenAPI 3.1 document, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    description = "This OpenAPI 3.1 document, generated from the code. No authentication.",
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object,
        example = json!({"openapi": "3.1.0", "info": {"title": "walletd", "version": "0.1.0"}, "paths": {}}))),
    security())]
pub async fn openapi(doc: web::Data<String>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .body(doc.get_ref().clone())
}

/// Swagger UI's page. Asset paths are absolute, so the page works at `/docs` and `/docs/`.
const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>walletd API</title>
<link rel="stylesheet" href="/docs/swagger-ui.css">
<link rel="stylesheet" href="/docs/index.css">
<link rel="icon" type="image/png" href="/docs/favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/swagger-ui-bundle.js"></script>
<script src="/docs/swagger-ui-standalone-preset.js"></script>
<script src="/docs/swagger-initializer.js"></script>
</body>
</html>
"#;

/// What `swagger-initializer.js` starts Swagger UI with: this document, and no online
/// validator (the default sends the document to validator.swagger.io; nothing here leaves the
/// machine).
static DOCS_CONFIG: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> = LazyLock::new(|| {
    Arc::new(
        utoipa_swagger_ui::Config::from("/openapi.json")
            .validator_url("none")
            .try_it_out_enabled(true)
            .persist_authorization(false),
    )
});

/// Swagger UI for this document, served from the assets built into the binary.
#[utoipa::path(get, path = "/docs", tag = "operations",
    description = "Swagger UI for this document; its assets are built into the binary (no \
        network at build or run time) and served under `/docs/`. No authentication.",
    responses((status = 200, description = "The Swagger UI page",
        content((String = "text/html", example = json!("<!doctype html>..."))))),
    security())]
pub async fn docs() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "text/html; charset=utf-8"))
        .body(DOCS_PAGE)
}

/// One Swagger UI asset (`/docs/swagger-ui.css`, …); `/docs/` is the page itself. An unknown
/// name is 404 like any unknown route.
pub async fn docs_asset(file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    if file.is_empty() || file.as_str() == "index.html" {
        return Ok(docs().await);
    }
    let asset = utoipa_swagger_ui::serve(&file, DOCS_CONFIG.clone())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("swagger ui asset {file}: {e}")))?
        .ok_or(ApiError::RouteNotFound)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        .body(asset.bytes.into_owned()))
}
