//! The configured Redis nodes, each with one multiplexed connection and a hard per-command
//! timeout.
//!
//! Redis is never the source of truth here: it carries the Redlock keys and the rate-limit
//! counters. Every command is bounded by `redis.command_timeout_ms`, so a dead or frozen node
//! costs a request at most that long, never a hang.

use std::sync::Arc;
use std::time::Duration;

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
}

pub struct RedisNode {
    /// `host:port`, never the password: this label goes to logs and `/readyz`.
    label: String,
    client: redis::Client,
    command_timeout: Duration,
    /// The node's one multiplexed connection, made on first use and replaced after it failed.
    /// Concurrent commands are pipelined on it, so a command costs one round trip: no
    /// checkout, no health check per call (a pool's recycle PING was one more round trip).
    connection: Mutex<Option<MultiplexedConnection>>,
}

impl RedisNode {
    fn new(url: &str, settings: &RedisSettings) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).with_context(|| "a Redis URL is not a URL".to_owned())?;
        let label = format!(
            "{}:{}",
            parsed.host_str().unwrap_or("?"),
            parsed.port().unwrap_or(6379)
        );
        let client = redis::Client::open(url)
            .with_context(|| format!("the Redis URL for {label} is not usable"))?;
        Ok(Self {
            label,
            client,
            command_timeout: ms(settings.command_timeout_ms),
            connection: Mutex::new(None),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
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
    /// timed out or broke the connection drops it: the next call connects afresh.
    pub async fn call_within<T: redis::FromRedisValue>(
        &self,
        timeout: Duration,
        build: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisCallError> {
        let attempt = async {
            let mut conn = self.connection().await?;
            build(&mut conn).await.map_err(|source| {
                if source.is_unrecoverable_error() || source.is_io_error() {
                    self.forget_connection();
                }
                RedisCallError::Command {
                    node: self.label.clone(),
                    source,
                }
            })
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => {
                self.forget_connection();
                Err(RedisCallError::Timeout {
                    node: self.label.clone(),
                    timeout_ms: timeout.as_millis(),
                })
            }
        }
    }

    /// The shared connection, connecting if there is none (bounded by the caller's timeout).
    async fn connection(&self) -> Result<MultiplexedConnection, RedisCallError> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
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
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Drops the shared connection (if nobody is connecting right now; then that one is new).
    fn forget_connection(&self) {
        if let Ok(mut slot) = self.connection.try_lock() {
            *slot = None;
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
            .map(|url| RedisNode::new(url, settings))
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
