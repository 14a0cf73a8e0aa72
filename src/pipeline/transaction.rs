//! What every pipeline transaction shares: a connection and statements bounded by the
//! request's deadline, the retry rule, and what can stop it from committing (with what the
//! client sees then).

use diesel_async::pooled_connection::deadpool::Object;

use std::future::Future;

use super::deadline::Deadline;
use super::idempotency::KEY_TAKEN_CONSTRAINTS;
use super::locked::lock_wallet;
use super::outcome::PipelineError;
use crate::config::DatabaseSettings;
use crate::db::errors::{DbFailure, classify};
use crate::db::models::WalletRow;
use crate::db::{PgConn, PgPool, pipelined};
use crate::domain::{TenantId, WalletId};

/// Times a transaction that failed with a serialization failure or deadlock is run in all.
pub const TRANSACTION_ATTEMPTS_MAX: u32 = 3;

/// Why a pipeline transaction rolled back.
#[derive(Debug, thiserror::Error)]
pub enum TxError {
    /// The database refused or failed a statement.
    #[error(transparent)]
    Db(diesel::result::Error),
    /// The key's row was already there when this transaction stored its answer (a twin
    /// committed first, or the answer was stored long ago and its cached copy is gone): the
    /// transaction rolls back and the request is answered from that row.
    #[error("the idempotency key already has a stored answer")]
    KeyTaken,
    /// Input found invalid only against the locked row (a 400 that is not stored).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The response could not be rendered (a bug).
    #[error("rendering the response: {0}")]
    Render(anyhow::Error),
}

impl From<diesel::result::Error> for TxError {
    /// A unique violation that says "this key already produced its effect" is
    /// [`TxError::KeyTaken`]; anything else is the database's.
    fn from(error: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match &error {
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
                if info
                    .constraint_name()
                    .is_some_and(|name| KEY_TAKEN_CONSTRAINTS.contains(&name)) =>
            {
                TxError::KeyTaken
            }
            _ => TxError::Db(error),
        }
    }
}

impl TxError {
    /// Whether running the same transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, TxError::Db(error) if classify(error) == DbFailure::Retryable)
    }

    /// Whether attempt number `attempt` (from 1), which failed with this error, is worth
    /// running again: a retryable conflict, attempts left, and time left before the deadline.
    /// A yes is counted in `walletd_transaction_retries_total` (callers retry on it).
    pub fn retry_after_attempt(&self, attempt: u32, deadline: &Deadline) -> bool {
        let retry = self.is_retryable()
            && attempt < TRANSACTION_ATTEMPTS_MAX
            && !deadline.remaining().is_zero();
        if retry {
            crate::metrics::count_transaction_retry();
        }
        retry
    }
}

/// A pooled connection, waiting no longer than the deadline (nor `database.pool_wait_timeout_ms`).
pub async fn connection(
    pool: &PgPool,
    deadline: &Deadline,
) -> Result<Object<PgConn>, PipelineError> {
    deadline
        .bound("a database connection", crate::db::checkout(pool))
        .await
        .map_err(|passed| PipelineError::Unavailable(passed.into()))?
        .map_err(PipelineError::from_pool)
}

/// How much earlier than the statement timeout a row-lock wait gives up, so that a request
/// that spent its deadline waiting for a row answers `lock_timeout`, which is what happened.
const LOCK_WAIT_MARGIN_MS: u64 = 50;

/// Opens a pipeline transaction and row-locks `wallet` (as `tenant` sees it) in one round
/// trip (a command that locks no wallet pays for BEGIN alone): BEGIN, then, if the time left calls for them, timeouts tighter than the session's,
/// then the lock. No statement then runs longer than the time left nor
/// `database.statement_timeout_ms`, and no row lock is waited for longer than that nor
/// `database.lock_timeout_ms` (these bound each statement; [`transaction_within_deadline`]
/// bounds the whole transaction). Every pooled session already has the configured timeouts, so
/// while the time left exceeds them (most requests) nothing is tightened.
pub async fn begin_locked(
    conn: &mut PgConn,
    deadline: &Deadline,
    database: &DatabaseSettings,
    tenant: TenantId,
    wallet: Option<WalletId>,
) -> Result<Option<WalletRow>, TxError> {
    let tightened = tightened_timeouts(deadline.remaining_ms(), database);
    pipelined::begin_with(conn, tightened.as_deref(), async |conn| match wallet {
        Some(wallet) => lock_wallet(conn, tenant, wallet).await,
        None => Ok(None),
    })
    .await
}

