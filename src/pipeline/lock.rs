//! Layer 2: a Redlock lock on the wallet, over every configured Redis node.
//!
//! The lock only sheds contention: concurrent debits of one wallet queue here instead of piling
//! up on the Postgres row lock and holding pooled connections while they wait. It protects
//! nothing on its own (a lock can expire while its holder is paused); the row lock and the
//! database constraints in layer 3 decide. That is why, when a quorum of nodes is unreachable,
//! the default policy proceeds under the row lock alone instead of failing the debit.
//!
//! Algorithm (redis.io/docs/manuals/patterns/distributed-locks): `SET key token NX PX ttl` on
//! every node in parallel; acquired when a quorum (N/2+1) said OK and the time left,
//! `ttl - elapsed - drift`, is still positive (saturating, never wrapping). Otherwise the partial
//! lock is released everywhere and the attempt is retried after a random delay, until
//! `lock.wait_ms_max`. Release is a compare-and-delete script, so a holder whose lock expired
//! never deletes someone else's.
//!
//! In front of Redlock, requests for the same wallet within one process wait in a FIFO queue
//! (a per-wallet async mutex). Without it, a hot wallet's requests would all spin on Redis with
//! random back-off, and the lock would sit free between a release and the next lucky retry;
//! with it, each replica sends one contender at a time to Redis, in arrival order. The queue
//! wait counts against the same `lock.wait_ms_max` (and the request's deadline), and the queue
//! is capped at `pipeline.wallet_queue_depth_max`: a place in it is taken with
//! [`WalletLocks::enqueue`] before the request writes anything, so a full queue sheds load
//! with nothing to undo.
//!
//! Fair across replicas: a local queue hands the lock from one request to the next at once,
//! while another replica's contender polls with random back-off, so a busy replica could keep a
//! hot wallet forever. A contender whose `SET NX` fails marks the wallet contended (a short-lived
//! key on each node, set in the same script); the release reports that mark, and after
//! `lock.local_handoffs_max` turns in a row on one replica with the mark present the local queue
//! pauses for one back-off period, in which the other replica's next attempt wins.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::Rng;
use uuid::Uuid;

use super::deadline::Deadline;
use crate::config::{LockSettings, RedisUnavailablePolicy, ms};
use crate::domain::{TenantId, WalletId};
use crate::metrics;
use crate::redis_nodes::{RedisCallError, RedisNodes};

/// Takes the lock, or marks the wallet contended for `ARGV[3]` ms. Returns 1 if taken.
const ACQUIRE_SCRIPT: &str = r#"
if redis.call("SET", KEYS[1], ARGV[1], "NX", "PX", ARGV[2]) then
    return 1
end
redis.call("SET", KEYS[2], "1", "PX", ARGV[3])
return 0
"#;

/// Deletes the lock only if it still holds our token; returns 1 if the wallet is marked
/// contended (someone failed to take it recently).
const RELEASE_SCRIPT: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    redis.call("DEL", KEYS[1])
end
return redis.call("EXISTS", KEYS[2])
"#;

/// After a node failed to answer: how often, and how long apart, our token is released again.
const LATE_RELEASE_ROUNDS: u32 = 2;
const LATE_RELEASE_DELAY: Duration = Duration::from_millis(250);

/// Clock drift allowance, per Redlock: 1% of the TTL plus 2 ms for the Redis expiry granularity.
fn drift(ttl: Duration) -> Duration {
    ttl / 100 + Duration::from_millis(2)
}

/// The lock key for a wallet. Scoped by tenant: another tenant naming this wallet id (which
/// answers 404) contends on its own key, never on the owner's. Public so that tests and
/// operators can find (and hold) it.
pub fn wallet_lock_key(tenant: TenantId, wallet: WalletId) -> String {
    format!("walletd:lock:{tenant}:{wallet}")
}

/// The mark a failed contender leaves (see the module doc on fairness).
fn contended_key(tenant: TenantId, wallet: WalletId) -> String {
    format!("walletd:lockwait:{tenant}:{wallet}")
}

/// How long a contended mark lives: long enough to outlast one back-off of its setter.
fn contended_mark_ttl(retry_delay_max: Duration) -> Duration {
    retry_delay_max * 2 + Duration::from_millis(10)
}

