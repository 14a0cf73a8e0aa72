//! Prometheus metrics, served as text at `/metrics`.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::pipeline::idempotency::StoredResponse;

pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    entries: IntCounterVec,
    replays: IntCounterVec,
    lock_wait: HistogramVec,
    pool: IntGaugeVec,
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
        let pool = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Postgres pool connections by state"),
            &["state"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(entries.clone()))?;
        registry.register(Box::new(replays.clone()))?;
        registry.register(Box::new(lock_wait.clone()))?;
        registry.register(Box::new(pool.clone()))?;
        Ok(Self {
            registry,
            http_requests,
            http_duration,
            entries,
            replays,
            lock_wait,
            pool,
        })
    }

    pub fn record_http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        self.http_requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.http_duration
            .with_label_values(&[method, route])
            .observe(elapsed.as_secs_f64());
    }

    pub fn record_entry(&self, kind: &str, response: &StoredResponse) {
        self.entries
            .with_label_values(&[kind, &response.status.to_string()])
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

    /// Renders every metric; pool gauges are sampled now.
    pub fn render(&self, pool: deadpool::Status) -> anyhow::Result<String> {
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
