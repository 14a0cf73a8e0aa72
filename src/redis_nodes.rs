//! The configured Redis nodes, each with its own small pool and a hard per-command timeout.
//!
//! Redis is never the source of truth here: it carries the Redlock keys and the rate-limit
//! counters. Every command is bounded by `redis.command_timeout_ms`, so a dead or frozen node
//! costs a request at most that long, never a hang.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use deadpool_redis::{Pool, PoolConfig, Runtime, Timeouts};

use crate::config::{RedisSettings, ms};

/// Why a Redis command did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisCallError {
    #[error("no connection to {node}: {source}")]
    Connect {
        node: String,
        #[source]
        source: deadpool_redis::PoolError,
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
    pool: Pool,
    command_timeout: Duration,
}

impl RedisNode {
    fn new(url: &str, settings: &RedisSettings) -> anyhow::Result<Self> {
        let parsed = url::Url::parse(url).with_context(|| "a Redis URL is not a URL".to_owned())?;
        let label = format!(
            "{}:{}",
            parsed.host_str().unwrap_or("?"),
            parsed.port().unwrap_or(6379)
        );
        let command_timeout = ms(settings.command_timeout_ms);
        let mut config = deadpool_redis::Config::from_url(url);
        config.pool = Some(PoolConfig {
            max_size: settings.pool_max_size,
            timeouts: Timeouts {
                wait: Some(command_timeout),
                create: Some(command_timeout),
                recycle: Some(command_timeout),
            },
            ..PoolConfig::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .with_context(|| format!("building the Redis pool for {label}"))?;
        Ok(Self {
            label,
            pool,
            command_timeout,
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
        build: impl AsyncFnOnce(&mut deadpool_redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisCallError> {
        self.call_within(self.command_timeout, build).await
    }

    /// Runs one command with its own timeout (a bulk publish, longer than one command).
    pub async fn call_within<T: redis::FromRedisValue>(
        &self,
        timeout: Duration,
        build: impl AsyncFnOnce(&mut deadpool_redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisCallError> {
        let attempt = async {
            let mut conn = self
                .pool
                .get()
                .await
                .map_err(|source| RedisCallError::Connect {
                    node: self.label.clone(),
                    source,
                })?;
            build(&mut conn)
                .await
                .map_err(|source| RedisCallError::Command {
                    node: self.label.clone(),
                    source,
                })
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(RedisCallError::Timeout {
                    node: self.label.clone(),
                    timeout_ms: timeout.as_millis(),
                })
            })
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