/// A wallet as seen by one tenant: what the lock and the local queue are keyed by.
type LockScope = (TenantId, WalletId);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The wallet stayed locked by other requests for `lock.wait_ms_max` (or until the
    /// request's deadline): 503 `lock_timeout`.
    #[error("wallet lock not acquired within {waited_ms} ms ({attempts} attempts)")]
    Timeout { waited_ms: u128, attempts: u32 },
    /// A quorum of Redis nodes is unreachable and the policy is `reject`: 503 `unavailable`.
    #[error("Redis quorum unreachable ({failed} of {nodes} nodes failed)")]
    QuorumUnreachable { failed: usize, nodes: usize },
}

/// The wallet's local queue already holds `pipeline.wallet_queue_depth_max` requests: 503
/// `lock_timeout`, before anything was written.
#[derive(Debug, thiserror::Error)]
#[error("{depth} requests already queued for this wallet in this process")]
pub struct QueueFull {
    pub depth: usize,
}

/// How the lock was obtained, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// A Redlock quorum holds the key.
    Redlock,
    /// Redis quorum unreachable; the Postgres row lock alone serialises this wallet.
    DatabaseOnly,
}

/// What the holder of a wallet's local turn knows about the turns before it.
#[derive(Debug, Default)]
struct TurnState {
    /// Redlock acquisitions in a row by this process's requests, with no other replica's
    /// request in between.
    handoffs_in_a_row: u32,
    /// The last release found another replica waiting (the contended mark).
    contended: bool,
}

struct QueueEntry {
    /// Requests holding or awaiting this wallet's turn.
    depth: usize,
    turn: Arc<tokio::sync::Mutex<TurnState>>,
    /// When the queue last emptied, if it is kept for its turn state.
    idle_since: Option<Instant>,
}

/// Most queue entries kept for their turn state alone before stale ones are dropped.
const IDLE_ENTRIES_MAX: usize = 1024;

/// Per-wallet FIFO queues of this process. An entry lives while someone holds or awaits it,
/// so the map stays as small as the set of busy wallets — except that a wallet another
/// replica is waiting for keeps its turn state for `linger` after its queue empties: this
/// replica's run of turns must still count when its next request comes a moment later
/// (coalesced requests empty the queue at every batch), or it would never yield the wallet.
struct LocalQueues {
    queues: Mutex<HashMap<LockScope, QueueEntry>>,
    depth_max: usize,
    linger: Duration,
}

impl LocalQueues {
    fn enter(self: &Arc<Self>, scope: LockScope) -> Result<QueuePlace, QueueFull> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let entry = queues.entry(scope).or_insert_with(|| QueueEntry {
            depth: 0,
            turn: Arc::default(),
            idle_since: None,
        });
        if entry.depth >= self.depth_max {
            return Err(QueueFull { depth: entry.depth });
        }
        if entry
            .idle_since
            .take()
            .is_some_and(|idle| idle.elapsed() > self.linger)
        {
            entry.turn = Arc::default();
        }
        entry.depth += 1;
        Ok(QueuePlace {
            queues: Arc::clone(self),
            scope,
            turn: Arc::clone(&entry.turn),
        })
    }

    fn leave(&self, scope: LockScope) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = queues.get_mut(&scope) else {
            return;
        };
        entry.depth = entry.depth.saturating_sub(1);
        if entry.depth > 0 {
            return;
        }
        // Nobody holds the turn now (a turn is given up before its place is left).
        let contended = entry.turn.try_lock().is_ok_and(|turn| turn.contended);
        if !contended {
            queues.remove(&scope);
            return;
        }
        entry.idle_since = Some(Instant::now());
        if queues.len() > IDLE_ENTRIES_MAX {
            let linger = self.linger;
            queues.retain(|_, entry| {
                entry.depth > 0
                    || entry
                        .idle_since
                        .is_some_and(|idle| idle.elapsed() <= linger)
            });
        }
    }
}

/// A request's place in its wallet's local queue, taken before it writes anything; leaving
/// (dropping it) makes room for another.
pub struct QueuePlace {
    queues: Arc<LocalQueues>,
    scope: LockScope,
    turn: Arc<tokio::sync::Mutex<TurnState>>,
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.queues.leave(self.scope);
    }
}

/// This request's turn in its wallet's local queue; dropping it lets the next one in.
struct LocalTurn {
    // Field order is drop order: the turn is given up before the place is left, so an idle
    // wallet's entry is removed only once nobody holds its turn.
    turn: tokio::sync::OwnedMutexGuard<TurnState>,
    place: QueuePlace,
}

