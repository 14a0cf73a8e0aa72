//! Settings: `config/default.toml`, overlaid by `config/$WALLETD_ENV.toml`, overlaid by
//! `WALLETD__SECTION__KEY` environment variables; `DATABASE_URL`, `REDIS_URLS` and `WALLETD_BIND`
//! always win. Units are in the names (`_ms`, `_s`); every option is described in
//! `config/default.toml`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// Longest answer retention accepted (ten years): beyond it the arithmetic is not worth risking.
const RETENTION_HOURS_MAX: u64 = 24 * 366 * 10;

/// `config/default.toml`, compiled in.
const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub log: LogSettings,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub lock: LockSettings,
    pub pipeline: PipelineSettings,
    pub holds: HoldSettings,
    pub idempotency: IdempotencySettings,
    pub rate_limit: RateLimitSettings,
    pub auth: AuthSettings,
    pub events: EventSettings,
    pub cache: CacheSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub bind: String,
    pub workers: usize,
    pub shutdown_timeout_s: u64,
    pub body_read_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub run_migrations_on_start: bool,
    pub pool_max_size: usize,
    pub pool_wait_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub lock_timeout_ms: u64,
    pub idle_in_transaction_session_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub urls: Vec<String>,
    pub command_timeout_ms: u64,
}

/// What the wallet lock does when a quorum of Redis nodes cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisUnavailablePolicy {
    /// Proceed under the Postgres row lock alone: still exactly-once, only less contention
    /// shedding. The default, because correctness never rested on Redis.
    DatabaseOnly,
    /// Answer 503 `unavailable`.
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSettings {
    pub ttl_ms: u64,
    pub wait_ms_max: u64,
    pub retry_delay_ms_min: u64,
    pub retry_delay_ms_max: u64,
    pub redis_unavailable: RedisUnavailablePolicy,
    pub local_handoffs_max: u32,
}

