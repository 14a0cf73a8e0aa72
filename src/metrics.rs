//! Prometheus metrics, served as text at `/metrics`. Every family, its labels and what it
//! means are listed in `docs/metrics.md`; keep the two in step.
//!
//! Labels are bounded: every label value comes from a fixed set in this file (route patterns,
//! [`METHOD_LABELS`], [`Operation`], [`DECISION_CODES`], layer and reason names) or from the
//! configuration (Redis node indexes); nothing a client sends becomes a label value.
//!
//! Most families belong to one [`Metrics`] (one per running service). A few are counted where
//! no `Metrics` is at hand (the pool checkout, a transaction retry, the lock's Redis quorum, a
//! Redis command, admission): those are process-wide ([`Shared`]) and every `Metrics` exports
//! them. A process runs one service, so for a scrape the difference does not show.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    entries: IntCounterVec,
    replays: IntCounterVec,
    lock_wait: HistogramVec,
    layers: HistogramVec,
    batch_size: prometheus::Histogram,
    pool: IntGaugeVec,
    unknown_keys: IntCounterVec,
    unknown_key_entries: IntGauge,
    shed: IntCounterVec,
    purged: IntCounter,
    events_published: IntCounter,
    publish_lag: prometheus::Histogram,
    outbox_backlog: IntGauge,
    relay_partitions: IntGauge,
    cache_reads: IntCounterVec,
    cache_writes: IntCounterVec,
    decisions: IntCounterVec,
    redis_node_up: IntGaugeVec,
    redis_node_info: IntGaugeVec,
    redis_quorum: IntGauge,
    /// `process_*` (resident memory, CPU, fds, start time), without the `walletd_` prefix.
    process: Registry,
    /// Every family registered, sorted (see [`Metrics::family_names`]).
    family_names: Vec<String>,
}

/// A registry being filled, remembering the names of the families added to it.
struct Families {
    registry: Registry,
    /// What the registry prefixes to every name.
    prefix: &'static str,
    names: Vec<String>,
}

impl Families {
    fn add<C: Collector + 'static>(&mut self, collector: C) -> prometheus::Result<()> {
        let prefix = self.prefix;
        self.names.extend(
            collector
                .desc()
                .iter()
                .map(|desc| format!("{prefix}{}", desc.fq_name)),
        );
        self.registry.register(Box::new(collector))
    }
}

/// HTTP methods that get their own label value; any other method a client invents is `OTHER`,
/// so clients cannot add series.
const METHOD_LABELS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

fn method_label(method: &str) -> &'static str {
    METHOD_LABELS
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("OTHER")
}

/// The mutating operations: the `operation` label of `walletd_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    CreateWallet,
    Debit,
    Credit,
    PlaceHold,
    Capture,
    Void,
    Reverse,
}

impl Operation {
    pub const ALL: [Operation; 7] = [
        Operation::CreateWallet,
        Operation::Debit,
        Operation::Credit,
        Operation::PlaceHold,
        Operation::Capture,
        Operation::Void,
        Operation::Reverse,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::CreateWallet => "create_wallet",
            Operation::Debit => "debit",
            Operation::Credit => "credit",
            Operation::PlaceHold => "place_hold",
            Operation::Capture => "capture",
            Operation::Void => "void",
            Operation::Reverse => "reverse",
        }
    }
}

/// What a mutating request came to: the `code` label of `walletd_decisions_total`. `applied`
/// (a fresh 2xx), `replayed` (a stored answer, whatever it was), `in_progress` (409: the same
/// key is executing), otherwise the problem code the client got (API.md, Error codes, and the
/// README's additions). Anything else is `other`, so the set stays fixed.
pub const DECISION_CODES: [&str; 31] = [
    "applied",
    "replayed",
    "in_progress",
    "lock_timeout",
    "unavailable",
    "rate_limited",
    // Business declines, stored and replayed.
    "insufficient_funds",
    "currency_mismatch",
    "wallet_not_found",
    "wallet_closed",
    "hold_not_found",
    "hold_expired",
    "hold_not_active",
    "capture_exceeds_hold",
    "transaction_not_found",
    "reversal_exceeds_original",
    "not_reversible",
    // Refused before anything executed (not stored).
    "validation_failed",
    "idempotency_key_missing",
    "idempotency_key_invalid",
    "idempotency_key_reused",
    "idempotency_key_expired",
    "unauthorized",
    "forbidden",
    "payload_too_large",
    "request_timeout",
    "unsupported_media_type",
    "method_not_allowed",
    "not_found",
    "internal_error",
    "other",
];

