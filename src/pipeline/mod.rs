//! The mutating path, in the order of its layers (API.md, "The debit pipeline"):
//!
//! 1. [`idempotency`] (with [`replay_cache`]): replay a stored answer, refuse a twin in
//!    flight, or claim the key (an in-flight marker in Redis; nothing written to Postgres);
//! 2. [`lock`]: the Redlock lock on the wallet (sheds contention, protects nothing alone);
//! 3. [`ledger`]: the transaction that row-locks the wallet;
//! 4. [`ledger`]: the balance check on the locked row; then wallet, ledger entry, event and
//!    the key's row with its answer commit together (the key's primary key is the real guard
//!    against a twin), and only then is the lock released.
//!
//! Bounded throughout: a request takes a place in its wallet's local queue (capped) before it
//! writes anything, at most `pipeline.concurrent_max` pipelines run at once, and one
//! [`deadline`] bounds every wait of a request.
//!
//! Every mutating command goes through one execution, [`Pipeline::execute`]: a [`Command`] says
//! which wallet it locks and what it does inside the row-locked transaction; idempotency, the
//! lock, the transaction and storing the answer happen once, here, in layer order.
//!
//! A request runs detached from its HTTP connection (see [`Pipeline::run`]), so a client that
//! hangs up mid-way cannot cancel it between the commit and the bookkeeping after it.
//!
//! This is the business core: it knows nothing of HTTP. It answers [`Outcome`]s (stored
//! responses) and [`PipelineError`]s; the API layer maps those to statuses.

pub mod append;
mod batch;
pub mod chain;
pub mod changes;
pub mod create_wallet;
pub mod deadline;
pub mod expiry;
pub mod holds;
pub mod idempotency;
pub mod ledger;
pub mod lock;
pub mod locked;
pub mod outcome;
pub mod replay_cache;
pub mod retention;
pub mod reversal;
pub mod transaction;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::balance_cache::Mark;
use crate::config::{DatabaseSettings, Settings, ms};
use crate::db::models::WalletRow;
use crate::db::{PgPool, pipelined};
use crate::domain::{HoldId, TenantId, TransactionId, WalletId};
use crate::metrics::Metrics;
use crate::outbox;
use crate::redis_nodes::RedisNodes;
use batch::Coalescer;
use changes::{Changes, CommitEffects};
use create_wallet::CreateWalletCommand;
use deadline::Deadline;
use holds::{CaptureCommand, PlaceHoldCommand, VoidCommand};
use idempotency::{Begin, Claim, IdempotentRequest};
use ledger::EntryCommand;
use lock::{LockError, LockMode, WalletLocks};
pub use outcome::{Decline, Outcome, PipelineError, StoredResponse};
use replay_cache::ReplayCache;
use reversal::ReverseCommand;
use transaction::TxError;

/// A mutating command: what it locks and what it does inside the row-locked transaction.
#[derive(Debug, Clone)]
pub enum Command {
    /// A new wallet: nothing to lock (nobody else knows its id yet).
    CreateWallet(CreateWalletCommand),
    /// A debit or credit of one wallet.
    Entry(EntryCommand),
    /// A hold placed on a wallet.
    PlaceHold(PlaceHoldCommand),
    /// A capture of a hold: its wallet is resolved before the lock.
    Capture(CaptureCommand),
    /// A void of a hold: its wallet is resolved before the lock.
    Void(VoidCommand),
    /// A reversal of an entry: its wallet is resolved before the lock.
    Reverse(ReverseCommand),
}

