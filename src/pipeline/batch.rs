//! Coalescing a hot wallet's debits and credits: while one request holds a wallet, the debits
//! and credits queued behind it in this process are taken with it as one batch — one Redis
//! lock, one row-locked transaction, one commit — and each is still decided on its own.
//!
//! Inside the batch's transaction the entries run in queue order, each exactly as it would
//! alone ([`ledger::post_entry_once`]): its balance check against the wallet as the entries
//! before it left it, its own seq, hash, stored answer (its key's row) and event. A decline is
//! that request's stored answer and touches no other entry; a request refused against the
//! locked row (a credit past the maximum balance) is answered alone and writes no entry (holds
//! it found expired are released all the same, with their events). A batch that fails as a
//! whole for a reason of its own (a row the database refused, a key that had its row already,
//! a bug) is run again one request at a time under the same lock, so one bad request fails
//! alone, and a request whose key had its row is answered from that row; one that fails because
//! the database is unreachable or too slow fails every request in it, and each frees its key,
//! as a single request would, so each retry executes afresh.
//!
//! Bounded: a batch holds at most `pipeline.batch_max` requests (plus its leader, if more were
//! queued ahead of it), its leader never waits for more to arrive (a batch is whatever queued
//! while the wallet was busy), and it runs within the earliest deadline of its requests, so no
//! request's key is executed past its own deadline (which is shorter than its lease). A request
//! keeps its place in the wallet's local queue (`pipeline.wallet_queue_depth_max`) while it
//! waits; one that stops waiting after a batch took it gets that batch's answer, bounded by the
//! batch's deadline.
//!
//! Who runs a batch: every request queues its job, then waits for its wallet's turn (the local
//! queue, then the Redis lock) *or* its answer, whichever comes first. The request that gets
//! the turn while its own job is still queued is the batch's leader: it takes the queued jobs
//! (its own among them), runs them, answers each and only then gives up the turn, so the
//! requests it answered see their answer before they could get the turn.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::future::join_all;
use tokio::sync::oneshot;

use super::append::entry_time;
use super::changes::Changes;
use super::deadline::Deadline;
use super::idempotency::{self, Claim, IdempotentRequest};
use super::ledger::{self, EntryCommand};
use super::lock::{QueuePlace, WalletLockGuard};
use super::outcome::{Outcome, PipelineError, StoredResponse};
use super::transaction::{self, TxError};
use super::{LayerClock, Pipeline};
use crate::balance_cache::Mark;
use crate::db::pipelined;
use crate::domain::{TenantId, WalletId};
use crate::outbox;

/// A wallet as one tenant sees it: what batches are keyed by (as the lock is).
type Scope = (TenantId, WalletId);

/// What one request of a batch was answered.
type Answer = Result<Outcome, PipelineError>;

/// One claimed debit or credit waiting for its wallet's turn.
struct Job {
    id: u64,
    request: IdempotentRequest,
    entry: EntryCommand,
    claim: Claim,
    deadline: Deadline,
    answer: oneshot::Sender<Answer>,
}

/// A queued job's receipt: how its request learns its answer, or takes its job back.
struct Ticket {
    id: u64,
    scope: Scope,
    answer: oneshot::Receiver<Answer>,
}

/// The jobs queued per wallet in this process. An entry lives while a job waits in it.
pub struct Coalescer {
    queues: Mutex<HashMap<Scope, VecDeque<Job>>>,
    next_id: AtomicU64,
    batch_max: usize,
}

impl Coalescer {
    pub fn new(batch_max: usize) -> Self {
        Self {
            queues: Mutex::default(),
            next_id: AtomicU64::new(0),
            batch_max,
        }
    }

