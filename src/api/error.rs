//! Every error a client can see, with its stable `code`, HTTP status and RFC 9457 rendering.
//!
//! The rule: causes go to the log, never to the client. Infrastructure failures are 503 with
//! `Retry-After` (the client retries with the same idempotency key); only a bug is a 500.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};

use super::middleware::ResponseCode;
use crate::auth::{AuthError, MissingScope};
use crate::db::errors::{DbFailure, classify};
use crate::pipeline::PipelineError;
use crate::problem;
pub use crate::problem::PROBLEM_JSON;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, an unknown field, a bad amount, currency or parameter.
    #[error("{0}")]
    Validation(String),
    /// A mutating POST without `Idempotency-Key`.
    #[error("the Idempotency-Key header is required on this request")]
    IdempotencyKeyMissing,
    /// `Idempotency-Key` empty, longer than 255, or with non-printable characters.
    #[error("{0}")]
    IdempotencyKeyInvalid(String),
    /// No API key, or one that is unknown or revoked.
    #[error("a valid API key is required: Authorization: Bearer <key>")]
    Unauthorized,
    /// The key lacks the route's scope.
    #[error("this API key lacks the {0} scope")]
    Forbidden(&'static str),
    /// No such wallet for this tenant (another tenant's wallet looks exactly the same).
    #[error("wallet not found")]
    WalletNotFound,
    /// No such transaction for this tenant.
    #[error("transaction not found")]
    TransactionNotFound,
    /// No such hold for this tenant.
    #[error("hold not found")]
    HoldNotFound,
    /// No such route.
    #[error("no such resource")]
    RouteNotFound,
    /// The route exists but not for this method; carries the `Allow` header value.
    #[error("method not allowed; allowed: {0}")]
    MethodNotAllowed(&'static str),
    /// The key's stored answer was dropped after `idempotency.retention_hours`; the key is never
    /// forgotten, so nothing executes, whatever the request.
    #[error("this Idempotency-Key's stored answer has expired; use a new key for a new request")]
    IdempotencyKeyExpired,
    /// The client did not send its whole body within `server.body_read_timeout_ms`; nothing
    /// was stored, so a retry with the same key executes afresh.
    #[error("the request body did not arrive within {0} ms")]
    RequestTimeout(u64),
    /// The same key is being executed by another request right now.
    #[error("a request with this Idempotency-Key is still being processed; retry shortly")]
    IdempotencyKeyInProgress,
    /// Body over 64 KiB.
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    /// A body that is not `application/json`.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// The key was used before for a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// Per-key rate limit exceeded.
    #[error("rate limit exceeded; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// The wallet's lock was not acquired in time (Redis lock wait, or a row lock wait).
    #[error("the wallet is busy; retry shortly")]
    LockTimeout,
    /// A dependency is down and the request cannot be served safely.
    #[error("service temporarily unavailable; retry shortly")]
    Unavailable(#[source] anyhow::Error),
    /// A bug: logged with its cause, answered without it.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    /// The stable, machine-readable code (API.md, Error codes).
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "validation_failed",
            ApiError::IdempotencyKeyMissing => "idempotency_key_missing",
            ApiError::IdempotencyKeyInvalid(_) => "idempotency_key_invalid",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::WalletNotFound => "wallet_not_found",
            ApiError::TransactionNotFound => "transaction_not_found",
            ApiError::HoldNotFound => "hold_not_found",
            ApiError::RouteNotFound => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::IdempotencyKeyInProgress => "idempotency_key_in_progress",
            ApiError::IdempotencyKeyExpired => "idempotency_key_expired",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::LockTimeout => "lock_timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }

    fn title(&self) -> &'static str {
        match self {
            ApiError::Validation(_) => "Validation failed",
            ApiError::IdempotencyKeyMissing => "Idempotency-Key missing",
            ApiError::IdempotencyKeyInvalid(_) => "Idempotency-Key invalid",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::WalletNotFound => "Wallet not found",
            ApiError::TransactionNotFound => "Transaction not found",
            ApiError::HoldNotFound => "Hold not found",
            ApiError::RouteNotFound => "Not found",
            ApiError::MethodNotAllowed(_) => "Method not allowed",
            ApiError::IdempotencyKeyInProgress => "Idempotency-Key in progress",
            ApiError::IdempotencyKeyExpired => "Idempotency-Key expired",
            ApiError::RequestTimeout(_) => "Request timeout",
            ApiError::PayloadTooLarge(_) => "Payload too large",
            ApiError::UnsupportedMediaType => "Unsupported media type",
            ApiError::IdempotencyKeyReused => "Idempotency-Key reused",
            ApiError::RateLimited { .. } => "Rate limited",
            ApiError::LockTimeout => "Lock timeout",
            ApiError::Unavailable(_) => "Service unavailable",
            ApiError::Internal(_) => "Internal error",
        }
    }

    /// Seconds a client should wait before retrying, for the errors that are worth a retry.
    fn retry_after_s(&self) -> Option<u64> {
        match self {
            ApiError::RateLimited { retry_after_s } => Some(*retry_after_s),
            ApiError::IdempotencyKeyInProgress
            | ApiError::RequestTimeout(_)
            | ApiError::LockTimeout
            | ApiError::Unavailable(_) => Some(1),
            _ => None,
        }
    }

    /// The problem document, serialized once: the same bytes are sent and, for a decline,
    /// stored for replay.
    pub fn problem_body(&self) -> Vec<u8> {
        problem::render(
            self.status_code().as_u16(),
            self.code(),
            self.title(),
            &self.to_string(),
        )
    }

    /// Maps a database error to what the client sees (and keeps the cause for the log).
    pub fn from_db(error: diesel::result::Error) -> Self {
        match classify(&error) {
            DbFailure::LockTimeout => ApiError::LockTimeout,
            DbFailure::Unavailable | DbFailure::Retryable => ApiError::Unavailable(error.into()),
            DbFailure::Bug => ApiError::Internal(error.into()),
        }
    }

    pub fn from_pool(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        ApiError::Unavailable(anyhow::Error::new(error).context("no database connection"))
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Unauthorized => ApiError::Unauthorized,
            AuthError::RateLimited { retry_after_s } => ApiError::RateLimited { retry_after_s },
            AuthError::Unavailable(cause) => ApiError::Unavailable(cause),
        }
    }
}

