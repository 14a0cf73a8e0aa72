//! The configured Redis nodes, each with one multiplexed connection and a hard per-command
//! timeout.
//!
//! Redis is never the source of truth here: it carries the Redlock keys and the rate-limit
//! counters. Every command is bounded by `redis.command_timeout_ms`, so a dead or frozen node
//! costs a request at most that long, never a hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;
use tokio::sync::Mutex;

use crate::config::{RedisSettings, ms};

/// Why a Redis command did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    #[error("no connection to {node}: {source}")]
    Connect {
        node: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("{node} answered with an error: {source}")]
    Command {
        node: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("{node} did not answer within {timeout_ms} ms")]
    Timeout { node: String, timeout_ms: u128 },
    #[error("{node} is not tried again for {retry_in_ms} ms after a connect that did not finish")]
    Backoff { node: String, retry_in_ms: u128 },
}

impl RedisCallError {
    /// The `kind` label of `walletd_redis_command_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            RedisCallError::Connect { .. } => "connect",
            RedisCallError::Command { .. } => "command",
            RedisCallError::Timeout { .. } => "timeout",
            RedisCallError::Backoff { .. } => "backoff",
        }
    }
}

/// After a connect is started, no other is for this long, whatever became of it: a node that
/// accepts TCP but does not answer (frozen) costs one connect per period, not one per command.
const CONNECT_BACKOFF: Duration = Duration::from_millis(250);

/// Timeouts in a row on one connection before it is dropped for a new one. One slow command
/// does not break the connection every other command shares; a connection that stopped
/// answering (a half-open socket, a node restarted behind a proxy) is replaced.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

/// The shared connection, numbered so that a failure forgets only the connection it met.
#[derive(Clone)]
struct Shared {
    generation: u64,
    conn: MultiplexedConnection,
    timeouts_in_a_row: Arc<AtomicU32>,
}

#[derive(Default)]
struct Slot {
    connection: Option<Shared>,
    /// No connect is started before this.
    next_connect_at: Option<Instant>,
    generations: u64,
}

pub struct RedisNode {
    /// The node's place in `redis.urls`: its label in metrics.
    index: usize,
    /// `host:port`, never the password: this label goes to logs and `/readyz`.
    label: String,
    client: redis::Client,
    command_timeout: Duration,
    /// The node's one multiplexed connection, made on first use and replaced after it failed.
    /// Concurrent commands are pipelined on it, so a command costs one round trip: no
    /// checkout, no health check per call (a pool's recycle PING was one more round trip).
    slot: Mutex<Slot>,
}

impl RedisNode {
    fn new(index: usize, url: &str, settings: &RedisSettings) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).with_context(|| "a Redis URL is not a URL".to_owned())?;
        let label = format!(
            "{}:{}",
            parsed.host_str().unwrap_or("?"),
            parsed.port().unwrap_or(6379)
        );
        let client = redis::Client::open(url)
            .with_context(|| format!("the Redis URL for {label} is not usable"))?;
        Ok(Self {
            index,
            label,
            client,
            command_timeout: ms(settings.command_timeout_ms),
            slot: Mutex::default(),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The node's place in `redis.urls` (from 0).
    pub fn index(&self) -> usize {
        self.index
    }

    /// The bound on one command (`redis.command_timeout_ms`).
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Runs one command (or script invocation) with the node's timeout.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        build: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisCallError> {
        self.call_within(self.command_timeout, build).await
    }

    /// Runs one command with its own timeout (a bulk publish, a blocking read). A command that
    /// broke the connection drops it, as do [`TIMEOUTS_BEFORE_RECONNECT`] timeouts in a row:
    /// a later call connects afresh.
    pub async fn call_within<T: redis::FromRedisValue>(
        &self,
        timeout: Duration,
        build: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisCallError> {
        let mut used: Option<Shared> = None;
        let attempt = async {
            let shared = self.connection().await?;
            let mut conn = shared.conn.clone();
            used = Some(shared.clone());
            match build(&mut conn).await {
                Ok(value) => {
                    shared.timeouts_in_a_row.store(0, Ordering::Relaxed);
                    Ok(value)
                }
                Err(source) => {
                    if source.is_unrecoverable_error() || source.is_io_error() {
                        self.forget(shared.generation);
                    }
                    Err(RedisCallError::Command {
                        node: self.label.clone(),
                        source,
                    })
                }
            }
        };
        let result = tokio::time::timeout(timeout, attempt).await;
        let answer = result.unwrap_or_else(|_| {
            if let Some(shared) = used {
                let in_a_row = shared.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                if in_a_row >= TIMEOUTS_BEFORE_RECONNECT {
                    self.forget(shared.generation);
                }
            }
            Err(RedisCallError::Timeout {
                node: self.label.clone(),
                timeout_ms: timeout.as_millis(),
            })
        });
        if let Err(error) = &answer {
            crate::metrics::count_redis_error(self.index, error.kind());
        }
        answer
    }

    /// The shared connection, connecting if there is none and none was started within
    /// [`CONNECT_BACKOFF`] (bounded by the caller's timeout; a connect cut short by it still
    /// counts, so waiting callers do not each start one).
    async fn connection(&self) -> Result<Shared, RedisCallError> {
        let mut slot = self.slot.lock().await;
        if let Some(shared) = &slot.connection {
            return Ok(shared.clone());
        }
        let now = Instant::now();
        if let Some(at) = slot.next_connect_at
            && now < at
        {
            return Err(RedisCallError::Backoff {
                node: self.label.clone(),
                retry_in_ms: (at - now).as_millis(),
            });
        }
        slot.next_connect_at = Some(now + CONNECT_BACKOFF);
        // Our own timeouts bound every command; the crate's would cut a blocking read short.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.command_timeout))
            .set_response_timeout(None);
        let conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| RedisCallError::Connect {
                node: self.label.clone(),
                source,
            })?;
        slot.generations += 1;
        let shared = Shared {
            generation: slot.generations,
            conn,
            timeouts_in_a_row: Arc::default(),
        };
        slot.connection = Some(shared.clone());
        slot.next_connect_at = None;
        Ok(shared)
    }

    /// Drops the shared connection if it is still the one of `generation` (a newer one is
    /// kept). Skipped if someone is connecting right now: that connection is new anyway.
    fn forget(&self, generation: u64) {
        if let Ok(mut slot) = self.slot.try_lock()
            && slot
                .connection
                .as_ref()
                .is_some_and(|shared| shared.generation == generation)
        {
            slot.connection = None;
        }
    }

    pub async fn ping(&self) -> bool {
        self.call(async |c| redis::cmd("PING").query_async::<String>(c).await)
            .await
            .is_ok()
    }
}

/// All configured nodes. The first also serves the rate limiter.
#[derive(Clone)]
pub struct RedisNodes(Arc<Vec<RedisNode>>);

impl RedisNodes {
    pub fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        let nodes = settings
            .urls
            .iter()
            .enumerate()
            .map(|(index, url)| RedisNode::new(index, url, settings))
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!nodes.is_empty(), "no Redis nodes configured");
        Ok(Self(Arc::new(nodes)))
    }

    pub fn all(&self) -> &[RedisNode] {
        &self.0
    }

    pub fn primary(&self) -> &RedisNode {
        &self.0[0]
    }
}