/// One attempt of a pipeline transaction: `body` opens it with [`begin_locked`] and ends it
/// with [`pipelined::commit_with`]; whatever it leaves open (it failed, or returned early) is
/// rolled back here. If even the ROLLBACK fails, the attempt fails as unavailable, not
/// retryable: its connection must not run another transaction.
pub async fn attempt<T>(
    conn: &mut PgConn,
    body: impl AsyncFnOnce(&mut PgConn) -> Result<T, TxError>,
) -> Result<T, TxError> {
    let result = body(conn).await;
    if !pipelined::is_open(conn) {
        return result;
    }
    if !pipelined::roll_back_if_open(conn).await {
        return Err(TxError::Db(diesel::result::Error::BrokenTransactionManager));
    }
    match result {
        Ok(_) => Err(TxError::Render(anyhow::anyhow!(
            "a transaction body returned without committing"
        ))),
        failed => failed,
    }
}

/// `SET LOCAL` for timeouts shorter than the session's, if the time left calls for them.
fn tightened_timeouts(left_ms: u64, database: &DatabaseSettings) -> Option<String> {
    let statement_ms = database.statement_timeout_ms.min(left_ms).max(1);
    let lock_wait_ms = database
        .lock_timeout_ms
        .min(left_ms.saturating_sub(LOCK_WAIT_MARGIN_MS))
        .max(1);
    if statement_ms == database.statement_timeout_ms && lock_wait_ms == database.lock_timeout_ms {
        return None;
    }
    Some(format!(
        "SET LOCAL statement_timeout = {statement_ms}; SET LOCAL lock_timeout = {lock_wait_ms}"
    ))
}

/// Runs a whole transaction (all its attempts) on `conn` within the deadline. Past it the
/// transaction's future is dropped mid-statement and the connection is taken out of the pool
/// and closed: Postgres rolls back at once, freeing the row lock and the uncommitted rows (a
/// connection returned to the pool would hold them, idle in transaction, until its next
/// checkout). The same holds if the task is dropped or panics inside the transaction. If the
/// deadline fell during COMMIT the outcome is unknown to us, which is safe: a committed answer
/// stays, and a retry is answered from it.
pub async fn transaction_within_deadline<T>(
    deadline: &Deadline,
    conn: Object<PgConn>,
    transaction: impl AsyncFnOnce(&mut PgConn) -> Result<T, PipelineError>,
) -> Result<T, PipelineError> {
    let mut guarded = ClosedIfOpen(Some(conn));
    let Some(conn) = guarded.0.as_deref_mut() else {
        return Err(PipelineError::Internal(anyhow::anyhow!("no connection")));
    };
    let bounded = deadline.bound("the transaction", transaction(conn)).await;
    bounded.unwrap_or_else(|passed| {
        drop(guarded.0.take().map(Object::take));
        Err(PipelineError::Unavailable(passed.into()))
    })
}

/// A pooled connection that is closed rather than pooled if it is dropped inside a
/// transaction (see [`transaction_within_deadline`]).
struct ClosedIfOpen(Option<Object<PgConn>>);

impl Drop for ClosedIfOpen {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take()
            && pipelined::is_open(&mut conn)
        {
            tracing::warn!("a connection was left inside a transaction; closing it");
            drop(Object::take(conn));
        }
    }
}

/// Runs a read within the deadline (a read-only statement outside a transaction: dropping it
/// leaves nothing held).
pub async fn within_deadline<T>(
    deadline: &Deadline,
    transaction: impl Future<Output = Result<T, PipelineError>>,
) -> Result<T, PipelineError> {
    deadline
        .bound("the transaction", transaction)
        .await
        .map_err(|passed| PipelineError::Unavailable(passed.into()))?
}
impl From<TxError> for PipelineError {
    fn from(error: TxError) -> Self {
        match error {
            TxError::Db(error) => PipelineError::from_db(error),
            // Callers answer from the stored row first; one that does not reports the twin.
            TxError::KeyTaken => PipelineError::IdempotencyKeyInProgress,
            TxError::Rejected(reason) => PipelineError::Rejected(reason),
            TxError::Render(error) => PipelineError::Internal(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(statement_timeout_ms: u64, lock_timeout_ms: u64) -> DatabaseSettings {
        let mut settings = crate::config::Settings::load(std::path::Path::new("config"))
            .expect("the default config loads")
            .database;
        settings.statement_timeout_ms = statement_timeout_ms;
        settings.lock_timeout_ms = lock_timeout_ms;
        settings
    }

    #[test]
    fn timeouts_are_tightened_only_when_the_time_left_is_shorter() {
        let db = database(5000, 3000);
        assert_eq!(
            tightened_timeouts(9000, &db),
            None,
            "the session's own bound it"
        );
        assert_eq!(tightened_timeouts(5000, &db), None);
        assert_eq!(
            tightened_timeouts(4999, &db).as_deref(),
            Some("SET LOCAL statement_timeout = 4999; SET LOCAL lock_timeout = 3000")
        );
        assert_eq!(
            tightened_timeouts(3049, &db).as_deref(),
            Some("SET LOCAL statement_timeout = 3049; SET LOCAL lock_timeout = 2999")
        );
        assert_eq!(
            tightened_timeouts(20, &db).as_deref(),
            Some("SET LOCAL statement_timeout = 20; SET LOCAL lock_timeout = 1")
        );
    }
}