/// The [`DECISION_CODES`] entry for a problem code (`idempotency_key_in_progress` is
/// `in_progress`); `other` for anything unknown.
pub fn decision_label(code: &str) -> &'static str {
    let code = match code {
        "idempotency_key_in_progress" => "in_progress",
        other => other,
    };
    DECISION_CODES
        .into_iter()
        .find(|known| *known == code)
        .unwrap_or("other")
}

/// Decision codes whose series exist from the start for every operation, so that a rate over
/// them (and an alert on it) has a series before the first occurrence.
const DECISION_CODES_PRESET: [&str; 7] = [
    "applied",
    "replayed",
    "in_progress",
    "lock_timeout",
    "unavailable",
    "rate_limited",
    "internal_error",
];

/// `walletd_build_info` labels.
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit, when the build sets `WALLETD_GIT_SHA` (e.g. `WALLETD_GIT_SHA=$(git rev-parse
/// HEAD) cargo build`); `unknown` otherwise.
const GIT_SHA: &str = match option_env!("WALLETD_GIT_SHA") {
    Some(sha) => sha,
    None => "unknown",
};
const PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

/// Process-wide instruments, for code that has no [`Metrics`] at hand. Made by the first
/// [`Metrics::new`] and registered with every one; before that, counting is a no-op.
struct Shared {
    pool_wait: HistogramVec,
    transaction_retries: IntCounter,
    quorum_failures: IntCounter,
    database_only: IntCounter,
    redis_errors: IntCounterVec,
    rate_limited: IntCounter,
    admitted_unchecked: IntCounter,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

impl Shared {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            pool_wait: HistogramVec::new(
                HistogramOpts::new(
                    "db_pool_wait_seconds",
                    "Time the pipeline waited for a pooled Postgres connection, by result: ok, \
                     timeout (database.pool_wait_timeout_ms or the deadline), error",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5,
                ]),
                &["result"],
            )?,
            transaction_retries: IntCounter::new(
                "transaction_retries_total",
                "Pipeline transactions run again after a serialization failure or deadlock",
            )?,
            quorum_failures: IntCounter::new(
                "redlock_quorum_failures_total",
                "Lock attempts that found too many Redis nodes unreachable for a quorum",
            )?,
            database_only: IntCounter::new(
                "lock_database_only_total",
                "Requests that went on under the Postgres row lock alone (Redis quorum \
                 unreachable, lock.redis_unavailable = database_only)",
            )?,
            redis_errors: IntCounterVec::new(
                Opts::new(
                    "redis_command_errors_total",
                    "Redis commands without an answer, by node index and kind: connect, \
                     timeout, command (the node answered with an error), backoff (not tried: \
                     a connect was started less than 250 ms ago)",
                ),
                &["node", "kind"],
            )?,
            rate_limited: IntCounter::new(
                "rate_limited_total",
                "Requests refused with 429 rate_limited (per-key limit, any route)",
            )?,
            admitted_unchecked: IntCounter::new(
                "admission_unchecked_total",
                "Requests admitted without the revocation and rate-limit check because Redis \
                 did not answer (fail open)",
            )?,
        })
    }

    fn get() -> Option<&'static Shared> {
        SHARED.get()
    }

    fn register(&self, registry: &mut Families) -> prometheus::Result<()> {
        registry.add(self.pool_wait.clone())?;
        registry.add(self.transaction_retries.clone())?;
        registry.add(self.quorum_failures.clone())?;
        registry.add(self.database_only.clone())?;
        registry.add(self.redis_errors.clone())?;
        registry.add(self.rate_limited.clone())?;
        registry.add(self.admitted_unchecked.clone())?;
        Ok(())
    }
}

/// One pipeline checkout from the Postgres pool; `result`: `ok`, `timeout` or `error`.
pub fn observe_pool_wait(waited: Duration, result: &'static str) {
    if let Some(shared) = Shared::get() {
        shared
            .pool_wait
            .with_label_values(&[result])
            .observe(waited.as_secs_f64());
    }
}

/// A pipeline transaction about to run again (serialization failure or deadlock).
pub fn count_transaction_retry() {
    if let Some(shared) = Shared::get() {
        shared.transaction_retries.inc();
    }
}