#[derive(Clone)]
pub struct WalletLocks {
    local: Arc<LocalQueues>,
    nodes: RedisNodes,
    acquire: Arc<redis::Script>,
    release: Arc<redis::Script>,
    ttl: Duration,
    wait_max: Duration,
    retry_delay_min: Duration,
    retry_delay_max: Duration,
    policy: RedisUnavailablePolicy,
    handoffs_max: u32,
}

impl WalletLocks {
    pub fn new(nodes: RedisNodes, settings: &LockSettings, queue_depth_max: usize) -> Self {
        Self {
            local: Arc::new(LocalQueues {
                queues: Mutex::default(),
                depth_max: queue_depth_max,
                linger: contended_mark_ttl(ms(settings.retry_delay_ms_max)),
            }),
            nodes,
            acquire: Arc::new(redis::Script::new(ACQUIRE_SCRIPT)),
            release: Arc::new(redis::Script::new(RELEASE_SCRIPT)),
            ttl: ms(settings.ttl_ms),
            wait_max: ms(settings.wait_ms_max),
            retry_delay_min: ms(settings.retry_delay_ms_min),
            retry_delay_max: ms(settings.retry_delay_ms_max),
            policy: settings.redis_unavailable,
            handoffs_max: settings.local_handoffs_max,
        }
    }

    fn quorum(&self) -> usize {
        self.nodes.all().len() / 2 + 1
    }

    fn contended_mark_ttl(&self) -> Duration {
        contended_mark_ttl(self.retry_delay_max)
    }

    /// Takes a place in the wallet's local queue, or refuses at once when it is full.
    pub fn enqueue(&self, tenant: TenantId, wallet: WalletId) -> Result<QueuePlace, QueueFull> {
        self.local.enter((tenant, wallet))
    }

    /// Waits for the place's turn, then acquires the wallet's Redlock lock, waiting at most
    /// `lock.wait_ms_max` in all and never past `deadline`.
    pub async fn acquire(
        &self,
        place: QueuePlace,
        deadline: Deadline,
    ) -> Result<WalletLockGuard, LockError> {
        let started = Instant::now();
        let give_up_at = deadline.at().min(started + self.wait_max);
        let waiting = Arc::clone(&place.turn).lock_owned();
        let Ok(turn) = tokio::time::timeout_at(give_up_at.into(), waiting).await else {
            return Err(LockError::Timeout {
                waited_ms: started.elapsed().as_millis(),
                attempts: 0,
            });
        };
        let local = LocalTurn { turn, place };
        self.acquire_redlock(local, started, give_up_at).await
    }

