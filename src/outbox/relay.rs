//! The relay: publishes committed outbox events to the Redis stream, at least once, in
//! per-wallet version order, with one publisher per partition of wallets at a time.
//!
//! - **Who publishes what.** Wallets fall into `events.partitions` partitions. A relay
//!   publishes a partition only while it holds that partition's lease, a key on the first
//!   Redis node. Live relays register in a sorted set; each takes a fair share of the
//!   partitions (ceil(partitions / relays)) and gives back what is over it, so two replicas
//!   split the work and a replica that dies hands its partitions over when its leases lapse.
//! - **Fencing.** Every publish is one Lua script that first checks, atomically with the
//!   XADDs, that this relay still holds the lease of every partition in the batch. A relay that
//!   paused past its lease cannot publish after the next holder did, so it cannot reorder a
//!   wallet's events; at worst the next holder republishes what was published but not yet
//!   marked, with the same `event_id`s (consumers drop duplicates by `event_id`).
//! - **When.** A commit in this process wakes the relay at once (an in-process signal, not
//!   LISTEN/NOTIFY, which takes a global lock at every commit); events committed by other
//!   replicas are found by polling every `events.poll_interval_ms`.
//! - **After.** Published rows are marked, and deleted after `events.retention_hours`; the
//!   stream is trimmed to about `events.stream_maxlen` entries.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::Notify;

use super::store::{self, PublishedKey, UnpublishedEvent, partition_of};
use crate::config::{EventSettings, ms};
use crate::db::PgPool;
use crate::metrics::Metrics;
use crate::redis_nodes::RedisNodes;

/// Renews the relay's membership and leases, gives back partitions over its fair share, takes
/// free ones up to it; returns the partitions it holds. Uses the server's clock, so replicas'
/// clocks do not matter. (Lease keys are built in the script: walletd runs on standalone Redis
/// nodes, not Redis Cluster.)
const MAINTAIN_LEASES: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local id, lease_ms, partitions, prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('ZADD', KEYS[1], now + lease_ms, id)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('PEXPIRE', KEYS[1], lease_ms * 2)
local share = math.ceil(partitions / redis.call('ZCARD', KEYS[1]))
local held = {}
for p = 0, partitions - 1 do
  if redis.call('GET', prefix .. p) == id then table.insert(held, p) end
end
while #held > share do
  redis.call('DEL', prefix .. table.remove(held))
end
for _, p in ipairs(held) do redis.call('PEXPIRE', prefix .. p, lease_ms) end
for p = 0, partitions - 1 do
  if #held >= share then break end
  if redis.call('SET', prefix .. p, id, 'NX', 'PX', lease_ms) then table.insert(held, p) end
end
return held
";

/// Publishes a batch if, and only if, this relay holds every lease named in KEYS[2..].
/// Returns the number of entries added, or -1 when a lease was lost (nothing added).
const PUBLISH: &str = r"
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) ~= ARGV[1] then return -1 end
end
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[i])
end
return #ARGV - 2
";

/// Backlog counts stop here: the gauge says "at least this many" beyond it.
const BACKLOG_COUNT_CAP: i64 = 1_000_000;

/// How often the backlog gauge is sampled and old rows are pruned, at most.
const BACKLOG_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

pub struct Relay {
    db: PgPool,
    redis: RedisNodes,
    settings: EventSettings,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
    /// This relay's identity in leases and membership.
    id: String,
    held: Vec<u16>,
}

