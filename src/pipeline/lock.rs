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
//! wait counts against the same `lock.wait_ms_max`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use rand::Rng;
use uuid::Uuid;

use crate::config::{LockSettings, RedisUnavailablePolicy, ms};
use crate::domain::{TenantId, WalletId};
use crate::redis_nodes::{RedisCallError, RedisNodes};

/// Deletes the key only if it still holds our token.
const RELEASE_SCRIPT: &str = r#"
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
else
    return 0
end
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

/// A wallet as seen by one tenant: what the lock and the local queue are keyed by.
type LockScope = (TenantId, WalletId);

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The wallet stayed locked by other requests for `lock.wait_ms_max`: 503 `lock_timeout`.
    #[error("wallet lock not acquired within {waited_ms} ms ({attempts} attempts)")]
    Timeout { waited_ms: u128, attempts: u32 },
    /// A quorum of Redis nodes is unreachable and the policy is `reject`: 503 `unavailable`.
    #[error("Redis quorum unreachable ({failed} of {nodes} nodes failed)")]
    QuorumUnreachable { failed: usize, nodes: usize },
}

/// How the lock was obtained, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    /// A Redlock quorum holds the key.
    Redlock,
    /// Redis quorum unreachable; the Postgres row lock alone serialises this wallet.
    DatabaseOnly,
}

/// Per-wallet FIFO queues of this process. An entry lives while someone holds or awaits it.
#[derive(Default)]
struct LocalQueues {
    queues: Mutex<HashMap<LockScope, Arc<tokio::sync::Mutex<()>>>>,
}

impl LocalQueues {
    fn queue(&self, wallet: LockScope) -> Arc<tokio::sync::Mutex<()>> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(queues.entry(wallet).or_default())
    }

    /// Drops the wallet's queue once nobody holds or awaits it (the map's own reference is
    /// the only one left), so the map stays as small as the set of busy wallets.
    fn forget_if_idle(&self, wallet: LockScope) {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if queues
            .get(&wallet)
            .is_some_and(|q| Arc::strong_count(q) == 1)
        {
            queues.remove(&wallet);
        }
    }
}

/// This request's turn in its wallet's local queue; leaving it lets the next one in.
struct LocalTurn {
    queues: Arc<LocalQueues>,
    wallet: LockScope,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for LocalTurn {
    fn drop(&mut self) {
        drop(self.turn.take());
        self.queues.forget_if_idle(self.wallet);
    }
}

#[derive(Clone)]
pub struct WalletLocks {
    local: Arc<LocalQueues>,
    nodes: RedisNodes,
    release: Arc<redis::Script>,
    ttl: Duration,
    wait_max: Duration,
    retry_delay_min: Duration,
    retry_delay_max: Duration,
    policy: RedisUnavailablePolicy,
}

impl WalletLocks {
    pub fn new(nodes: RedisNodes, settings: &LockSettings) -> Self {
        Self {
            local: Arc::default(),
            nodes,
            release: Arc::new(redis::Script::new(RELEASE_SCRIPT)),
            ttl: ms(settings.ttl_ms),
            wait_max: ms(settings.wait_ms_max),
            retry_delay_min: ms(settings.retry_delay_ms_min),
            retry_delay_max: ms(settings.retry_delay_ms_max),
            policy: settings.redis_unavailable,
        }
    }

    fn quorum(&self) -> usize {
        self.nodes.all().len() / 2 + 1
    }

    /// Acquires the wallet's lock, waiting at most `lock.wait_ms_max` in all.
    pub async fn acquire(
        &self,
        tenant: TenantId,
        wallet: WalletId,
    ) -> Result<WalletLockGuard, LockError> {
        let scope = (tenant, wallet);
        let started = Instant::now();
        let deadline = started + self.wait_max;
        // Built before waiting, so that giving up also tidies the queue map (via Drop).
        let mut local = LocalTurn {
            queues: Arc::clone(&self.local),
            wallet: scope,
            turn: None,
        };
        let waiting = self.local.queue(scope).lock_owned();
        let Ok(turn) = tokio::time::timeout(self.wait_max, waiting).await else {
            return Err(LockError::Timeout {
                waited_ms: started.elapsed().as_millis(),
                attempts: 0,
            });
        };
        local.turn = Some(turn);
        self.acquire_redlock(scope, local, started, deadline).await
    }