    /// Whether requests are coalesced at all (`pipeline.batch_max` > 1).
    pub fn enabled(&self) -> bool {
        self.batch_max > 1
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<Scope, VecDeque<Job>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn submit(
        &self,
        request: IdempotentRequest,
        entry: EntryCommand,
        claim: Claim,
        deadline: Deadline,
    ) -> Ticket {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let scope = (request.tenant, entry.wallet);
        let (answer, receiver) = oneshot::channel();
        self.queues().entry(scope).or_default().push_back(Job {
            id,
            request,
            entry,
            claim,
            deadline,
            answer,
        });
        Ticket {
            id,
            scope,
            answer: receiver,
        }
    }

    /// The batch for the holder of `ticket`'s wallet turn: the oldest `batch_max` jobs, and the
    /// holder's own if it is further back; empty if its job was already taken by a batch.
    fn take(&self, ticket: &Ticket) -> Vec<Job> {
        let mut queues = self.queues();
        let Some(queue) = queues.get_mut(&ticket.scope) else {
            return Vec::new();
        };
        let Some(own) = queue.iter().position(|job| job.id == ticket.id) else {
            return Vec::new();
        };
        let batch: Vec<Job> = if own < self.batch_max {
            queue.drain(..self.batch_max.min(queue.len())).collect()
        } else {
            let mut batch: Vec<Job> = queue.drain(..self.batch_max).collect();
            batch.extend(queue.remove(own - self.batch_max));
            batch
        };
        if queue.is_empty() {
            queues.remove(&ticket.scope);
        }
        batch
    }

    /// Takes a job back (its request stops waiting); `None` if a batch has it already.
    fn withdraw(&self, ticket: &Ticket) -> Option<Job> {
        let mut queues = self.queues();
        let queue = queues.get_mut(&ticket.scope)?;
        let job = queue
            .iter()
            .position(|job| job.id == ticket.id)
            .and_then(|at| queue.remove(at));
        if queue.is_empty() {
            queues.remove(&ticket.scope);
        }
        job
    }
}

/// Each job's outcome inside the batch's transaction: its answer to store, or why it alone
/// was refused (no entry written for it).
type Verdict = Result<StoredResponse, PipelineError>;

/// A committed batch: each job's verdict, what changed, and the cache mark made before COMMIT.
type Decided = (Vec<Verdict>, Changes, Mark);

impl Pipeline {
    /// Layers 2 to 4 for a claimed debit or credit, coalesced with the ones queued behind the
    /// same wallet (see the module doc).
    pub(super) async fn execute_coalesced(
        &self,
        request: IdempotentRequest,
        entry: EntryCommand,
        claim: Claim,
        place: QueuePlace,
        deadline: Deadline,
        mut clock: LayerClock<'_>,
    ) -> Answer {
        let mut ticket = self.coalescer.submit(request, entry, claim, deadline);
        let waiting = Instant::now();
        let turn = self.lock(place, deadline);
        let guard = tokio::select! {
            biased;
            // Decided in another request's batch.
            answer = &mut ticket.answer => {
                self.metrics.record_lock_wait(waiting.elapsed(), "batched");
                clock.lap("batched");
                return answered(answer);
            }
            guard = turn => guard,
        };
        let guard = match guard {
            Ok(guard) => guard,
            Err(error) => {
                return match self.coalescer.withdraw(&ticket) {
                    Some(job) => {
                        let operation = job.entry.kind.as_str();
                        self.refused(&job.request, job.claim, operation, job.deadline, error)
                            .await
                    }
                    // A batch took it while this request gave up waiting: its answer stands.
                    None => answered(ticket.answer.await),
                };
            }
        };
        clock.lap("lock");
        let jobs = self.coalescer.take(&ticket);
        if jobs.is_empty() {
            guard.release().await;
        } else {
            self.run_batch(jobs, guard, &mut clock).await;
        }
        answered(ticket.answer.await)
    }

    /// Runs one batch under its wallet's lock, answers every job, then releases the lock.
    /// Every job is answered before the lock and the turn are released: a request of this
    /// batch still waiting for the turn then finds its answer first (and never takes the lock
    /// for nothing), and the release is off every response path.
    async fn run_batch(&self, jobs: Vec<Job>, guard: WalletLockGuard, clock: &mut LayerClock<'_>) {
        self.metrics.record_batch(jobs.len());
        let result = self.batch_transaction(&jobs).await;
        clock.lap("transaction");
        match result {
            Ok(Batched::Committed(decided)) => self.settle(jobs, decided).await,
            // The batch's own fault, not the database's (a row the database refused, a key
            // that had its row already): one request at a time, so the one that caused it is
            // answered alone.
            Ok(Batched::KeyTaken) if jobs.len() > 1 => self.run_one_by_one(jobs).await,
            Err(error) if jobs.len() > 1 && !error.is_transient() => {
                tracing::warn!(%error, jobs = jobs.len(), "batch failed; running its requests one at a time");
                self.run_one_by_one(jobs).await;
            }
            Ok(Batched::KeyTaken) => {
                for job in jobs {
                    self.answer_taken(job).await;
                }
            }
            Err(error) => self.fail(jobs, &error).await,
        }
        if guard.expired() {
            tracing::warn!(
                "Redis lock expired before the batch's commit; the row lock kept the ledger consistent"
            );
        }
        guard.release().await;
        clock.lap("after_commit");
    }

    /// The jobs of a batch that could not commit as one, each in its own transaction.
    async fn run_one_by_one(&self, jobs: Vec<Job>) {
        for job in jobs {
            let alone = [job];
            match self.batch_transaction(&alone).await {
                Ok(Batched::Committed(decided)) => self.settle(Vec::from(alone), decided).await,
                Ok(Batched::KeyTaken) => {
                    let [job] = alone;
                    self.answer_taken(job).await;
                }
                Err(error) => self.fail(Vec::from(alone), &error).await,
            }
        }
    }

    /// Answers a job with a failure: nothing was stored for it, so its key is freed, unless
    /// the key's answer was stored before (see [`Pipeline::refused`]).
    async fn refuse(&self, job: Job, error: PipelineError) {
        let operation = job.entry.kind.as_str();
        let answer = self
            .refused(&job.request, job.claim, operation, job.deadline, error)
            .await;
        let _ = job.answer.send(answer);
    }

