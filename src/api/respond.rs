//! Turning outcomes into HTTP responses.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header;
use serde::Serialize;

use super::error::{ApiError, PROBLEM_JSON};
use super::middleware::ResponseCode;
use crate::metrics::decision_label;
use crate::pipeline::{Outcome, StoredResponse};

/// Header marking a response that was replayed from the idempotency store.
pub const IDEMPOTENT_REPLAYED: &str = "Idempotent-Replayed";

/// A pipeline outcome: the stored status and bytes, marked when replayed.
pub fn respond(outcome: Outcome) -> HttpResponse {
    let (stored, replayed) = match outcome {
        Outcome::Executed(stored) => (stored, false),
        Outcome::Replayed(stored) => (stored, true),
    };
    let code = if replayed {
        "replayed"
    } else {
        decided_code(&stored)
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
    let mut response = response.body(stored.body);
    // For the request line and walletd_decisions_total (see middleware).
    response.extensions_mut().insert(ResponseCode(code));
    response
}

/// What a fresh answer decided: `applied`, or the decline's problem code (read back from the
/// stored document, which the pipeline rendered; bounded to the fixed set of codes).
fn decided_code(stored: &StoredResponse) -> &'static str {
    if stored.is_success() {
        return "applied";
    }
    #[derive(serde::Deserialize)]
    struct Problem {
        code: String,
    }
    serde_json::from_slice::<Problem>(&stored.body)
        .map(|problem| decision_label(&problem.code))
        .unwrap_or("other")
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
