//! Admission of an authenticated caller, in one Redis round trip on the first node:
//!
//! - **Revocation, at once on every replica.** `walletd key revoke` marks the key revoked in
//!   Postgres (the source of truth) and sets `walletd:revoked:<key id>` here; every request
//!   checks the marker, so a revoked key is refused immediately even where the key is still in
//!   a replica's in-process cache. Without Redis, the cache TTL (`auth.cache_ttl_ms`, 1 s)
//!   bounds the delay instead.
//! - **Per-key rate limit**, shared by all replicas: a fixed one-second window,
//!   `INCR walletd:rl:<key>:<unix second>` with a 2 s expiry. Simple and exact enough for
//!   shedding abuse.
//!
//! If Redis cannot answer, the caller is admitted (fail open): this gate must not turn a Redis
//! outage into an API outage, and both of its jobs have a database-backed fallback or none is
//! needed for correctness.

use std::time::{SystemTime, UNIX_EPOCH};

use super::AuthError;
use crate::domain::KeyId;
use crate::metrics;
use crate::redis_nodes::{RedisCallError, RedisNodes};

fn revoked_marker(key: KeyId) -> String {
    format!("walletd:revoked:{key}")
}

/// Publishes a revocation to every replica (called by `walletd key revoke` after the
/// database update).
pub async fn publish_revocation(nodes: &RedisNodes, key: KeyId) -> Result<(), RedisCallError> {
    let marker = revoked_marker(key);
    nodes
        .primary()
        .call(async |c| {
            redis::cmd("SET")
                .arg(&marker)
                .arg(1)
                .query_async::<()>(c)
                .await
        })
        .await
}

/// Admits `key` unless it is revoked (401) or over `limit` requests this second (429); a
/// `limit` of 0 disables the rate limit.
pub async fn admit(redis: &RedisNodes, limit: u32, key: KeyId) -> Result<(), AuthError> {
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let counter = format!("walletd:rl:{key}:{second}");
    let marker = revoked_marker(key);
    let answer = redis
        .primary()
        .call(async |c| {
            redis::pipe()
                .exists(&marker)
                .incr(&counter, 1)
                .expire(&counter, 2)
                .ignore()
                .query_async::<(bool, u64)>(c)
                .await
        })
        .await;
    match answer {
        Ok((true, _)) => Err(AuthError::Unauthorized),
        Ok((false, count)) if limit > 0 && count > u64::from(limit) => {
            metrics::count_rate_limited();
            Err(AuthError::RateLimited { retry_after_s: 1 })
        }
        Ok(_) => Ok(()),
        Err(error) => {
            metrics::count_admitted_unchecked();
            tracing::debug!(%error, "admission check unavailable; admitting the caller");
            Ok(())
        }
    }
}
