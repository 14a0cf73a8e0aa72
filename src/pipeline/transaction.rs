//! What can stop a pipeline transaction from committing, and what the client sees then.

use super::idempotency::ClaimLost;
use crate::api::error::ApiError;
use crate::db::errors::{DbFailure, classify};

/// Times a transaction that failed with a serialization failure or deadlock is run in all.
pub const TRANSACTION_ATTEMPTS_MAX: u32 = 3;

/// Why a pipeline transaction rolled back.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The database refused or failed a statement.
    #[error(transparent)]
    Db(#[from] diesel::result::Error),
    /// Our idempotency lease lapsed and another request owns the key now; it will store the
    /// answer, so this one reports the key as in progress.
    #[error(transparent)]
    ClaimLost(#[from] ClaimLost),
    /// Input found invalid only against the locked row (a 4xx that is not stored).
    #[error("rejected: {0}")]
    Rejected(ApiError),
    /// The response could not be rendered (a bug).
    #[error("rendering the response: {0}")]
    Render(anyhow::Error),
}

impl TxError {
    /// Whether running the same transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TxError::Db(error) if classify(error) == DbFailure::Retryable)
    }
}

impl From<TxError> for ApiError {
    fn from(error: TxError) -> Self {
        match error {
            TxError::Db(error) => ApiError::from_db(error),
            TxError::ClaimLost(_) => ApiError::IdempotencyKeyInProgress,
            TxError::Rejected(error) => error,
            TxError::Render(error) => ApiError::Internal(error),
        }
    }
}