impl Command {
    /// The operation's name, for metrics and logs.
    fn operation(&self) -> &'static str {
        match self {
            Command::CreateWallet(_) => "create_wallet",
            Command::Entry(entry) => entry.kind.as_str(),
            Command::PlaceHold(_) => "place_hold",
            Command::Capture(_) => "capture",
            Command::Void(_) => "void",
            Command::Reverse(_) => "reverse",
        }
    }

    /// The wallet whose lock the command takes, if any (after [`Pipeline::resolve`]).
    fn locks(&self) -> Option<WalletId> {
        match self {
            Command::CreateWallet(_) => None,
            Command::Entry(entry) => Some(entry.wallet),
            Command::PlaceHold(place) => Some(place.wallet),
            Command::Capture(capture) => capture.wallet,
            Command::Void(void) => void.wallet,
            Command::Reverse(reverse) => reverse.wallet,
        }
    }

    /// Whether a committed answer of this command is a ledger entry (counted in metrics).
    fn writes_entry(&self) -> bool {
        matches!(
            self,
            Command::Entry(_) | Command::Capture(_) | Command::Reverse(_)
        )
    }

    /// Layers 3 and 4: inside the transaction, on the row of the wallet it [locks](Self::locks)
    /// (already row-locked; `None` if it locks none or this tenant has no such wallet), the
    /// command decides and records in `changes` what it changed. Storing the answer and the
    /// events is not its job: the pipeline does that once for every command, in the same
    /// transaction.
    async fn run_locked(
        &self,
        conn: &mut crate::db::PgConn,
        claim: &Claim,
        wallet: Option<WalletRow>,
        changes: &mut Changes,
    ) -> Result<StoredResponse, TxError> {
        match self {
            Command::CreateWallet(create) => {
                create_wallet::create_once(conn, claim, create, changes).await
            }
            Command::Entry(entry) => {
                let posted = ledger::post_entry_once(conn, claim, wallet, entry, changes).await?;
                posted.answer.map_err(TxError::Rejected)
            }
            Command::PlaceHold(place) => {
                holds::place_once(conn, claim, wallet, place, changes).await
            }
            Command::Capture(capture) => {
                holds::capture_once(conn, claim, wallet, capture, changes).await
            }
            Command::Void(void) => holds::void_once(conn, claim, wallet, void, changes).await,
            Command::Reverse(reverse) => {
                reversal::reverse_once(conn, claim, wallet, reverse, changes).await
            }
        }
    }
}

/// Everything the mutating path needs, built once at start and shared by every request.
pub struct Pipeline {
    db: PgPool,
    locks: WalletLocks,
    replay_cache: ReplayCache,
    coalescer: Coalescer,
    effects: CommitEffects,
    metrics: Arc<Metrics>,
    database: DatabaseSettings,
    lease: Duration,
    deadline: Duration,
    /// One permit per running pipeline (`pipeline.concurrent_max`).
    slots: Arc<Semaphore>,
}

impl Pipeline {
    pub fn new(
        db: PgPool,
        redis: &RedisNodes,
        effects: CommitEffects,
        metrics: Arc<Metrics>,
        settings: &Settings,
    ) -> Self {
        Self {
            db,
            locks: WalletLocks::new(
                redis.clone(),
                &settings.lock,
                settings.pipeline.wallet_queue_depth_max,
            ),
            replay_cache: ReplayCache::new(
                redis.clone(),
                Duration::from_secs(settings.idempotency.replay_cache_ttl_s),
            ),
            coalescer: Coalescer::new(settings.pipeline.batch_max),
            effects,
            metrics,
            database: settings.database.clone(),
            lease: ms(settings.idempotency.lease_ms),
            deadline: ms(settings.pipeline.deadline_ms),
            slots: Arc::new(Semaphore::new(settings.pipeline.concurrent_max)),
        }
    }

    pub fn replay_cache(&self) -> &ReplayCache {
        &self.replay_cache
    }

