//! The balance read cache (API.md Part 3): `GET /v1/wallets/{id}` answered from the first
//! Redis node when it can be, never with a balance older than a commit that finished before
//! the read began.
//!
//! An entry is a hash `{e: epoch, v: version, s: state, b: body}`; `state` is `r` (ready: `b`
//! is the wallet as GET renders it) or `p` (pending: a transaction that will make `version` is
//! about to commit). Every write is one Lua compare-and-set: it succeeds only if its version is
//! newer than the entry's, or equal to a pending entry's. So:
//!
//! - **A slow reader cannot put an old balance back.** A reader that missed, read the row, and
//!   writes after a debit committed and stored a newer version is refused.
//! - **Nothing is served between a commit and the cache update.** A writer marks the entry
//!   pending (with the version it will commit) *before* its COMMIT and stores the new wallet
//!   after; readers treat pending as a miss and read Postgres, which has the commit by then or
//!   had not finished it when they read. A writer that rolls back leaves the mark, which costs
//!   misses until the next write or the entry's TTL, never a wrong answer.
//! - **A write that could not mark.** If the mark and the store after the commit both fail
//!   (the node unreachable from this replica), an entry in Redis may be older than the commit.
//!   This process then stops trusting the cache (reads bypass it) until it has bumped the
//!   epoch (`{namespace}:epoch`), which invalidates every entry at once; a reader's fill names
//!   the epoch it saw before it read Postgres, so a fill that straddles a bump is refused too.
//!   Until this replica reaches Redis again, a replica that still reaches it may serve such an
//!   entry: the one window left, bounded by the entry TTL.
//!
//! With Redis down, reads go to Postgres (`error` in the metrics), and writes proceed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::CacheSettings;
use crate::domain::{TenantId, WalletId};
use crate::metrics::Metrics;
use crate::redis_nodes::RedisNodes;

/// Reads an entry: the current epoch, and the body if the entry is ready in that epoch.
const LOOKUP: &str = r"
local e = redis.call('GET', KEYS[2]) or '0'
local f = redis.call('HMGET', KEYS[1], 'e', 's', 'b')
if f[1] == e and f[2] == 'r' then return {e, f[3]} end
return {e, false}
";

/// The compare-and-set. ARGV: expected epoch ('' = the current one), version, state, body,
/// TTL in ms. Returns the epoch written under, or nil when refused.
const WRITE: &str = r"
local e = redis.call('GET', KEYS[2]) or '0'
if ARGV[1] ~= '' and ARGV[1] ~= e then return false end
local f = redis.call('HMGET', KEYS[1], 'e', 'v', 's')
local v = tonumber(ARGV[2])
if f[1] == e then
  local current = tonumber(f[2])
  if v < current or (v == current and f[3] ~= 'p') then return false end
