//! What the pipeline answers, in its own terms: the stored answers (successes and declines) and
//! the errors that are not stored. The HTTP layer maps [`PipelineError`] to status codes and
//! problem documents in one exhaustive match; a [`Decline`] is rendered here, because its
//! bytes are stored with the business write and replayed as they are.

use crate::db::errors::{DbFailure, classify};
use crate::problem;

/// A response as decided by the business logic: what is sent now and replayed later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

impl StoredResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What the client gets: a fresh answer or a replayed one (same status, same bytes).
#[derive(Debug)]
pub enum Outcome {
    Executed(StoredResponse),
    Replayed(StoredResponse),
}

/// A business decline: decided inside the row lock, stored and replayed like a success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Decline {
    /// The in-lock balance check failed.
    #[error("{0}")]
    InsufficientFunds(String),
    /// The request's currency is not the wallet's.
    #[error("{0}")]
    CurrencyMismatch(String),
    /// No such wallet for this tenant (another tenant's wallet looks exactly the same).
    #[error("wallet not found")]
    WalletNotFound,
    /// The wallet is closed and takes no more entries.
    #[error("wallet is closed")]
    WalletClosed,
    /// No such hold for this tenant.
    #[error("hold not found")]
    HoldNotFound,
    /// The hold is past its `expires_at`: it can no longer be captured.
    #[error("the hold expired at {0}")]
    HoldExpired(String),
    /// The hold was already captured, voided or expired.
    #[error("the hold is {0}, not active")]
    HoldNotActive(String),
    /// A capture above the hold's amount.
    #[error("{0}")]
    CaptureExceedsHold(String),
    /// No such transaction for this tenant (to reverse).
    #[error("transaction not found")]
    TransactionNotFound,
    /// The reversals of one transaction would total more than it.
    #[error("{0}")]
    ReversalExceedsOriginal(String),
    /// A reversal cannot itself be reversed.
    #[error("a reversal cannot be reversed")]
    NotReversible,
}

impl Decline {
    /// The stable code (API.md, Error codes).
    pub fn code(&self) -> &'static str {
        match self {
            Decline::InsufficientFunds(_) => "insufficient_funds",
            Decline::CurrencyMismatch(_) => "currency_mismatch",
            Decline::WalletNotFound => "wallet_not_found",
            Decline::WalletClosed => "wallet_closed",
            Decline::HoldNotFound => "hold_not_found",
            Decline::HoldExpired(_) => "hold_expired",
            Decline::HoldNotActive(_) => "hold_not_active",
            Decline::CaptureExceedsHold(_) => "capture_exceeds_hold",
            Decline::TransactionNotFound => "transaction_not_found",
            Decline::ReversalExceedsOriginal(_) => "reversal_exceeds_original",
            Decline::NotReversible => "not_reversible",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Decline::WalletNotFound | Decline::HoldNotFound | Decline::TransactionNotFound => 404,
            Decline::InsufficientFunds(_)
            | Decline::CurrencyMismatch(_)
            | Decline::WalletClosed
            | Decline::HoldExpired(_)
            | Decline::HoldNotActive(_)
            | Decline::CaptureExceedsHold(_)
            | Decline::ReversalExceedsOriginal(_)
            | Decline::NotReversible => 422,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Decline::InsufficientFunds(_) => "Insufficient funds",
            Decline::CurrencyMismatch(_) => "Currency mismatch",
            Decline::WalletNotFound => "Wallet not found",
            Decline::WalletClosed => "Wallet closed",
            Decline::HoldNotFound => "Hold not found",
            Decline::HoldExpired(_) => "Hold expired",
            Decline::HoldNotActive(_) => "Hold not active",
            Decline::CaptureExceedsHold(_) => "Capture exceeds hold",
            Decline::TransactionNotFound => "Transaction not found",
            Decline::ReversalExceedsOriginal(_) => "Reversal exceeds original",
            Decline::NotReversible => "Not reversible",
        }
    }

    /// The stored answer: the decline's problem document.
    pub fn stored(&self) -> StoredResponse {
        StoredResponse {
            status: self.status(),
            body: problem::render(self.status(), self.code(), self.title(), &self.to_string()),
        }
    }
}

/// Why a mutating request got no stored answer. Nothing of these is stored: a retry with the
/// same key executes afresh (or, for the idempotency ones, meets the key's state again).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The key was used before for a different request.
    #[error("this Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    /// The same key is being executed by another request right now.
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyKeyInProgress,
    /// The key's stored answer is past retention; nothing executes.
    #[error("this Idempotency-Key's stored answer has expired")]
    IdempotencyKeyExpired,
    /// Input that turned out invalid only against the locked row (a credit past the maximum
    /// balance): a 400, not stored.
    #[error("{0}")]
    Rejected(String),
    /// The wallet's lock (local queue, Redis lock or row lock) was not had in time.
    #[error("the wallet is busy")]
    LockTimeout,
    /// A dependency is down, or the request's deadline passed.
    #[error("service temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A bug.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl PipelineError {
    /// What a database error means for the request that hit it.
    pub fn from_db(error: diesel::result::Error) -> Self {
        match classify(&error) {
            DbFailure::LockTimeout => PipelineError::LockTimeout,
            DbFailure::Unavailable | DbFailure::Retryable => {
                PipelineError::Unavailable(error.into())
            }
            DbFailure::Bug => PipelineError::Internal(error.into()),
        }
    }

    /// Whether the failure is the database's or the moment's (unreachable, too slow, the
    /// wallet busy), not something about the request: running it again right away would meet
    /// it again.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            PipelineError::Unavailable(_) | PipelineError::LockTimeout
        )
    }

    /// The same failure for another request it befell (each request of a failed batch gets
    /// one); the cause is kept as text.
    pub fn for_another_request(&self) -> Self {
        match self {
            PipelineError::IdempotencyKeyReused => PipelineError::IdempotencyKeyReused,
            PipelineError::IdempotencyKeyInProgress => PipelineError::IdempotencyKeyInProgress,
            PipelineError::IdempotencyKeyExpired => PipelineError::IdempotencyKeyExpired,
            PipelineError::Rejected(reason) => PipelineError::Rejected(reason.clone()),
            PipelineError::LockTimeout => PipelineError::LockTimeout,
            PipelineError::Unavailable(cause) => {
                PipelineError::Unavailable(anyhow::anyhow!("{cause:#}"))
            }
            PipelineError::Internal(cause) => PipelineError::Internal(anyhow::anyhow!("{cause:#}")),
        }
    }

    pub fn from_pool(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        PipelineError::Unavailable(anyhow::Error::new(error).context("no database connection"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_decline_is_its_problem_document() {
        let stored = Decline::InsufficientFunds("available 1.00 < 2.00".into()).stored();
        assert_eq!(stored.status, 422);
        let body: serde_json::Value = serde_json::from_slice(&stored.body).unwrap();
        assert_eq!(body["code"], "insufficient_funds");
        assert_eq!(body["type"], "urn:walletd:problem:insufficient_funds");
        assert_eq!(body["detail"], "available 1.00 < 2.00");
        assert_eq!(Decline::WalletNotFound.stored().status, 404);
    }
}