impl From<MissingScope> for ApiError {
    fn from(MissingScope(scope): MissingScope) -> Self {
        ApiError::Forbidden(scope)
    }
}

/// What the business core could not answer with a stored response, as the client sees it.
impl From<PipelineError> for ApiError {
    fn from(error: PipelineError) -> Self {
        match error {
            PipelineError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            PipelineError::IdempotencyKeyInProgress => ApiError::IdempotencyKeyInProgress,
            PipelineError::IdempotencyKeyExpired => ApiError::IdempotencyKeyExpired,
            PipelineError::Rejected(reason) => ApiError::Validation(reason),
            PipelineError::LockTimeout => ApiError::LockTimeout,
            PipelineError::Unavailable(cause) => ApiError::Unavailable(cause),
            PipelineError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Validation(_)
            | ApiError::IdempotencyKeyMissing
            | ApiError::IdempotencyKeyInvalid(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::WalletNotFound
            | ApiError::TransactionNotFound
            | ApiError::HoldNotFound
            | ApiError::RouteNotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::IdempotencyKeyInProgress => StatusCode::CONFLICT,
            ApiError::IdempotencyKeyExpired => StatusCode::GONE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::LockTimeout | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        match self {
            ApiError::Unavailable(cause) => {
                tracing::warn!(code = self.code(), error = ?cause, "request failed")
            }
            ApiError::Internal(cause) => {
                tracing::error!(code = self.code(), error = ?cause, "request failed")
            }
            _ => tracing::debug!(code = self.code(), "request declined"),
        }
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, PROBLEM_JSON));
        if let Some(seconds) = self.retry_after_s() {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        if matches!(self, ApiError::Unauthorized) {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let ApiError::MethodNotAllowed(allow) = self {
            response.insert_header((header::ALLOW, HeaderValue::from_static(allow)));
        }
        let mut response = response.body(self.problem_body());
        // For the request line and walletd_decisions_total (see middleware).
        response.extensions_mut().insert(ResponseCode(self.code()));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_documents_carry_the_stable_code() {
        let error = ApiError::IdempotencyKeyReused;
        let body: serde_json::Value = serde_json::from_slice(&error.problem_body()).unwrap();
        assert_eq!(body["code"], "idempotency_key_reused");
        assert_eq!(body["status"], 422);
        assert_eq!(body["type"], "urn:walletd:problem:idempotency_key_reused");
    }

    #[test]
    fn causes_never_reach_the_client() {
        let error = ApiError::Unavailable(anyhow::anyhow!("password=hunter2 refused"));
        let body = String::from_utf8(error.problem_body()).unwrap();
        assert!(!body.contains("hunter2"));
    }
}
