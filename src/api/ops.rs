//! Operational routes (no authentication): liveness, readiness, metrics, the OpenAPI document.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ApiError;
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
    responses((status = 200, description = "The process answers", body = Health)))]
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
    responses(
        (status = 200, description = "Ready (`ready`, or `degraded`: some Redis nodes are down)", body = Readiness),
        (status = 503, description = "Postgres is unreachable or not migrated", body = Readiness,
            headers(("Retry-After" = u32, description = "Seconds to wait before asking again"))),
    ))]
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
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
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
    responses((status = 200, description = "This OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
pub async fn openapi(doc: web::Data<String>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .body(doc.get_ref().clone())
}
