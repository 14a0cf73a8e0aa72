//! The mutating path, in the order of its layers (API.md, "The debit pipeline"):
//!
//! 1. [`replay_cache`] then [`idempotency`]: replay a stored answer, or claim the key;
//! 2. [`lock`]: the Redlock lock on the wallet (sheds contention, protects nothing alone);
//! 3. [`ledger`]: the transaction that row-locks the wallet and re-claims the key;
//! 4. [`ledger`]: the balance check on the locked row; then wallet, ledger entry and stored
//!    answer commit together, and only then is the lock released.
//!
//! Bounded throughout: a request takes a place in its wallet's local queue (capped) before it
//! writes its in-flight marker, at most `pipeline.concurrent_max` pipelines run at once, and
//! one [`deadline`] bounds every wait of a request.
//!
//! A request runs detached from its HTTP connection (see [`run_detached`]), so a client that
//! hangs up mid-way cannot cancel it between the commit and the bookkeeping after it.

pub mod create_wallet;
pub mod deadline;
pub mod idempotency;
pub mod ledger;
pub mod lock;
pub mod replay_cache;
pub mod retention;
pub mod transaction;

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;

use crate::api::error::ApiError;
use crate::config::ms;
use crate::startup::AppState;
use create_wallet::CreateWalletCommand;
use deadline::Deadline;
use idempotency::{Begin, Claim, IdempotentRequest, StoredResponse};
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
    let deadline = Deadline::after(ms(state.settings.pipeline.deadline_ms));
    let kind = command.kind.as_str();

    // 1a. Idempotency, fast path: an answer cached in Redis is replayed at once.
    if let Some(stored) = cached_replay(&state, &request, kind).await? {
        return Ok(Outcome::Replayed(stored));
    }

    // A place in the wallet's local queue, before anything is written: a full queue sheds
    // the request with nothing to undo.
    let place = state
        .locks
        .enqueue(request.tenant, command.wallet)
        .map_err(|full| {
            state.metrics.record_shed("wallet_queue_full");
            tracing::info!(wallet = %command.wallet, depth = full.depth, "wallet queue full; shedding");
            ApiError::LockTimeout
        })?;

    // 1b. Idempotency in Postgres: replay a stored answer, or claim the key.
    let claim = match claim_or_replay(&state, &request, kind, deadline).await? {
        Begin::Claimed(claim) => claim,
        Begin::Replay(stored) => return Ok(Outcome::Replayed(stored)),
    };

    // 2. The wallet's distributed lock, with a bounded wait.
    let wait_started = Instant::now();
    let guard = match state.locks.acquire(place, deadline).await {
        Ok(guard) => guard,
        Err(error) => {
            state
                .metrics
                .record_lock_wait(wait_started.elapsed(), lock_outcome(Err(&error)));
            claim.abandon().await;
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
    let database = &state.settings.database;
    let result = ledger::post_entry(&state.db, &claim, &command, deadline, database).await;
    if guard.expired() {
        tracing::warn!(wallet = %command.wallet, "Redis lock expired before the commit; the row lock kept the ledger consistent");
    }
    guard.release().await;

    let stored = settle(claim, result).await?;
    state.metrics.record_entry(kind, &stored);
    state.replay_cache.store(&request, &stored).await;
    Ok(Outcome::Executed(stored))
}

/// Create a wallet: idempotency, then one transaction (no lock: nobody else knows the id yet).
pub async fn execute_create_wallet(
    state: AppState,
    request: IdempotentRequest,
    command: CreateWalletCommand,
) -> Result<Outcome, ApiError> {
    let deadline = Deadline::after(ms(state.settings.pipeline.deadline_ms));
    if let Some(stored) = cached_replay(&state, &request, "create_wallet").await? {
        return Ok(Outcome::Replayed(stored));
    }
    let claim = match claim_or_replay(&state, &request, "create_wallet", deadline).await? {
        Begin::Claimed(claim) => claim,
        Begin::Replay(stored) => return Ok(Outcome::Replayed(stored)),
    };
    let database = &state.settings.database;
    let result =
        create_wallet::create_wallet(&state.db, &claim, &command, deadline, database).await;
    let stored = settle(claim, result).await?;
    state.replay_cache.store(&request, &stored).await;
    Ok(Outcome::Executed(stored))
}

/// After the transaction: a committed answer disarms the claim; anything else frees the key
/// so that a retry executes afresh.
async fn settle(
    claim: Claim,
    result: Result<StoredResponse, ApiError>,
) -> Result<StoredResponse, ApiError> {
    match result {
        Ok(stored) => {
            claim.committed();
            Ok(stored)
        }
        Err(error) => {
            claim.abandon().await;
            Err(error)
        }
    }
}

/// Layer 1, fast path: the Redis replay cache (skipped when Redis is down).
async fn cached_replay(
    state: &AppState,
    request: &IdempotentRequest,
    operation: &str,
) -> Result<Option<StoredResponse>, ApiError> {
    match state.replay_cache.lookup(request).await {
        Some(Cached::Replay(stored)) => {
            state.metrics.record_replay(operation);
            Ok(Some(stored))
        }
        Some(Cached::Reused) => Err(ApiError::IdempotencyKeyReused),
        None => Ok(None),
    }
}

/// Layer 1 in Postgres, the source of truth: a stored answer (cached for the next retry), or
/// our claim on the key.
async fn claim_or_replay(
    state: &AppState,
    request: &IdempotentRequest,
    operation: &str,
    deadline: Deadline,
) -> Result<Begin, ApiError> {
    let lease = state.idempotency_lease;
    // Bounded as a whole: a round that outlives the deadline may leave a marker it never
    // learned of, which frees itself when its lease lapses.
    let begun = transaction::within_deadline(
        &deadline,
        idempotency::begin(&state.db, request, lease, deadline),
    )
    .await?;
    if let Begin::Replay(stored) = &begun {
        state.replay_cache.store(request, stored).await;
        state.metrics.record_replay(operation);
    }
    Ok(begun)
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
/// At most `pipeline.concurrent_max` run at once (`slots`); beyond that the request is shed
/// with 503 `unavailable` before anything is written.
pub async fn run_detached<F>(
    slots: &Arc<Semaphore>,
    metrics: &crate::metrics::Metrics,
    pipeline: F,
) -> Result<Outcome, ApiError>
where
    F: Future<Output = Result<Outcome, ApiError>> + Send + 'static,
{
    let Ok(slot) = Arc::clone(slots).try_acquire_owned() else {
        metrics.record_shed("pipelines_busy");
        return Err(ApiError::Unavailable(anyhow::anyhow!(
            "pipeline.concurrent_max pipelines are already running"
        )));
    };
    tokio::spawn(async move {
        let outcome = pipeline.await;
        drop(slot);
        outcome
    })
    .await
    .map_err(|join_error| {
        ApiError::Internal(anyhow::anyhow!("pipeline task failed: {join_error}"))
    })?
}
