//! The mutating path, in the order of its layers (API.md, "The debit pipeline"):
//!
//! 1. [`replay_cache`] then [`idempotency`]: replay a stored answer, or claim the key;
//! 2. [`lock`]: the Redlock lock on the wallet (sheds contention, protects nothing alone);
//! 3. [`ledger`]: the transaction that row-locks the wallet and re-claims the key;
//! 4. [`ledger`]: the balance check on the locked row; then wallet, ledger entry and stored
//!    answer commit together, and only then is the lock released.
//!
//! A request runs detached from its HTTP connection (see [`run_detached`]), so a client that
//! hangs up mid-way cannot cancel it between the commit and the bookkeeping after it.

pub mod create_wallet;
pub mod idempotency;
pub mod ledger;
pub mod lock;
pub mod replay_cache;
pub mod transaction;

use std::future::Future;
use std::time::Instant;

use crate::api::error::ApiError;
use crate::startup::AppState;
use create_wallet::CreateWalletCommand;
use idempotency::{Begin, IdempotentRequest, StoredResponse};
use ledger::EntryCommand;
use lock::{LockError, LockMode};
use replay_cache::Cached;

/// What the client gets: a fresh answer or a replayed one (same status, same bytes).
#[derive(Debug)]
pub enum Outcome {
    Executed(StoredResponse),
    Replayed(StoredResponse),
}

/// Debit or credit one wallet through the four layers.
pub async fn execute_entry(
    state: AppState,
    request: IdempotentRequest,
    command: EntryCommand,
) -> Result<Outcome, ApiError> {
    let kind = command.kind.as_str();

    // 1. Idempotency: a stored answer is replayed at once.
    let claim = match begin(&state, &request, kind).await? {
        Begin::Claimed(claim) => claim,
        Begin::Replay(stored) => return Ok(Outcome::Replayed(stored)),
    };

    // 2. The wallet's distributed lock, with a bounded wait.
    let wait_started = Instant::now();
    let guard = match state.locks.acquire(request.tenant, command.wallet).await {
        Ok(guard) => guard,
        Err(error) => {
            state
                .metrics
                .record_lock_wait(wait_started.elapsed(), lock_outcome(Err(&error)));
            claim.abandon(&state.db).await;
            return Err(match error {
                LockError::Timeout { .. } => ApiError::LockTimeout,
                LockError::QuorumUnreachable { .. } => ApiError::Unavailable(error.into()),
            });
        }
    };
    state
        .metrics
        .record_lock_wait(wait_started.elapsed(), lock_outcome(Ok(guard.mode())));

    // 3 + 4. Row lock, key re-claim, in-lock balance check, one commit.
    let result = ledger::post_entry(&state.db, &claim, &command).await;
    if guard.expired() {
        tracing::warn!(wallet = %command.wallet, "Redis lock expired before the commit; the row lock kept the ledger consistent");
    }
    guard.release().await;

    match result {
        Ok(stored) => {
            state.metrics.record_entry(kind, &stored);
            state.replay_cache.store(&request, &stored).await;
            Ok(Outcome::Executed(stored))
        }
        Err(error) => {
            claim.abandon(&state.db).await;
            Err(error)
        }
    }
}

/// Create a wallet: idempotency, then one transaction (no lock: nobody else knows the id yet).
pub async fn execute_create_wallet(
    state: AppState,
    request: IdempotentRequest,
    command: CreateWalletCommand,
) -> Result<Outcome, ApiError> {
    let claim = match begin(&state, &request, "create_wallet").await? {
        Begin::Claimed(claim) => claim,
        Begin::Replay(stored) => return Ok(Outcome::Replayed(stored)),
    };
    match create_wallet::create_wallet(&state.db, &claim, &command).await {
        Ok(stored) => {
            state.replay_cache.store(&request, &stored).await;
            Ok(Outcome::Executed(stored))
        }
        Err(error) => {
            claim.abandon(&state.db).await;
            Err(error)
        }
    }
}

/// Layer 1: the Redis replay cache, then the database (the source of truth).
async fn begin(
    state: &AppState,
    request: &IdempotentRequest,
    operation: &str,
) -> Result<Begin, ApiError> {
    let stored = match state.replay_cache.lookup(request).await {
        Some(Cached::Replay(stored)) => stored,
        Some(Cached::Reused) => return Err(ApiError::IdempotencyKeyReused),
        None => match idempotency::begin(&state.db, request, state.idempotency_lease).await? {
            Begin::Claimed(claim) => return Ok(Begin::Claimed(claim)),
            Begin::Replay(stored) => {
                state.replay_cache.store(request, &stored).await;
                stored
            }
        },
    };
    state.metrics.record_replay(operation);
    Ok(Begin::Replay(stored))
}

fn lock_outcome(result: Result<LockMode, &LockError>) -> &'static str {
    match result {
        Ok(LockMode::Redlock) => "acquired",
        Ok(LockMode::DatabaseOnly) => "database_only",
        Err(LockError::Timeout { .. }) => "timeout",
        Err(LockError::QuorumUnreachable { .. }) => "unavailable",
    }
}

/// Runs a pipeline on its own task: if the client disconnects, actix drops the handler's
/// future, but the pipeline still finishes (commits or rolls back, releases its lock and key).
pub async fn run_detached<F>(pipeline: F) -> Result<Outcome, ApiError>
where
    F: Future<Output = Result<Outcome, ApiError>> + Send + 'static,
{
    tokio::spawn(pipeline).await.map_err(|join_error| {
        ApiError::Internal(anyhow::anyhow!("pipeline task failed: {join_error}"))
    })?
}