    async fn acquire_redlock(
        &self,
        mut local: LocalTurn,
        started: Instant,
        give_up_at: Instant,
    ) -> Result<WalletLockGuard, LockError> {
        let (tenant, wallet) = local.place.scope;
        let key = wallet_lock_key(tenant, wallet);
        let contended = contended_key(tenant, wallet);
        let token = Uuid::new_v4().simple().to_string();
        let node_count = self.nodes.all().len();
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let mark_ms = u64::try_from(self.contended_mark_ttl().as_millis()).unwrap_or(u64::MAX);
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let attempt_started = Instant::now();
            let results = join_all(self.nodes.all().iter().map(|node| {
                let script = Arc::clone(&self.acquire);
                let (key, contended, token) = (&key, &contended, &token);
                node.call(async move |c| {
                    script
                        .key(key)
                        .key(contended)
                        .arg(token)
                        .arg(ttl_ms)
                        .arg(mark_ms)
                        .invoke_async::<i64>(c)
                        .await
                })
            }))
            .await;
            let granted = results.iter().filter(|r| matches!(r, Ok(1))).count();
            let failed: Vec<&RedisCallError> =
                results.iter().filter_map(|r| r.as_ref().err()).collect();
            let validity = self
                .ttl
                .saturating_sub(attempt_started.elapsed())
                .saturating_sub(drift(self.ttl));
            if granted >= self.quorum() && !validity.is_zero() {
                // A first-attempt win continues this replica's run; a win after waiting means
                // another replica held the wallet in between.
                local.turn.handoffs_in_a_row = if attempts == 1 {
                    local.turn.handoffs_in_a_row.saturating_add(1)
                } else {
                    1
                };
                return Ok(WalletLockGuard::locked(
                    self.clone(),
                    key,
                    contended,
                    token,
                    validity,
                    local,
                    !failed.is_empty(),
                ));
            }
            if granted > 0 {
                self.release_everywhere(&key, &contended, &token).await;
            }
            if !failed.is_empty() {
                // A node that timed out may still apply our SET later; clean up after it.
                self.release_late(&key, &contended, &token);
            }
            if failed.len() > node_count - self.quorum() {
                for error in &failed {
                    tracing::warn!(%error, "Redis lock node unavailable");
                }
                metrics::count_quorum_failure();
                return match self.policy {
                    RedisUnavailablePolicy::DatabaseOnly => {
                        tracing::warn!(%wallet, "Redis quorum unreachable; relying on the row lock alone");
                        metrics::count_database_only();
                        Ok(WalletLockGuard::database_only(local))
                    }
                    RedisUnavailablePolicy::Reject => Err(LockError::QuorumUnreachable {
                        failed: failed.len(),
                        nodes: node_count,
                    }),
                };
            }
            let delay = self.retry_delay();
            if Instant::now() + delay >= give_up_at {
                return Err(LockError::Timeout {
                    waited_ms: started.elapsed().as_millis(),
                    attempts,
                });
            }
            tokio::time::sleep(delay).await;
        }
    }

    fn retry_delay(&self) -> Duration {
        let (min, max) = (self.retry_delay_min, self.retry_delay_max);
        if max <= min {
            return min;
        }
        rand::rng().random_range(min..=max)
    }

    /// Releases our token again a little later, in the background: a node that did not answer
    /// in time may have queued the `SET` and apply it after we gave up on it, which would
    /// otherwise leave the wallet locked by nobody for a whole TTL.
    fn release_late(&self, key: &str, contended: &str, token: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let locks = self.clone();
        let (key, contended, token) = (key.to_owned(), contended.to_owned(), token.to_owned());
        runtime.spawn(async move {
            for _ in 0..LATE_RELEASE_ROUNDS {
                tokio::time::sleep(LATE_RELEASE_DELAY).await;
                locks.release_everywhere(&key, &contended, &token).await;
            }
        });
    }

    /// Compare-and-delete on every node; failures are logged, the TTL cleans up after them.
    /// Returns whether any node saw the wallet marked contended.
    async fn release_everywhere(&self, key: &str, contended: &str, token: &str) -> bool {
        let results = join_all(self.nodes.all().iter().map(|node| {
            let script = Arc::clone(&self.release);
            node.call(async move |c| {
                script
                    .key(key)
                    .key(contended)
                    .arg(token)
                    .invoke_async::<i64>(c)
                    .await
            })
        }))
        .await;
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            tracing::debug!(%error, "lock release failed on a node; its TTL will expire it");
        }
        results.iter().any(|r| matches!(r, Ok(1)))
    }

    /// After the Redis release: gives up the local turn at once, or — when another replica
    /// waits and this one has had `lock.local_handoffs_max` turns in a row — after one back-off
    /// period, so that replica's next attempt finds the wallet free.
    fn hand_off(&self, mut local: LocalTurn, contended: bool) {
        local.turn.contended = contended;
        if !contended || local.turn.handoffs_in_a_row < self.handoffs_max {
            return;
        }
        local.turn.handoffs_in_a_row = 0;
        let pause = self.retry_delay_max + Duration::from_millis(5);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep(pause).await;
                drop(local);
            });
        }
    }
}

/// A held wallet lock. Release it with [`WalletLockGuard::release`] after the commit; if the
/// guard is dropped instead (an error path, a panic, a cancelled request) it releases itself
/// in a background task. Either way the local turn is given up only after the Redis release,
/// so the next local request finds the key free.
pub struct WalletLockGuard {
    held: Option<HeldLock>,
    mode: LockMode,
    local: Option<LocalTurn>,
}

struct HeldLock {
    locks: WalletLocks,
    key: String,
    contended: String,
    token: String,
    valid_until: Instant,
    /// A node did not answer the winning attempt: it may apply our `SET` after the release
    /// below, so the release is repeated a little later (by our token: never anyone else's).
    late_set_possible: bool,
}

impl HeldLock {
    async fn release(self, local: Option<LocalTurn>) {
        let contended = self
            .locks
            .release_everywhere(&self.key, &self.contended, &self.token)
            .await;
        if self.late_set_possible {
            self.locks
                .release_late(&self.key, &self.contended, &self.token);
        }
        if let Some(local) = local {
            self.locks.hand_off(local, contended);
        }
    }
}

