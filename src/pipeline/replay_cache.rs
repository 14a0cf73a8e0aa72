//! The Redis fast path of layer 1: completed answers, cached on the first Redis node so that
//! retries (a retry storm, a client replaying after a timeout) are answered without Postgres.
//!
//! Safe because a completed answer never changes: it is written here only after its
//! transaction committed, and Postgres stays the source of truth (a miss, or Redis being
//! down, falls through to the database lookup).

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::idempotency::{Fingerprint, IdempotentRequest};
use super::outcome::StoredResponse;
use crate::domain::TenantId;
use crate::redis_nodes::RedisNodes;

/// What the cache knows about a key.
pub enum Cached {
    /// The same request: replay this.
    Replay(StoredResponse),
    /// The key was used for a different request.
    Reused,
}

#[derive(Clone)]
pub struct ReplayCache {
    nodes: RedisNodes,
    ttl: Duration,
}

impl ReplayCache {
    pub fn new(nodes: RedisNodes, ttl: Duration) -> Self {
        Self { nodes, ttl }
    }

    fn redis_key(request: &IdempotentRequest) -> String {
        cache_key(request.tenant, request.key.as_str())
    }

    /// Drops the cached answers of keys whose stored answers were purged, so that a retry
    /// learns at once that the key expired. Best effort: what stays expires with its TTL.
    pub async fn forget(&self, keys: &[(TenantId, String)]) {
        if keys.is_empty() {
            return;
        }
        let cache_keys: Vec<String> = keys
            .iter()
            .map(|(tenant, key)| cache_key(*tenant, key))
            .collect();
        let dropped = self
            .nodes
            .primary()
            .call(async |c| {
                redis::cmd("DEL")
                    .arg(&cache_keys)
                    .query_async::<i64>(c)
                    .await
            })
            .await;
        if let Err(error) = dropped {
            tracing::debug!(%error, "could not drop purged answers from the replay cache");
        }
    }

    pub async fn lookup(&self, request: &IdempotentRequest) -> Option<Cached> {
        let key = Self::redis_key(request);
        let value = self
            .nodes
            .primary()
            .call(async |c| {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<Vec<u8>>>(c)
                    .await
            })
            .await
            .inspect_err(|error| tracing::debug!(%error, "replay cache unavailable"))
            .ok()??;
        decode(&value, request.fingerprint)
    }

    /// Caches a committed answer. Best effort: a failure only costs a database lookup later.
    pub async fn store(&self, request: &IdempotentRequest, response: &StoredResponse) {
        let key = Self::redis_key(request);
        let value = encode(request.fingerprint, response);
        let ttl_ms = u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX);
        let stored = self
            .nodes
            .primary()
            .call(async |c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<()>(c)
                    .await
            })
            .await;
        if let Err(error) = stored {
            tracing::debug!(%error, "could not cache a replay");
        }
    }
}

/// Hashed: idempotency keys are client-chosen and may hold characters a Redis key should not.
fn cache_key(tenant: TenantId, idempotency_key: &str) -> String {
    let digest = Sha256::digest(idempotency_key.as_bytes());
    format!("walletd:idem:{tenant}:{}", hex::encode(digest))
}

/// `fingerprint (32 bytes) || status (2 bytes, big endian) || body`.
fn encode(fingerprint: Fingerprint, response: &StoredResponse) -> Vec<u8> {
    let mut value = Vec::with_capacity(34 + response.body.len());
    value.extend_from_slice(fingerprint.as_bytes());
    value.extend_from_slice(&response.status.to_be_bytes());
    value.extend_from_slice(&response.body);
    value
}

fn decode(value: &[u8], fingerprint: Fingerprint) -> Option<Cached> {
    let (stored_fingerprint, rest) = value.split_at_checked(32)?;
    let (status, body) = rest.split_at_checked(2)?;
    if stored_fingerprint != fingerprint.as_bytes() {
        return Some(Cached::Reused);
    }
    Some(Cached::Replay(StoredResponse {
        status: u16::from_be_bytes([status[0], status[1]]),
        body: body.to_vec(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_detect_another_request() {
        let fingerprint = Fingerprint::of("POST", "/v1/wallets", b"{}");
        let response = StoredResponse {
            status: 422,
            body: b"{\"code\":\"x\"}".to_vec(),
        };
        let value = encode(fingerprint, &response);
        assert!(matches!(decode(&value, fingerprint), Some(Cached::Replay(r)) if r == response));
        let other = Fingerprint::of("POST", "/v1/wallets", b"{\"a\":1}");
        assert!(matches!(decode(&value, other), Some(Cached::Reused)));
        assert!(decode(&value[..10], fingerprint).is_none());
    }
}