/// The largest `pipeline.batch_max`: one batch is one transaction holding its wallet's row
/// lock, so it stays short.
const BATCH_MAX_LIMIT: usize = 256;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSettings {
    pub deadline_ms: u64,
    pub concurrent_max: usize,
    pub wallet_queue_depth_max: usize,
    pub batch_max: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldSettings {
    pub sweep_interval_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    pub lease_ms: u64,
    pub replay_cache_ttl_s: u64,
    pub retention_hours: u64,
    pub purge_interval_s: u64,
    pub purge_batch_size: u32,
    pub purge_batches_per_run_max: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSettings {
    pub requests_per_second: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    pub cache_ttl_ms: u64,
    pub negative_cache_ttl_ms: u64,
    pub lookups_concurrent_max: usize,
    pub lookup_wait_ms_max: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    pub relay_enabled: bool,
    pub stream: String,
    pub stream_maxlen: u64,
    pub partitions: u16,
    pub lease_ms: u64,
    pub poll_interval_ms: u64,
    pub batch_max: u32,
    pub publish_bytes_max: usize,
    pub publish_timeout_ms: u64,
    pub retention_hours: u64,
    pub prune_interval_s: u64,
    pub prune_batch_size: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    pub enabled: bool,
    pub namespace: String,
    pub ttl_ms: u64,
}

/// Where settings are looked for when no directory is named.
const DEFAULT_CONFIG_DIR: &str = "config";

impl Settings {
    /// Loads settings from `config_dir` (named with `--config-dir` / `WALLETD_CONFIG_DIR`) and
    /// the process environment. The directory must exist: a mistyped one is an error, never a
    /// silent fall back to the defaults. Without a `default.toml` in it, the defaults built
    /// into the binary apply.
    pub fn load(config_dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            config_dir.is_dir(),
            "configuration directory {} does not exist or is not a directory",
            config_dir.display()
        );
        Self::load_from(config_dir)
    }

    /// Loads settings from `./config` if it exists, else from the defaults built into the
    /// binary (an installed binary outside the source tree), then the process environment.
    pub fn load_default() -> anyhow::Result<Self> {
        Self::load_from(Path::new(DEFAULT_CONFIG_DIR))
    }

    fn load_from(config_dir: &Path) -> anyhow::Result<Self> {
        let env_name = std::env::var("WALLETD_ENV").ok();
        let default_file = config_dir.join("default.toml");
        // Outside the source tree (an installed binary), the defaults built into it apply.
        let mut builder = if default_file.exists() {
            config::Config::builder()
                .add_source(config::File::from(default_file).format(config::FileFormat::Toml))
        } else {
            config::Config::builder().add_source(config::File::from_str(
                DEFAULT_TOML,
                config::FileFormat::Toml,
            ))
        };
        if let Some(name) = env_name.as_deref().filter(|n| !n.is_empty()) {
            builder = builder.add_source(
                config::File::from(config_dir.join(format!("{name}.toml")))
                    .format(config::FileFormat::Toml),
            );
        }
        let builder = builder
            .add_source(
                config::Environment::with_prefix("WALLETD")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .set_override_option("database.url", std::env::var("DATABASE_URL").ok())?
            .set_override_option("server.bind", std::env::var("WALLETD_BIND").ok())?
            .set_override_option("redis.urls", redis_urls_from_env())?;
        let settings: Settings = builder
            .build()
            .and_then(config::Config::try_deserialize)
            .with_context(|| format!("invalid configuration in {}", config_dir.display()))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Rejects settings that would make a bound meaningless, at start rather than mid-request.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::ensure;
        ensure!(
            !self.redis.urls.is_empty(),
            "redis.urls must name at least one node"
        );
        ensure!(
            self.database.pool_max_size >= 1,
            "database.pool_max_size must be >= 1"
        );
        ensure!(self.lock.ttl_ms >= 10, "lock.ttl_ms must be >= 10");
        ensure!(
            self.lock.retry_delay_ms_min <= self.lock.retry_delay_ms_max,
            "lock.retry_delay_ms_min must be <= lock.retry_delay_ms_max"
        );
        ensure!(
            self.lock.local_handoffs_max >= 1,
            "lock.local_handoffs_max must be >= 1"
        );
        // The request deadline bounds everything a pipeline waits for; it must end before the
        // in-flight lease does, or a twin could take over a key whose first request is still
        // working (and that request would answer 409 after doing all its work).
        ensure!(
            self.pipeline.deadline_ms >= 100,
            "pipeline.deadline_ms must be >= 100"
        );
        ensure!(
            self.pipeline.deadline_ms < self.idempotency.lease_ms,
            "pipeline.deadline_ms ({}) must be less than idempotency.lease_ms ({})",
            self.pipeline.deadline_ms,
            self.idempotency.lease_ms
        );
        ensure!(
            self.lock.wait_ms_max < self.pipeline.deadline_ms,
            "lock.wait_ms_max ({}) must be less than pipeline.deadline_ms ({})",
            self.lock.wait_ms_max,
            self.pipeline.deadline_ms
        );
        ensure!(
            self.pipeline.concurrent_max >= 1 && self.pipeline.wallet_queue_depth_max >= 1,
            "pipeline.concurrent_max and pipeline.wallet_queue_depth_max must be >= 1"
        );
        ensure!(
            (1..=BATCH_MAX_LIMIT).contains(&self.pipeline.batch_max),
            "pipeline.batch_max must be between 1 and {BATCH_MAX_LIMIT}"
        );
        ensure!(
            self.server.body_read_timeout_ms >= 1,
            "server.body_read_timeout_ms must be >= 1"
        );
        // API.md: stored answers are kept at least 24 hours.
        ensure!(
            (24..=RETENTION_HOURS_MAX).contains(&self.idempotency.retention_hours),
            "idempotency.retention_hours must be from 24 to {RETENTION_HOURS_MAX}"
        );
        ensure!(
            self.idempotency.replay_cache_ttl_s <= self.idempotency.retention_hours * 3600,
            "idempotency.replay_cache_ttl_s must not exceed idempotency.retention_hours"
        );
        ensure!(
            self.idempotency.purge_interval_s >= 1
                && self.idempotency.purge_batch_size >= 1
                && self.idempotency.purge_batches_per_run_max >= 1,
            "idempotency.purge_interval_s, purge_batch_size and purge_batches_per_run_max must be >= 1"
        );
        ensure!(
            self.holds.sweep_interval_s >= 1,
            "holds.sweep_interval_s must be >= 1"
        );
        ensure!(
            self.auth.lookups_concurrent_max >= 1,
            "auth.lookups_concurrent_max must be >= 1"
        );
        ensure!(
            (1..=EVENT_PARTITIONS_MAX).contains(&self.events.partitions),
            "events.partitions must be from 1 to {EVENT_PARTITIONS_MAX}"
        );
        ensure!(
            self.events.lease_ms >= 100 && self.events.poll_interval_ms >= 1,
            "events.lease_ms must be >= 100 and events.poll_interval_ms >= 1"
        );
        // A lease is renewed on every loop turn; a turn that sleeps longer than the lease lasts
        // would hand the partitions to another replica between every two batches.
        ensure!(
            self.events.poll_interval_ms * 3 <= self.events.lease_ms,
            "events.poll_interval_ms must be at most a third of events.lease_ms"
        );
        ensure!(
            self.events.publish_timeout_ms < self.events.lease_ms,
            "events.publish_timeout_ms must be less than events.lease_ms"
        );
        ensure!(
            self.events.batch_max >= 1 && self.events.prune_batch_size >= 1,
            "events.batch_max and events.prune_batch_size must be >= 1"
        );
        // One event is at most EVENT_BYTES_MAX (the database says so too): a publish call must
        // be able to carry at least one.
        ensure!(
            self.events.publish_bytes_max >= crate::outbox::EVENT_BYTES_MAX,
            "events.publish_bytes_max must be >= {}",
            crate::outbox::EVENT_BYTES_MAX
        );
        ensure!(
            self.events.stream_maxlen >= 1000 && !self.events.stream.is_empty(),
            "events.stream must be named and events.stream_maxlen must be >= 1000"
        );
        ensure!(
            self.events.retention_hours >= 1 && self.events.prune_interval_s >= 1,
            "events.retention_hours and events.prune_interval_s must be >= 1"
        );
        ensure!(
            self.cache.ttl_ms >= 1000 && !self.cache.namespace.is_empty(),
            "cache.namespace must be named and cache.ttl_ms must be >= 1000"
        );
        Ok(())
    }
}

/// Most relay partitions: each is one lease key and one term in the relay's query.
const EVENT_PARTITIONS_MAX: u16 = 256;

fn redis_urls_from_env() -> Option<Vec<String>> {
    let raw = std::env::var("REDIS_URLS").ok()?;
    let urls: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect();
    (!urls.is_empty()).then_some(urls)
}

pub fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}