    /// Every job of a batch that failed as a whole, each with its own copy of the failure.
    async fn fail(&self, jobs: Vec<Job>, error: &PipelineError) {
        let failed = jobs
            .into_iter()
            .map(|job| self.refuse(job, error.for_another_request()));
        join_all(failed).await;
    }

    /// A job whose key had its row already: that row is its answer.
    async fn answer_taken(&self, job: Job) {
        let operation = job.entry.kind.as_str();
        let answer = self
            .answer_taken_key(&job.request, job.claim, operation, job.deadline)
            .await;
        let _ = job.answer.send(answer);
    }

    /// After a batch committed: the cache and relay effects, each job's answer cached (its
    /// marker cleared), and its answer sent.
    async fn settle(&self, jobs: Vec<Job>, (verdicts, changes, mark): Decided) {
        let metrics = &self.metrics;
        let settled = jobs
            .into_iter()
            .zip(verdicts)
            .map(|(job, verdict)| async move {
                match verdict {
                    Ok(stored) => {
                        job.claim.answered(&stored).await;
                        metrics.record_entry(job.entry.kind.as_str(), stored.status);
                        let _ = job.answer.send(Ok(Outcome::Executed(stored)));
                    }
                    Err(error) => self.refuse(job, error).await,
                }
            });
        tokio::join!(self.effects.after_commit(&changes, mark), join_all(settled));
    }

    /// Layers 3 and 4 for every job, in order, in one transaction (retried as a whole on a
    /// serialization failure or deadlock, within the leader's deadline).
    async fn batch_transaction(&self, jobs: &[Job]) -> Result<Batched, PipelineError> {
        let Some(deadline) = jobs.iter().map(|job| job.deadline).reduce(Deadline::min) else {
            return Ok(Batched::Committed((
                Vec::new(),
                Changes::default(),
                Mark::Off,
            )));
        };
        let conn = transaction::connection(&self.db, &deadline).await?;
        let database = &self.database;
        transaction::transaction_within_deadline(&deadline, conn, async |conn| {
            let mut attempt = 1;
            loop {
                // BEGIN with the row lock; each entry's wallet update and ledger insert (one
                // round trip each); every event (one statement) and every answer (one
                // statement) with COMMIT: 2 + n round trips for n entries, all under the lock.
                let outcome = transaction::attempt(conn, async |c| {
                    let Job { claim, entry, .. } = &jobs[0];
                    let mut wallet = transaction::begin_locked(
                        c,
                        &deadline,
                        database,
                        claim.tenant(),
                        Some(entry.wallet),
                    )
                    .await?;
                    let mut changes = Changes::default();
                    let mut verdicts = Vec::with_capacity(jobs.len());
                    for job in jobs {
                        let posted =
                            ledger::post_entry_once(c, &job.claim, wallet, &job.entry, &mut changes)
                                .await?;
                        wallet = posted.wallet;
                        verdicts.push(posted.answer.map_err(PipelineError::Rejected));
                    }
                    let at = entry_time();
                    let answers: Vec<_> = jobs
                        .iter()
                        .zip(&verdicts)
                        .filter_map(|(job, verdict)| {
                            Some(job.claim.answer_row(verdict.as_ref().ok()?, at))
                        })
                        .collect();
                    let (((), ()), mark) = pipelined::commit_with(
                        c,
                        async |c| {
                            tokio::try_join!(
                                biased;
                                async { outbox::insert(c, changes.events()).await.map_err(TxError::from) },
                                idempotency::store_answers(c, &answers)
                            )
                        },
                        self.effects.before_commit(&changes),
                    )
                    .await?;
                    Ok::<_, TxError>((verdicts, changes, mark))
                })
                .await;
                match outcome {
                    Ok(decided) => return Ok(Batched::Committed(decided)),
                    Err(TxError::KeyTaken) => return Ok(Batched::KeyTaken),
                    Err(error) if error.retry_after_attempt(attempt, &deadline) => {
                        tracing::info!(%error, attempt, jobs = jobs.len(), "batch transaction conflict; retrying");
                        attempt += 1;
                    }
                    Err(error) => return Err(PipelineError::from(error)),
                }
            }
        })
        .await
    }
}

/// How a batch's transaction ended, if it did not fail.
#[allow(
    clippy::large_enum_variant,
    reason = "made once per transaction and moved once"
)]
enum Batched {
    Committed(Decided),
    /// Rolled back because a job's key already had its row.
    KeyTaken,
}

/// A batch that did not commit: every job frees its key and gets the failure.
/// A job's answer as its request returns it.
fn answered(answer: Result<Answer, oneshot::error::RecvError>) -> Answer {
    answer.unwrap_or_else(|_| {
        Err(PipelineError::Internal(anyhow::anyhow!(
            "the batch holding this request ended without answering it"
        )))
    })
}