    async fn acquire_redlock(
        &self,
        (tenant, wallet): LockScope,
        local: LocalTurn,
        started: Instant,
        deadline: Instant,
    ) -> Result<WalletLockGuard, LockError> {
        let key = wallet_lock_key(tenant, wallet);
        let token = Uuid::new_v4().simple().to_string();
        let node_count = self.nodes.all().len();
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let attempt_started = Instant::now();
            let results = join_all(self.nodes.all().iter().map(|node| {
                let (key, token) = (&key, &token);
                let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
                node.call(async move |c| {
                    redis::cmd("SET")
                        .arg(key)
                        .arg(token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async::<Option<String>>(c)
                        .await
                })
            }))
            .await;
            let granted = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
            let failed: Vec<&RedisCallError> =
                results.iter().filter_map(|r| r.as_ref().err()).collect();
            let validity = self
                .ttl
                .saturating_sub(attempt_started.elapsed())
                .saturating_sub(drift(self.ttl));
            if granted >= self.quorum() && !validity.is_zero() {
                return Ok(WalletLockGuard::locked(
                    self.clone(),
                    key,
                    token,
                    validity,
                    local,
                ));
            }
            if granted > 0 {
                self.release_everywhere(&key, &token).await;
            }
            if !failed.is_empty() {
                // A node that timed out may still apply our SET later; clean up after it.
                self.release_late(&key, &token);
            }
            if failed.len() > node_count - self.quorum() {
                for error in &failed {
                    tracing::warn!(%error, "Redis lock node unavailable");
                }
                return match self.policy {
                    RedisUnavailablePolicy::DatabaseOnly => {
                        tracing::warn!(%wallet, "Redis quorum unreachable; relying on the row lock alone");
                        Ok(WalletLockGuard::database_only(local))
                    }
                    RedisUnavailablePolicy::Reject => Err(LockError::QuorumUnreachable {
                        failed: failed.len(),
                        nodes: node_count,
                    }),
                };
            }
            let delay = self.retry_delay();
            if Instant::now() + delay >= deadline {
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
    fn release_late(&self, key: &str, token: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (locks, key, token) = (self.clone(), key.to_owned(), token.to_owned());
        runtime.spawn(async move {
            for _ in 0..LATE_RELEASE_ROUNDS {
                tokio::time::sleep(LATE_RELEASE_DELAY).await;
                locks.release_everywhere(&key, &token).await;
            }
        });
    }

    /// Compare-and-delete on every node; failures are logged, the TTL cleans up after them.
    async fn release_everywhere(&self, key: &str, token: &str) {
        let results = join_all(self.nodes.all().iter().map(|node| {
            let script = Arc::clone(&self.release);
            node.call(async move |c| script.key(key).arg(token).invoke_async::<i64>(c).await)
        }))
        .await;
        for error in results.iter().filter_map(|r| r.as_ref().err()) {
            tracing::debug!(%error, "lock release failed on a node; its TTL will expire it");
        }
    }
}

/// A held wallet lock. Release it with [`WalletLockGuard::release`] after the commit; if the
/// guard is dropped instead (an error path, a panic, a cancelled request) it releases itself
/// in a background task.
pub struct WalletLockGuard {
    held: Option<HeldLock>,
    mode: LockMode,
    /// Dropped after the Redis release, so the next local request finds the key free.
    _local: LocalTurn,
}

struct HeldLock {
    locks: WalletLocks,
    key: String,
    token: String,
    valid_until: Instant,
}

impl WalletLockGuard {
    fn locked(
        locks: WalletLocks,
        key: String,
        token: String,
        validity: Duration,
        local: LocalTurn,
    ) -> Self {
        Self {
            held: Some(HeldLock {
                locks,
                key,
                token,
                valid_until: Instant::now() + validity,
            }),
            mode: LockMode::Redlock,
            _local: local,
        }
    }

    fn database_only(local: LocalTurn) -> Self {
        Self {
            held: None,
            mode: LockMode::DatabaseOnly,
            _local: local,
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
        if let Some(held) = self.held.take() {
            held.locks.release_everywhere(&held.key, &held.token).await;
        }
    }
}

impl Drop for WalletLockGuard {
    fn drop(&mut self) {
        if let Some(held) = self.held.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                held.locks.release_everywhere(&held.key, &held.token).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(
        queues: &Arc<LocalQueues>,
        wallet: LockScope,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> LocalTurn {
        LocalTurn {
            queues: Arc::clone(queues),
            wallet,
            turn: Some(guard),
        }
    }

    #[tokio::test]
    async fn local_queues_serialise_one_wallet_and_forget_idle_ones() {
        let queues = Arc::new(LocalQueues::default());
        let tenant = TenantId::generate();
        let (a, b) = (
            (tenant, WalletId::generate()),
            (tenant, WalletId::generate()),
        );
        let first = turn(&queues, a, queues.queue(a).lock_owned().await);
        // Another wallet is independent; the same wallet waits.
        let other = turn(&queues, b, queues.queue(b).lock_owned().await);
        let waiting = queues.queue(a).lock_owned();
        let blocked = tokio::time::timeout(Duration::from_millis(20), waiting).await;
        assert!(
            blocked.is_err(),
            "a second turn on the same wallet must wait"
        );
        drop(first);
        let second = turn(&queues, a, queues.queue(a).lock_owned().await);
        drop(second);
        drop(other);
        assert!(
            queues.queues.lock().unwrap().is_empty(),
            "idle queues are forgotten"
        );
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