/// A lock attempt that could not reach a quorum of Redis nodes.
pub fn count_quorum_failure() {
    if let Some(shared) = Shared::get() {
        shared.quorum_failures.inc();
    }
}

/// A request going on under the row lock alone (no Redis quorum).
pub fn count_database_only() {
    if let Some(shared) = Shared::get() {
        shared.database_only.inc();
    }
}

/// A Redis command to node `node` (its index in `redis.urls`) without an answer; `kind`:
/// `connect`, `timeout`, `command` or `backoff`.
pub fn count_redis_error(node: usize, kind: &'static str) {
    if let Some(shared) = Shared::get() {
        shared
            .redis_errors
            .with_label_values(&[&node.to_string(), kind])
            .inc();
    }
}

/// A request refused with 429.
pub fn count_rate_limited() {
    if let Some(shared) = Shared::get() {
        shared.rate_limited.inc();
    }
}

/// A request admitted without its Redis check (fail open).
pub fn count_admitted_unchecked() {
    if let Some(shared) = Shared::get() {
        shared.admitted_unchecked.inc();
    }
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let mut families = Families {
            registry: Registry::new_custom(Some("walletd".into()), None)?,
            prefix: "walletd_",
            names: Vec::new(),
        };
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route pattern, method and status",
            ),
            &["method", "route", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency").buckets(
                vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            ),
            &["method", "route"],
        )?;
        let entries = IntCounterVec::new(
            Opts::new(
                "entries_total",
                "Ledger entries executed (not replays), by type (debit, credit, capture, \
                 reverse) and HTTP status; see decisions_total for outcome codes",
            ),
            &["type", "status"],
        )?;
        let replays = IntCounterVec::new(
            Opts::new(
                "idempotent_replays_total",
                "Requests answered from the idempotency store",
            ),
            &["operation"],
        )?;
        let lock_wait = HistogramVec::new(
            HistogramOpts::new("lock_wait_seconds", "Time spent acquiring the wallet lock")
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ]),
            &["outcome"],
        )?;
        let layers = HistogramVec::new(
            HistogramOpts::new(
                "pipeline_layer_seconds",
                "Time a mutating request spends in each layer of the pipeline, in order (the \
                 laps of one request add up to its time in the pipeline): claim (idempotency: \
                 replay a stored answer or claim the key), lock (Redlock wait), transaction \
                 (row-locked, to COMMIT), after_commit (cache and replay-cache stores, lock \
                 release); batched: a debit or credit decided in another request's batch, from \
                 its claim to its answer",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
            &["layer"],
        )?;
        let batch_size = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "pipeline_batch_size",
                "Debits and credits of one wallet committed together in one transaction",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )?;
        let pool = IntGaugeVec::new(
            Opts::new(
                "db_pool_connections",
                "Postgres pool by state: max (pool size), open, idle, in_use (open - idle), \
                 waiting (requests waiting for a connection); sampled at each scrape",
            ),
            &["state"],
        )?;
        families.add(http_requests.clone())?;
        families.add(http_duration.clone())?;
        families.add(entries.clone())?;
        families.add(replays.clone())?;
        families.add(lock_wait.clone())?;
        families.add(layers.clone())?;
        families.add(batch_size.clone())?;
        let unknown_keys = IntCounterVec::new(
            Opts::new(
                "auth_unknown_key_cache_total",
                "Cache of key ids that do not exist: hit (refused without Postgres), insert, clear (map full)",
            ),
            &["event"],
        )?;
        let unknown_key_entries = IntGauge::new(
            "auth_unknown_key_cache_entries",
            "Key ids remembered as unknown",
        )?;
        let shed = IntCounterVec::new(
            Opts::new(
                "pipeline_shed_total",
                "Mutating requests refused before anything was written, by reason",
            ),
            &["reason"],
        )?;
        let purged = IntCounter::new(
            "idempotency_answers_purged_total",
            "Stored answers dropped after idempotency.retention_hours (their keys are kept)",
        )?;
        families.add(pool.clone())?;
        families.add(unknown_keys.clone())?;
        families.add(unknown_key_entries.clone())?;
        families.add(shed.clone())?;
        families.add(purged.clone())?;
        let events_published = IntCounter::new(
            "outbox_events_published_total",
            "Outbox events published to the stream by this replica (a republish counts again)",
        )?;
        let publish_lag = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "outbox_publish_lag_seconds",
                "From the change (occurred_at) to its event's XADD",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )?;
        let outbox_backlog = IntGauge::new(
            "outbox_backlog",
            "Committed events not yet published (all replicas' partitions; sampled each second)",
        )?;
        let relay_partitions = IntGauge::new(
            "outbox_relay_partitions",
            "Outbox partitions whose lease this replica holds",
        )?;
        let cache_reads = IntCounterVec::new(
            Opts::new(
                "balance_cache_reads_total",
                "GET /v1/wallets/{id} by source: hit (Redis), miss (Postgres, then cached), bypass (cache off or distrusted), error (Redis failed; Postgres answered)",
            ),
            &["result"],
        )?;
        let cache_writes = IntCounterVec::new(
            Opts::new(
                "balance_cache_writes_total",
                "Balance cache writes: pending (marked before a commit), stored, refused (a newer version was there), error",
            ),
            &["result"],
        )?;
        families.add(events_published.clone())?;
        families.add(publish_lag.clone())?;
        families.add(outbox_backlog.clone())?;
        families.add(relay_partitions.clone())?;
        families.add(cache_reads.clone())?;
        families.add(cache_writes.clone())?;
        let decisions = IntCounterVec::new(
            Opts::new(
                "decisions_total",
                "Mutating requests by operation and what they came to (code): applied, \
                 replayed, in_progress, or the problem code answered",
            ),
            &["operation", "code"],
        )?;
        for operation in Operation::ALL {
            for code in DECISION_CODES_PRESET {
                decisions.with_label_values(&[operation.as_str(), code]);
            }
        }
        let redis_node_up = IntGaugeVec::new(
            Opts::new(
                "redis_node_up",
                "1 if the Redis node (index in redis.urls) answered PING within \
                 redis.command_timeout_ms at the last probe (every second), else 0",
            ),
            &["node"],
        )?;
        let redis_node_info = IntGaugeVec::new(
            Opts::new(
                "redis_node_info",
                "Always 1: the configured address (host:port, never a password) of each node",
            ),
            &["node", "address"],
        )?;
        let redis_quorum = IntGauge::new(
            "redis_quorum",
            "Redis nodes that must grant a lock (N/2+1 of redis.urls)",
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("build_info", "Always 1: the running build"),
            &["version", "git_sha", "profile"],
        )?;
        build_info
            .with_label_values(&[VERSION, GIT_SHA, PROFILE])
            .set(1);
        families.add(decisions.clone())?;
        families.add(redis_node_up.clone())?;
        families.add(redis_node_info.clone())?;
        families.add(redis_quorum.clone())?;
        families.add(build_info)?;
        if Shared::get().is_none() {
            // Two racing first calls both build one; the loser's is dropped unregistered.
            let _ = SHARED.set(Shared::new()?);
        }
        if let Some(shared) = Shared::get() {
            shared.register(&mut families)?;
        }
        let mut process = Families {
            registry: Registry::new(),
            prefix: "",
            names: Vec::new(),
        };
        #[cfg(target_os = "linux")]
        process.add(prometheus::process_collector::ProcessCollector::for_self())?;
        let mut family_names = families.names;
        family_names.extend(process.names);
        family_names.sort();
        Ok(Self {
            registry: families.registry,
            family_names,
            http_requests,
            http_duration,
            entries,
            replays,
            lock_wait,
            layers,
            batch_size,
            pool,
            unknown_keys,
            unknown_key_entries,
            shed,
            purged,
            events_published,
            publish_lag,
            outbox_backlog,
            relay_partitions,
            cache_reads,
            cache_writes,
            decisions,
            redis_node_up,
            redis_node_info,
            redis_quorum,
            process: process.registry,
        })
    }

    /// The name of every family this exports (as scraped, e.g. `walletd_decisions_total`),
    /// whether or not it has a series yet; sorted. `docs/metrics.md` lists the same.
    pub fn family_names(&self) -> &[String] {
        &self.family_names
    }

    /// What one mutating request came to (`code` is bounded by [`decision_label`]).
    pub fn record_decision(&self, operation: Operation, code: &str) {
        self.decisions
            .with_label_values(&[operation.as_str(), decision_label(code)])
            .inc();
    }

    /// The configured Redis nodes, by index: their addresses and the lock quorum. Each node
    /// counts as down until its first probe.
    pub fn describe_redis_nodes(&self, addresses: &[&str]) {
        for (index, address) in addresses.iter().enumerate() {
            let node = index.to_string();
            self.redis_node_info
                .with_label_values(&[node.as_str(), address])
                .set(1);
            self.redis_node_up
                .with_label_values(&[node.as_str()])
                .set(0);
        }
        self.redis_quorum
            .set(i64::try_from(addresses.len() / 2 + 1).unwrap_or(i64::MAX));
    }

    /// The result of one probe of node `index`.
    pub fn set_redis_node_up(&self, index: usize, up: bool) {
        self.redis_node_up
            .with_label_values(&[&index.to_string()])
            .set(i64::from(up));
    }

    /// `route` must be a route pattern (or a fixed placeholder), never a raw path.
    pub fn record_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let method = method_label(method);
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_entry(&self, kind: &str, status: u16) {
        self.entries
            .with_label_values(&[kind, &status.to_string()])
            .inc();
    }

    pub fn record_replay(&self, operation: &str) {
        self.replays.with_label_values(&[operation]).inc();
    }

    pub fn record_lock_wait(&self, waited: Duration, outcome: &str) {
        self.lock_wait
            .with_label_values(&[outcome])
            .observe(waited.as_secs_f64());
    }

    /// One layer of one request's pipeline (`pipeline::LayerClock`).
    pub fn record_layer(&self, layer: &'static str, took: Duration) {
        self.layers
            .with_label_values(&[layer])
            .observe(took.as_secs_f64());
    }

    /// One batch of `jobs` debits and credits run in one transaction.
    pub fn record_batch(&self, jobs: usize) {
        self.batch_size.observe(jobs as f64);
    }

    /// `event`: `hit`, `insert` or `clear`.
    pub fn record_unknown_key(&self, event: &'static str) {
        self.unknown_keys.with_label_values(&[event]).inc();
    }

    /// `reason`: `wallet_queue_full` or `pipelines_busy`.
    pub fn record_shed(&self, reason: &'static str) {
        self.shed.with_label_values(&[reason]).inc();
    }

    pub fn record_purged(&self, answers: u64) {
        self.purged.inc_by(answers);
    }

    /// One event XADDed, `lag` after its change.
    pub fn record_event_published(&self, lag: Duration) {
        self.events_published.inc();
        self.publish_lag.observe(lag.as_secs_f64());
    }

    pub fn set_outbox_backlog(&self, waiting: i64) {
        self.outbox_backlog.set(waiting);
    }

    pub fn set_relay_partitions(&self, held: i64) {
        self.relay_partitions.set(held);
    }

    /// `result`: `hit`, `miss`, `bypass` or `error`.
    pub fn record_cache_read(&self, result: &'static str) {
        self.cache_reads.with_label_values(&[result]).inc();
    }

    /// `result`: `pending`, `stored`, `refused` or `error`.
    pub fn record_cache_write(&self, result: &'static str) {
        self.cache_writes.with_label_values(&[result]).inc();
    }

    /// Renders every metric; pool gauges and the unknown-key count are sampled now.
    pub fn render(
        &self,
        pool: deadpool::Status,
        unknown_key_entries: usize,
    ) -> anyhow::Result<String> {
        self.unknown_key_entries
            .set(i64::try_from(unknown_key_entries).unwrap_or(i64::MAX));
        let gauge = |state: &str, value: usize| {
            self.pool
                .with_label_values(&[state])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        gauge("max", pool.max_size);
        gauge("open", pool.size);
        gauge("idle", pool.available);
        gauge("in_use", pool.size.saturating_sub(pool.available));
        gauge("waiting", pool.waiting);
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&families, &mut buffer)?;
        Ok(String::from_utf8(buffer)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("XLROAWQXLYZ"), "OTHER");
        assert_eq!(method_label("get"), "OTHER");
        let metrics = Metrics::new().unwrap();
        for i in 0..100 {
            metrics.record_http(&format!("M{i}"), "/v1/wallets", 405, Duration::ZERO);
        }
        let pool = deadpool::Status {
            max_size: 1,
            size: 0,
            available: 0,
            waiting: 0,
        };
        let text = metrics.render(pool, 0).unwrap();
        assert_eq!(
            text.matches("method=\"OTHER\"").count(),
            1 + 12 + 3,
            "{text}"
        );
    }
}