end
redis.call('HSET', KEYS[1], 'e', e, 'v', ARGV[2], 's', ARGV[3], 'b', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return e
";

/// How often a process that owes an epoch bump tries it.
const EPOCH_BUMP_RETRY: Duration = Duration::from_millis(100);

/// The epoch an entry was read or written under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch(String);

/// What a read found.
#[derive(Debug)]
pub enum Lookup {
    /// The wallet's GET body, current as of the read.
    Hit(Vec<u8>),
    /// Read Postgres, then offer what it said under this epoch.
    Miss(Epoch),
    /// Read Postgres and do not fill (cache off, distrusted, or Redis failing).
    Bypass,
}

/// What a writer's mark before its commit achieved.
#[derive(Debug)]
pub enum Mark {
    /// The cache is off: nothing to do after the commit.
    Off,
    /// Marked pending under this epoch.
    Pending(Epoch),
    /// The mark failed: after the commit, store, and if that fails too, distrust the cache.
    Failed,
}

#[derive(Clone)]
pub struct BalanceCache {
    nodes: RedisNodes,
    settings: CacheSettings,
    metrics: Arc<Metrics>,
    /// Non-zero while a committed change may have left an older entry in Redis: raised by
    /// each such change, cleared by an epoch bump that started after the last raise.
    epoch_bump_owed: Arc<AtomicU64>,
}

impl BalanceCache {
    pub fn new(nodes: RedisNodes, settings: CacheSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            nodes,
            settings,
            metrics,
            epoch_bump_owed: Arc::default(),
        }
    }

    fn entry_key(&self, tenant: TenantId, wallet: WalletId) -> String {
        format!("{}:{}:{}", self.settings.namespace, tenant, wallet)
    }

    fn epoch_key(&self) -> String {
        format!("{}:epoch", self.settings.namespace)
    }

    fn trusted(&self) -> bool {
        self.settings.enabled && self.epoch_bump_owed.load(Ordering::Acquire) == 0
    }

    /// A reader's first step.
    pub async fn lookup(&self, tenant: TenantId, wallet: WalletId) -> Lookup {
        if !self.trusted() {
            self.metrics.record_cache_read("bypass");
            return Lookup::Bypass;
        }
        let script = redis::Script::new(LOOKUP);
        let mut invocation = script.key(self.entry_key(tenant, wallet));
        invocation.key(self.epoch_key());
        let found: Result<(String, Option<Vec<u8>>), _> = self
            .nodes
            .primary()
            .call(async |c| invocation.invoke_async(c).await)
            .await;
        match found {
            Ok((_, Some(body))) => {
                self.metrics.record_cache_read("hit");
                Lookup::Hit(body)
            }
            Ok((epoch, None)) => {
                self.metrics.record_cache_read("miss");
                Lookup::Miss(Epoch(epoch))
            }
            Err(error) => {
                tracing::debug!(%error, "balance cache unavailable; reading Postgres");
                self.metrics.record_cache_read("error");
                Lookup::Bypass
            }
        }
    }

    /// A reader's last step: what Postgres said, offered under the epoch seen before reading
    /// it. Refused (harmlessly) if anything newer is there or the epoch moved.
    pub async fn offer(
        &self,
        tenant: TenantId,
        wallet: WalletId,
        seen: &Epoch,
        version: i64,
        body: &[u8],
    ) {
        if !self.trusted() {
            return;
        }
        let _ = self
            .write(tenant, wallet, Some(seen), version, "r", body)
            .await;
    }

    /// A writer, before its COMMIT: the entry is pending until the new wallet is stored.
    pub async fn mark_pending(&self, tenant: TenantId, wallet: WalletId, version: i64) -> Mark {
        if !self.settings.enabled {
            return Mark::Off;
        }
        match self.write(tenant, wallet, None, version, "p", b"").await {
            Ok(Some(epoch)) => Mark::Pending(epoch),
            // Refused: an entry at least as new is there, which cannot be while we hold the
            // row lock; treat it as a failed mark, to be safe.
            Ok(None) | Err(()) => Mark::Failed,
        }
    }

    /// A writer, after its commit: the wallet as it committed.
    pub async fn store_committed(
        &self,
        tenant: TenantId,
        wallet: WalletId,
        mark: Mark,
        version: i64,
        body: &[u8],
    ) {
        let stored = match &mark {
            Mark::Off => return,
            Mark::Pending(epoch) => self.write(tenant, wallet, Some(epoch), version, "r", body),
            Mark::Failed => self.write(tenant, wallet, None, version, "r", body),
        }
        .await;
        if matches!(mark, Mark::Failed) && stored.is_err() {
            // Neither marked nor stored: an older entry may be readable. Distrust the cache
            // until every entry is invalidated (see the module doc).
            tracing::warn!(%wallet, version, "balance cache neither marked nor updated; distrusting it until the epoch is bumped");
            self.epoch_bump_owed.fetch_add(1, Ordering::AcqRel);
        }
    }

    async fn write(
        &self,
        tenant: TenantId,
        wallet: WalletId,
        expected: Option<&Epoch>,
        version: i64,
        state: &str,
        body: &[u8],
    ) -> Result<Option<Epoch>, ()> {
        let script = redis::Script::new(WRITE);
        let mut invocation = script.key(self.entry_key(tenant, wallet));
        invocation
            .key(self.epoch_key())
            .arg(expected.map_or("", |epoch| epoch.0.as_str()))
            .arg(version)
            .arg(state)
            .arg(body)
            .arg(self.settings.ttl_ms);
        let written: Result<Option<String>, _> = self
            .nodes
            .primary()
            .call(async |c| invocation.invoke_async(c).await)
            .await;
        match written {
            Ok(Some(epoch)) => {
                self.metrics
                    .record_cache_write(if state == "p" { "pending" } else { "stored" });
                Ok(Some(Epoch(epoch)))
            }
            Ok(None) => {
                self.metrics.record_cache_write("refused");
                Ok(None)
            }
            Err(error) => {
                tracing::debug!(%error, %wallet, "balance cache write failed");
                self.metrics.record_cache_write("error");
                Err(())
            }
        }
    }

    /// Bumps the epoch whenever this process owes it, until the process ends.
    pub async fn run_epoch_bumps_forever(self) {
        let mut ticks = tokio::time::interval(EPOCH_BUMP_RETRY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let owed = self.epoch_bump_owed.load(Ordering::Acquire);
            if owed == 0 {
                continue;
            }
            let key = self.epoch_key();
            let bumped = self
                .nodes
                .primary()
                .call(async |c| redis::cmd("INCR").arg(&key).query_async::<i64>(c).await)
                .await;
            match bumped {
                Ok(epoch) => {
                    // A change that raised the debt during the bump needs another bump.
                    if self
                        .epoch_bump_owed
                        .compare_exchange(owed, 0, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        tracing::info!(epoch, "balance cache epoch bumped; trusting it again");
                    }
                }
                Err(error) => tracing::debug!(%error, "balance cache epoch bump failed; retrying"),
            }
        }
    }
}
