//! Turning outcomes into HTTP responses.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header;
use serde::Serialize;

use super::error::{ApiError, PROBLEM_JSON};
use crate::pipeline::Outcome;

/// Header marking a response that was replayed from the idempotency store.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// A pipeline outcome: the stored status and bytes, marked when replayed.
pub fn respond(outcome: Outcome) -> HttpResponse {
    let (stored, replayed) = match outcome {
        Outcome::Executed(stored) => (stored, false),
        Outcome::Replayed(stored) => (stored, true),
    };
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if stored.is_success() {
        "application/json"
    } else {
        PROBLEM_JSON
    };
    let mut response = HttpResponse::build(status);
    response.insert_header((header::CONTENT_TYPE, content_type));
    if replayed {
        response.insert_header((IDEMPOTENT_REPLAYED, "true"));
    }
    response.body(stored.body)
}

/// 200 with a JSON body.
pub fn json_ok<T: Serialize>(value: &T) -> Result<HttpResponse, ApiError> {
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(json_bytes(body))
}

/// 200 with a body that is already JSON.
pub fn json_bytes(body: Vec<u8>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .body(body)
}