impl Relay {
    pub fn new(
        db: PgPool,
        redis: RedisNodes,
        settings: EventSettings,
        wake: Arc<Notify>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            db,
            redis,
            settings,
            wake,
            metrics,
            id: uuid::Uuid::now_v7().to_string(),
            held: Vec::new(),
        }
    }

    fn members_key(&self) -> String {
        format!("{}:relays", self.settings.stream)
    }

    fn lease_prefix(&self) -> String {
        format!("{}:lease:", self.settings.stream)
    }

    fn lease_key(&self, partition: u16) -> String {
        format!("{}{partition}", self.lease_prefix())
    }

    /// Publishes until the process ends. Every failure (Redis or Postgres down) is logged and
    /// retried at the next turn; nothing is lost, since unpublished rows stay unpublished.
    pub async fn run_forever(mut self) {
        let poll = ms(self.settings.poll_interval_ms);
        let renew_every = ms(self.settings.lease_ms / 5);
        let prune_every = Duration::from_secs(self.settings.prune_interval_s);
        let mut renewed_at: Option<Instant> = None;
        let mut sampled_at: Option<Instant> = None;
        let mut pruned_at: Option<Instant> = None;
        loop {
            if renewed_at.is_none_or(|at| at.elapsed() >= renew_every) {
                self.maintain_leases().await;
                renewed_at = Some(Instant::now());
            }
            if sampled_at.is_none_or(|at| at.elapsed() >= BACKLOG_SAMPLE_INTERVAL) {
                self.sample_backlog().await;
                sampled_at = Some(Instant::now());
            }
            if pruned_at.is_none_or(|at| at.elapsed() >= prune_every) {
                self.prune().await;
                pruned_at = Some(Instant::now());
            }
            let more = match self.publish_batch().await {
                Ok(full) => full,
                Err(error) => {
                    tracing::warn!(%error, "outbox relay: publishing failed; will retry");
                    false
                }
            };
            if !more {
                // A commit in this process wakes us at once; otherwise poll.
                let _ = tokio::time::timeout(poll, self.wake.notified()).await;
            }
        }
    }

    /// One batch: read, publish (fenced by the leases), mark. Returns whether the batch was
    /// full (more may be waiting).
    async fn publish_batch(&mut self) -> anyhow::Result<bool> {
        if self.held.is_empty() {
            return Ok(false);
        }
        let mut conn = self.db.get().await?;
        let batch = store::unpublished(
            &mut conn,
            self.settings.partitions,
            &self.held,
            self.settings.batch_max,
        )
        .await?;
        if batch.is_empty() {
            return Ok(false);
        }
        let full = batch.len() == usize::try_from(self.settings.batch_max).unwrap_or(usize::MAX);
        for chunk in chunks_by_bytes(&batch, self.settings.publish_bytes_max) {
            if !self.publish(chunk).await? {
                // A lease was lost: the new holder publishes these. Learn who holds what.
                self.maintain_leases().await;
                return Ok(false);
            }
            let published_at = Utc::now();
            let keys: Vec<PublishedKey> = chunk
                .iter()
                .map(|event| PublishedKey {
                    wallet_id: event.wallet_id,
                    wallet_version: event.wallet_version,
                })
                .collect();
            store::mark_published(&mut conn, &keys, published_at).await?;
            for event in chunk {
                let lag = (published_at - event.occurred_at)
                    .to_std()
                    .unwrap_or(Duration::ZERO);
                self.metrics.record_event_published(lag);
            }
        }
        Ok(full)
    }

    /// XADDs one chunk if this relay still holds the leases of its partitions.
    async fn publish(&self, chunk: &[UnpublishedEvent]) -> anyhow::Result<bool> {
        let mut partitions: Vec<u16> = chunk
            .iter()
            .map(|event| partition_of(event.wallet_id, self.settings.partitions))
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        let script = redis::Script::new(PUBLISH);
        let mut invocation = script.key(&self.settings.stream);
        for partition in &partitions {
            invocation.key(self.lease_key(*partition));
        }
        invocation.arg(&self.id).arg(self.settings.stream_maxlen);
        for event in chunk {
            invocation.arg(&event.payload);
        }
        let added: i64 = self
            .redis
            .primary()
            .call_within(ms(self.settings.publish_timeout_ms), async |c| {
                invocation.invoke_async(c).await
            })
            .await?;
        Ok(added >= 0)
    }

    async fn maintain_leases(&mut self) {
        let script = redis::Script::new(MAINTAIN_LEASES);
        let mut invocation = script.key(self.members_key());
        invocation
            .arg(&self.id)
            .arg(self.settings.lease_ms)
            .arg(self.settings.partitions)
            .arg(self.lease_prefix());
        let held: Result<Vec<u16>, _> = self
            .redis
            .primary()
            .call(async |c| invocation.invoke_async(c).await)
            .await;
        match held {
            Ok(mut held) => {
                held.sort_unstable();
                if held != self.held {
                    tracing::info!(relay = %self.id, partitions = ?held, "outbox relay leases changed");
                }
                self.held = held;
            }
            Err(error) => {
                // Without an answer we cannot know our leases: publish nothing until we do.
                // (A publish would be refused anyway once a lease lapsed.)
                tracing::warn!(%error, "outbox relay: could not renew leases");
                self.held.clear();
            }
        }
        self.metrics
            .set_relay_partitions(i64::try_from(self.held.len()).unwrap_or(i64::MAX));
    }

    async fn sample_backlog(&self) {
        let counted = async {
            let mut conn = self.db.get().await?;
            anyhow::Ok(store::backlog(&mut conn, BACKLOG_COUNT_CAP).await?)
        }
        .await;
        match counted {
            Ok(waiting) => self.metrics.set_outbox_backlog(waiting),
            Err(error) => tracing::debug!(%error, "outbox backlog not sampled"),
        }
    }

    /// Deletes published rows past retention, in bounded batches (one run at most
    /// [`PRUNE_BATCHES_PER_RUN_MAX`] of them; the rest waits for the next run).
    async fn prune(&self) {
        if self.held.is_empty() {
            return;
        }
        let before = Utc::now()
            - chrono::Duration::hours(
                i64::try_from(self.settings.retention_hours).unwrap_or(i64::MAX / 3600),
            );
        let pruned = async {
            let mut conn = self.db.get().await?;
            let mut total = 0;
            for _ in 0..PRUNE_BATCHES_PER_RUN_MAX {
                let deleted =
                    store::prune(&mut conn, before, self.settings.prune_batch_size).await?;
                total += deleted;
                if deleted < usize::try_from(self.settings.prune_batch_size).unwrap_or(usize::MAX) {
                    break;
                }
            }
            anyhow::Ok(total)
        }
        .await;
        match pruned {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "published outbox events pruned"),
            Err(error) => tracing::warn!(%error, "outbox prune failed; will retry"),
        }
    }
}