impl WalletLockGuard {
    fn locked(
        locks: WalletLocks,
        key: String,
        contended: String,
        token: String,
        validity: Duration,
        local: LocalTurn,
        late_set_possible: bool,
    ) -> Self {
        Self {
            held: Some(HeldLock {
                locks,
                key,
                contended,
                token,
                valid_until: Instant::now() + validity,
                late_set_possible,
            }),
            mode: LockMode::Redlock,
            local: Some(local),
        }
    }

    fn database_only(local: LocalTurn) -> Self {
        Self {
            held: None,
            mode: LockMode::DatabaseOnly,
            local: Some(local),
        }
    }

    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// Whether the Redlock validity ran out before now (only worth a log line: the row lock
    /// is what keeps the ledger right).
    pub fn expired(&self) -> bool {
        self.held
            .as_ref()
            .is_some_and(|held| Instant::now() >= held.valid_until)
    }

    pub async fn release(mut self) {
        let local = self.local.take();
        if let Some(held) = self.held.take() {
            held.release(local).await;
        }
    }
}

impl Drop for WalletLockGuard {
    fn drop(&mut self) {
        let local = self.local.take();
        if let Some(held) = self.held.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(held.release(local));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(depth_max: usize) -> Arc<LocalQueues> {
        Arc::new(LocalQueues {
            queues: Mutex::default(),
            depth_max,
            linger: Duration::from_millis(100),
        })
    }

    fn entries(queues: &LocalQueues) -> usize {
        queues.queues.lock().unwrap().len()
    }

    #[tokio::test]
    async fn local_queues_serialise_one_wallet_and_forget_idle_ones() {
        let queues = queues(8);
        let tenant = TenantId::generate();
        let (a, b) = (
            (tenant, WalletId::generate()),
            (tenant, WalletId::generate()),
        );
        let first_place = queues.enter(a).unwrap();
        let first = Arc::clone(&first_place.turn).lock_owned().await;
        // Another wallet is independent; the same wallet waits.
        let other_place = queues.enter(b).unwrap();
        let other = Arc::clone(&other_place.turn).lock_owned().await;
        let second_place = queues.enter(a).unwrap();
        let waiting = Arc::clone(&second_place.turn).lock_owned();
        let blocked = tokio::time::timeout(Duration::from_millis(20), waiting).await;
        assert!(
            blocked.is_err(),
            "a second turn on the same wallet must wait"
        );
        drop(first);
        drop(first_place);
        let second = Arc::clone(&second_place.turn).lock_owned().await;
        drop(second);
        drop(second_place);
        drop(other);
        drop(other_place);
        assert_eq!(entries(&queues), 0, "idle queues are forgotten");
    }

    #[tokio::test]
    async fn a_wallet_another_replica_waits_for_keeps_its_run_of_turns_for_a_moment() {
        let queues = queues(8);
        let wallet = (TenantId::generate(), WalletId::generate());
        let place = queues.enter(wallet).unwrap();
        let mut turn = Arc::clone(&place.turn).lock_owned().await;
        turn.handoffs_in_a_row = 3;
        turn.contended = true;
        drop(turn);
        drop(place);
        assert_eq!(entries(&queues), 1, "kept while another replica waits");
        let place = queues.enter(wallet).unwrap();
        assert_eq!(
            place.turn.lock().await.handoffs_in_a_row,
            3,
            "the run goes on"
        );
        drop(place);

        tokio::time::sleep(Duration::from_millis(150)).await;
        let place = queues.enter(wallet).unwrap();
        assert_eq!(
            place.turn.lock().await.handoffs_in_a_row,
            0,
            "after the linger, a new run"
        );
        place.turn.lock().await.contended = false;
        drop(place);
        assert_eq!(entries(&queues), 0, "uncontended: forgotten at once");
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_frees_a_place_on_leave() {
        let queues = queues(2);
        let wallet = (TenantId::generate(), WalletId::generate());
        let one = queues.enter(wallet).unwrap();
        let _two = queues.enter(wallet).unwrap();
        assert!(matches!(queues.enter(wallet), Err(QueueFull { depth: 2 })));
        drop(one);
        assert!(queues.enter(wallet).is_ok());
    }

    #[test]
    fn drift_is_one_percent_plus_two_ms() {
        assert_eq!(
            drift(Duration::from_millis(5000)),
            Duration::from_millis(52)
        );
        assert_eq!(
            drift(Duration::from_millis(10)),
            Duration::from_micros(2100)
        );
    }
}