    /// Runs a command on its own task: if the client disconnects, the HTTP layer drops its
    /// future, but the pipeline still finishes (commits or rolls back, releases its lock and
    /// key). At most `pipeline.concurrent_max` run at once; beyond that the request is shed
    /// with `Unavailable` before anything is written.
    pub async fn run(
        self: &Arc<Self>,
        request: IdempotentRequest,
        command: Command,
    ) -> Result<Outcome, PipelineError> {
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            self.metrics.record_shed("pipelines_busy");
            return Err(PipelineError::Unavailable(anyhow::anyhow!(
                "pipeline.concurrent_max pipelines are already running"
            )));
        };
        let pipeline = Arc::clone(self);
        // The task keeps the request's span, so what the pipeline logs carries its request id.
        tokio::spawn(
            async move {
                let outcome = pipeline.execute(request, command).await;
                drop(slot);
                outcome
            }
            .in_current_span(),
        )
        .await
        .map_err(|join_error| {
            PipelineError::Internal(anyhow::anyhow!("pipeline task failed: {join_error}"))
        })?
    }

    /// The four layers, in order, for any command.
    async fn execute(
        &self,
        request: IdempotentRequest,
        command: Command,
    ) -> Result<Outcome, PipelineError> {
        let deadline = Deadline::after(self.deadline);
        let operation = command.operation();
        let mut clock = LayerClock::start(&self.metrics);

        // 1. Idempotency: a stored answer is replayed (from Redis, or Postgres when Redis does
        // not know), a twin running now is refused, or the key is claimed (marked in flight).
        let mut claim = match self.claim_or_replay(&request, operation, deadline).await? {
            Begin::Claimed(claim) => claim,
            Begin::Replay(stored) => return Ok(Outcome::Replayed(stored)),
        };
        clock.lap("claim");

        // A command that names a hold or an entry learns its wallet now, to lock it (and the
        // key row names it); the transaction re-checks it under the row lock.
        let (request, command) = match self.resolve(request, command, deadline).await {
            Ok(resolved) => {
                claim.targets(resolved.0.wallet);
                resolved
            }
            // A read that failed (the database down or slow): nothing to look up.
            Err(error) => {
                claim.abandon().await;
                return Err(error);
            }
        };

        // A place in the wallet's local queue, before anything is written: a full queue sheds
        // the request with nothing to undo.
        let place = match command.locks() {
            None => None,
            Some(wallet) => match self.enqueue(request.tenant, wallet) {
                Ok(place) => Some(place),
                // Shedding writes nothing; a retry whose answer is stored still gets it.
                Err(shed) => {
                    return self
                        .refused(&request, claim, operation, deadline, shed)
                        .await;
                }
            },
        };

        // 2 to 4 for a debit or credit: coalesced with those queued behind it on its wallet.
        let place = match (&command, place) {
            (Command::Entry(entry), Some(place)) if self.coalescer.enabled() => {
                return self
                    .execute_coalesced(request, entry.clone(), claim, place, deadline, clock)
                    .await;
            }
            (_, place) => place,
        };

        // 2. The wallet's distributed lock, with a bounded wait.
        let guard = match place {
            None => None,
            Some(place) => match self.lock(place, deadline).await {
                Ok(guard) => Some(guard),
                Err(error) => {
                    return self
                        .refused(&request, claim, operation, deadline, error)
                        .await;
                }
            },
        };
        if guard.is_some() {
            clock.lap("lock");
        }

        // 3 + 4. Row lock, the command's decision, the key's row with its answer, one commit (with the events
        // of what changed, and the wallet's cache entry marked pending before it).
        let result = self.transaction(&claim, &command, deadline).await;
        clock.lap("transaction");
        let release = async {
            if let Some(guard) = guard {
                if guard.expired() {
                    tracing::warn!(wallet = ?command.locks(), "Redis lock expired before the commit; the row lock kept the ledger consistent");
                }
                guard.release().await;
            }
        };
        let stored = match result {
            // After the commit, all at once: the lock released, the cache given the committed
            // wallet (before the client hears of the change, so its next read sees it), the
            // relay woken, and the answer cached for a retry (our marker cleared with it).
            Ok(Executed::Committed(stored, changes, mark)) => {
                tokio::join!(
                    release,
                    self.effects.after_commit(&changes, mark),
                    claim.answered(&stored)
                );
                stored
            }
            // The key had its row already: nothing of ours committed; the row answers.
            Ok(Executed::KeyTaken) => {
                release.await;
                return self
                    .answer_taken_key(&request, claim, operation, deadline)
                    .await;
            }
            // Anything else frees the key, so that a retry executes afresh.
            Err(error) => {
                release.await;
                return self
                    .refused(&request, claim, operation, deadline, error)
                    .await;
            }
        };
        clock.lap("after_commit");
        if command.writes_entry() {
            self.metrics.record_entry(operation, stored.status);
        }
        Ok(Outcome::Executed(stored))
    }

    /// Fills in the wallet of a capture, void or reversal (a read, before any lock or write).
    /// An unknown hold or entry keeps no wallet, and its transaction stores the 404 decline.
    async fn resolve(
        &self,
        mut request: IdempotentRequest,
        mut command: Command,
        deadline: Deadline,
    ) -> Result<(IdempotentRequest, Command), PipelineError> {
        let tenant = request.tenant;
        /// What the command names instead of a wallet.
        enum Named {
            Hold(HoldId),
            Entry(TransactionId),
        }
        let named = match &command {
            Command::Capture(CaptureCommand { hold, .. })
            | Command::Void(VoidCommand { hold, .. }) => Named::Hold(*hold),
            Command::Reverse(ReverseCommand { transaction, .. }) => Named::Entry(*transaction),
            Command::CreateWallet(_) | Command::Entry(_) | Command::PlaceHold(_) => {
                return Ok((request, command));
            }
        };
        let mut conn = transaction::connection(&self.db, &deadline).await?;
        let wallet = transaction::within_deadline(&deadline, async {
            match named {
                Named::Hold(hold) => holds::hold_wallet(&mut conn, tenant, hold).await,
                Named::Entry(entry) => reversal::transaction_wallet(&mut conn, tenant, entry).await,
            }
            .map_err(PipelineError::from_db)
        })
        .await?;
        match &mut command {
            Command::Capture(capture) => capture.wallet = wallet,
            Command::Void(void) => void.wallet = wallet,
            Command::Reverse(reverse) => reverse.wallet = wallet,
            Command::CreateWallet(_) | Command::Entry(_) | Command::PlaceHold(_) => {}
        }
        request.wallet = wallet;
        Ok((request, command))
    }

    fn enqueue(
        &self,
        tenant: TenantId,
        wallet: WalletId,
    ) -> Result<lock::QueuePlace, PipelineError> {
        self.locks.enqueue(tenant, wallet).map_err(|full| {
            self.metrics.record_shed("wallet_queue_full");
            tracing::info!(%wallet, depth = full.depth, "wallet queue full; shedding");
            PipelineError::LockTimeout
        })
    }

    /// Layer 1: a stored answer (cached for the next retry if it came from Postgres), or our
    /// claim on the key. Bounded as a whole by the deadline.
    async fn claim_or_replay(
        &self,
        request: &IdempotentRequest,
        operation: &str,
        deadline: Deadline,
    ) -> Result<Begin, PipelineError> {
        let begun =
            idempotency::begin(&self.db, &self.replay_cache, request, self.lease, deadline).await?;
        if let Begin::Replay(_) = &begun {
            self.metrics.record_replay(operation);
        }
        Ok(begun)
    }

    /// A claimed request that ends without committing frees its key, so that a retry executes
    /// afresh. But layer 1 claims a key on Redis alone when Redis holds no answer for it, and
    /// Postgres may still hold one (its cached copy lapsed or was lost): a late retry is owed
    /// that answer, or the key's own refusal (reused for another request, expired), not a
    /// refusal of the moment (a 400 against today's balance, a busy wallet). One read by
    /// primary key, only after those refusals; a dependency that is down is answered as it is.
    async fn refused(
        &self,
        request: &IdempotentRequest,
        claim: Claim,
        operation: &str,
        deadline: Deadline,
        error: PipelineError,
    ) -> Result<Outcome, PipelineError> {
        if !matches!(
            error,
            PipelineError::Rejected(_) | PipelineError::LockTimeout
        ) {
            claim.abandon().await;
            return Err(error);
        }
        match idempotency::stored_answer(&self.db, request, deadline).await {
            Ok(Some(stored)) => {
                claim.answered(&stored).await;
                self.metrics.record_replay(operation);
                Ok(Outcome::Replayed(stored))
            }
            Err(
                refusal @ (PipelineError::IdempotencyKeyReused
                | PipelineError::IdempotencyKeyExpired),
            ) => {
                claim.abandon().await;
                Err(refusal)
            }
            // Nothing stored, or the look-up itself failed: the refusal stands.
            Ok(None) | Err(_) => {
                claim.abandon().await;
                Err(error)
            }
        }
    }

    /// The request's transaction met its key's row (a twin committed first, or the answer was
    /// stored before and its cached copy is gone): the row is the answer.
    async fn answer_taken_key(
        &self,
        request: &IdempotentRequest,
        claim: Claim,
        operation: &str,
        deadline: Deadline,
    ) -> Result<Outcome, PipelineError> {
        match idempotency::stored_answer(&self.db, request, deadline).await {
            Ok(Some(stored)) => {
                claim.answered(&stored).await;
                self.metrics.record_replay(operation);
                Ok(Outcome::Replayed(stored))
            }
            Ok(None) => {
                claim.abandon().await;
                Err(PipelineError::Internal(anyhow::anyhow!(
                    "the key's row refused ours but cannot be read"
                )))
            }
            Err(error) => {
                claim.abandon().await;
                Err(error)
            }
        }
    }

    /// Layer 2.
    async fn lock(
        &self,
        place: lock::QueuePlace,
        deadline: Deadline,
    ) -> Result<lock::WalletLockGuard, PipelineError> {
        let wait_started = Instant::now();
        let acquired = self.locks.acquire(place, deadline).await;
        let outcome = match &acquired {
            Ok(guard) => match guard.mode() {
                LockMode::Redlock => "acquired",
                LockMode::DatabaseOnly => "database_only",
            },
            Err(LockError::Timeout { .. }) => "timeout",
            Err(LockError::QuorumUnreachable { .. }) => "unavailable",
        };
        self.metrics
            .record_lock_wait(wait_started.elapsed(), outcome);
        acquired.map_err(|error| match error {
            LockError::Timeout { .. } => PipelineError::LockTimeout,
            LockError::QuorumUnreachable { .. } => PipelineError::Unavailable(error.into()),
        })
    }

    /// Layers 3 and 4: one transaction, retried on a serialization failure or deadlock, all of
    /// it within the deadline; the command decides inside it. Returns the committed answer,
    /// what changed, and the cache mark made before the commit.
    async fn transaction(
        &self,
        claim: &Claim,
        command: &Command,
        deadline: Deadline,
    ) -> Result<Executed, PipelineError> {
        let conn = transaction::connection(&self.db, &deadline).await?;
        let database = &self.database;
        let effects = &self.effects;
        transaction::transaction_within_deadline(&deadline, conn, async |conn| {
            let mut attempt = 1;
            loop {
                // Three round trips: BEGIN with the row lock; the command's statements (a
                // debit's wallet update and entry, pipelined); its events and its answer with
                // COMMIT, the wallet's cache entry marked pending (Redis) before COMMIT is sent.
                let outcome: Result<(StoredResponse, Changes, Mark), TxError> =
                    transaction::attempt(conn, async |c| {
                        let wallet = command.locks();
                        let locked =
                            transaction::begin_locked(c, &deadline, database, claim.tenant(), wallet)
                                .await?;
                        let mut changes = Changes::default();
                        let response = command.run_locked(c, claim, locked, &mut changes).await?;
                        let (((), ()), mark) = pipelined::commit_with(
                            c,
                            async |c| {
                                tokio::try_join!(
                                    biased;
                                    async { outbox::insert(c, changes.events()).await.map_err(TxError::from) },
                                    claim.complete(c, &response, append::entry_time())
                                )
                            },
                            effects.before_commit(&changes),
                        )
                        .await?;
                        Ok((response, changes, mark))
                    })
                    .await;
                match outcome {
                    Ok((stored, changes, mark)) => {
                        return Ok(Executed::Committed(stored, changes, mark));
                    }
                    Err(TxError::KeyTaken) => return Ok(Executed::KeyTaken),
                    Err(error) if error.retry_after_attempt(attempt, &deadline) => {
                        tracing::info!(%error, attempt, "transaction conflict; retrying");
                        attempt += 1;
                    }
                    Err(error) => return Err(PipelineError::from(error)),
                }
            }
        })
        .await
    }
}

/// How a request's transaction ended, if it did not fail.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per transaction and moved once"
)]
enum Executed {
    /// Committed: the answer, what changed, and the cache mark made before the commit.
    Committed(StoredResponse, Changes, Mark),
    /// Rolled back because the key already had its row: that row is the answer.
    KeyTaken,
}

/// Times the layers of one request into `walletd_pipeline_layer_seconds{layer}`: each lap is
/// the time since the previous one, so the laps of a request add up to its time in the
/// pipeline (a request that stops early records only the layers it reached).
struct LayerClock<'a> {
    metrics: &'a Metrics,
    last: Instant,
}

impl<'a> LayerClock<'a> {
    fn start(metrics: &'a Metrics) -> Self {
        Self {
            metrics,
            last: Instant::now(),
        }
    }

    fn lap(&mut self, layer: &'static str) {
        let now = Instant::now();
        self.metrics.record_layer(layer, now - self.last);
        self.last = now;
    }
}