/// Batches of prune_batch_size rows one prune run deletes at most.
const PRUNE_BATCHES_PER_RUN_MAX: u32 = 100;

/// Splits a batch into consecutive chunks of at most `bytes_max` payload bytes (at least one
/// event each), keeping the order.
fn chunks_by_bytes(batch: &[UnpublishedEvent], bytes_max: usize) -> Vec<&[UnpublishedEvent]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, event) in batch.iter().enumerate() {
        if i > start && bytes + event.payload.len() > bytes_max {
            chunks.push(&batch[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += event.payload.len();
    }
    if start < batch.len() {
        chunks.push(&batch[start..]);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(bytes: usize) -> UnpublishedEvent {
        UnpublishedEvent {
            wallet_id: uuid::Uuid::now_v7(),
            wallet_version: 1,
            payload: "x".repeat(bytes),
            occurred_at: Utc::now(),
        }
    }

    #[test]
    fn chunks_keep_order_and_respect_the_byte_bound() {
        let batch: Vec<_> = [40, 40, 40, 100, 10].into_iter().map(event).collect();
        let chunks = chunks_by_bytes(&batch, 100);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        // 40+40 fits, +40 does not; 40 alone, then 100 alone (an event over the bound still
        // goes, on its own), then 10.
        assert_eq!(sizes, vec![2, 1, 1, 1]);
        assert_eq!(chunks.concat().len(), batch.len());
        assert!(chunks_by_bytes(&[], 100).is_empty());
    }
}
