//! Prometheus metrics, served as text at `/metrics`.

use std::time::Duration;

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

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let registry = Registry::new_custom(Some("walletd".into()), None)?;
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
                "Debits and credits executed, by outcome (HTTP status)",
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
                "Time a mutating request spends in each layer of the pipeline, in order: \
                 replay_cache (Redis), claim (resolve, queue place, key claim in Postgres), \
                 lock (Redlock wait), transaction (row-locked, to COMMIT), after_commit \
                 (cache store and replay-cache store overlapped, then the lock release); \
                 batched: a debit or credit decided in another request's batch, from its \
                 claim to its answer",
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
            Opts::new("db_pool_connections", "Postgres pool connections by state"),
            &["state"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(replays.clone()))?;
        registry.register(Box::new(lock_wait.clone()))?;
        registry.register(Box::new(layers.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
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
        registry.register(Box::new(pool.clone()))?;
        registry.register(Box::new(unknown_keys.clone()))?;
        registry.register(Box::new(unknown_key_entries.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(purged.clone()))?;
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
        registry.register(Box::new(events_published.clone()))?;
        registry.register(Box::new(publish_lag.clone()))?;
        registry.register(Box::new(outbox_backlog.clone()))?;
        registry.register(Box::new(relay_partitions.clone()))?;
        registry.register(Box::new(cache_reads.clone()))?;
        registry.register(Box::new(cache_writes.clone()))?;
        Ok(Self {
            registry,
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
        })
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
        gauge("waiting", pool.waiting);
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
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
