//! The Redis side of layer 1: completed answers, cached on the first Redis node so that
//! retries (a retry storm, a client replaying after a timeout) are answered without Postgres,
//! and the in-flight marker that makes a twin answer 409 while the first request runs.
//!
//! Both live under one hash tag per (tenant, key), and one script looks up the answer and sets
//! the marker together: a fresh request spends one Redis round trip on layer 1 and none on
//! Postgres. Neither is trusted for correctness: an answer is cached only after its
//! transaction committed (a completed answer never changes), and the database refuses a second
//! row for a key whatever Redis says (a marker that is lost, lapsed or never set only means a
//! twin meets the primary key instead, and is answered from the stored row). A request that
//! finds a marker reads Postgres before answering 409, so a marker left behind by a request
//! that just committed (or crashed) never hides a stored answer.

use std::time::Duration;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::idempotency::{Fingerprint, IdempotentRequest};
use super::outcome::StoredResponse;
use crate::domain::TenantId;
use crate::redis_nodes::RedisNodes;

/// What the Redis side knows about a key, and what it did.
pub enum Lookup {
    /// The same request was answered: replay this.
    Replay(StoredResponse),
    /// The key was used for a different request.
    Reused,
    /// No answer cached, and this request's marker is now set.
    Marked,
    /// No answer cached, and another request's marker is set: it may be running.
    Busy,
    /// Redis did not answer: only Postgres can tell.
    Unavailable,
}

/// Returns the cached answer (`{1, value}`), or sets the marker (`{2, ''}`), or reports
/// another's marker (`{3, ''}`). KEYS: answer, marker. ARGV: token, lease in ms.
const LOOKUP_AND_MARK: &str = r#"
local answer = redis.call('GET', KEYS[1])
if answer then return {1, answer} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
return {3, ''}
"#;

/// Caches the answer, then clears the marker if it is still ours. KEYS: answer, marker.
/// ARGV: value, ttl in ms, token ('' when we set none).
const STORE_AND_UNMARK: &str = r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"#;

/// Clears the marker if it is still ours. KEYS: marker. ARGV: token.
const UNMARK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

#[derive(Clone)]
pub struct ReplayCache {
    nodes: RedisNodes,
    ttl: Duration,
}

impl ReplayCache {
    pub fn new(nodes: RedisNodes, ttl: Duration) -> Self {
        Self { nodes, ttl }
    }

    /// Drops the cached answers of keys whose stored answers were purged, so that a retry
    /// learns at once that the key expired. Best effort: what stays expires with its TTL.
    pub async fn forget(&self, keys: &[(TenantId, String)]) {
        if keys.is_empty() {
            return;
        }
        let cache_keys: Vec<String> = keys
            .iter()
            .map(|(tenant, key)| RedisKeys::of(*tenant, key).answer)
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

    /// Layer 1's first step: the cached answer, or this request's in-flight marker set (for
    /// `lease`, after which a crashed request's key is free again), in one round trip.
    pub async fn lookup_and_mark(
        &self,
        request: &IdempotentRequest,
        token: Uuid,
        lease: Duration,
    ) -> Lookup {
        let keys = RedisKeys::of(request.tenant, request.key.as_str());
        let script = redis::Script::new(LOOKUP_AND_MARK);
        let mut invocation = script.key(&keys.answer);
        invocation
            .key(&keys.marker)
            .arg(token.simple().to_string())
            .arg(millis(lease));
        let found: Result<(i64, Vec<u8>), _> = self
            .nodes
            .primary()
            .call(async |c| invocation.invoke_async(c).await)
            .await;
        match found {
            Ok((1, value)) => match decode(&value, request.fingerprint) {
                Some(cached) => cached,
                // Not ours to read (a foreign value): Postgres decides.
                None => Lookup::Unavailable,
            },
            Ok((2, _)) => Lookup::Marked,
            Ok((3, _)) => Lookup::Busy,
            Ok(other) => {
                tracing::warn!(
                    reply = other.0,
                    "unexpected replay-cache reply; asking Postgres"
                );
                Lookup::Unavailable
            }
            Err(error) => {
                tracing::debug!(%error, "replay cache unavailable; asking Postgres");
                Lookup::Unavailable
            }
        }
    }

    /// Caches a committed answer and clears our marker (`token`, if we set one). Best effort:
    /// a failure only costs a database lookup later, and a marker left behind lapses.
    pub async fn store(
        &self,
        request: &IdempotentRequest,
        response: &StoredResponse,
        token: Option<Uuid>,
    ) {
        let keys = RedisKeys::of(request.tenant, request.key.as_str());
        let script = redis::Script::new(STORE_AND_UNMARK);
        let mut invocation = script.key(&keys.answer);
        invocation
            .key(&keys.marker)
            .arg(encode(request.fingerprint, response))
            .arg(millis(self.ttl))
            .arg(token.map(|t| t.simple().to_string()).unwrap_or_default());
        let stored: Result<i64, _> = self
            .nodes
            .primary()
            .call(async |c| invocation.invoke_async(c).await)
            .await;
        if let Err(error) = stored {
            tracing::debug!(%error, "could not cache a replay");
        }
    }

    /// Clears our marker: the request ends with nothing stored, and a retry must execute
    /// afresh at once. Best effort: a marker left behind lapses with its lease.
    pub async fn unmark(&self, request: &IdempotentRequest, token: Uuid) {
        let keys = RedisKeys::of(request.tenant, request.key.as_str());
        let script = redis::Script::new(UNMARK);
        let mut invocation = script.key(&keys.marker);
        invocation.arg(token.simple().to_string());
        let cleared: Result<i64, _> = self
            .nodes
            .primary()
            .call(async |c| invocation.invoke_async(c).await)
            .await;
        if let Err(error) = cleared {
            tracing::debug!(%error, "could not clear an in-flight marker; it lapses with its lease");
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A key's two Redis keys. Hashed: idempotency keys are client-chosen and may hold characters a
/// Redis key should not; one hash tag, so a script may touch both on a Redis Cluster.
struct RedisKeys {
    answer: String,
    marker: String,
}

impl RedisKeys {
    fn of(tenant: TenantId, idempotency_key: &str) -> Self {
        let digest = hex::encode(Sha256::digest(idempotency_key.as_bytes()));
        Self {
            answer: format!("walletd:idem:{{{tenant}:{digest}}}"),
            marker: format!("walletd:inflight:{{{tenant}:{digest}}}"),
        }
    }
}

/// `fingerprint (32 bytes) || status (2 bytes, big endian) || body`.
fn encode(fingerprint: Fingerprint, response: &StoredResponse) -> Vec<u8> {
    let mut value = Vec::with_capacity(34 + response.body.len());
    value.extend_from_slice(fingerprint.as_bytes());
    value.extend_from_slice(&response.status.to_be_bytes());
    value.extend_from_slice(&response.body);
    value
}

fn decode(value: &[u8], fingerprint: Fingerprint) -> Option<Lookup> {
    let (stored_fingerprint, rest) = value.split_at_checked(32)?;
    let (status, body) = rest.split_at_checked(2)?;
    if stored_fingerprint != fingerprint.as_bytes() {
        return Some(Lookup::Reused);
    }
    Some(Lookup::Replay(StoredResponse {
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
        assert!(matches!(decode(&value, fingerprint), Some(Lookup::Replay(r)) if r == response));
        let other = Fingerprint::of("POST", "/v1/wallets", b"{\"a\":1}");
        assert!(matches!(decode(&value, other), Some(Lookup::Reused)));
        assert!(decode(&value[..10], fingerprint).is_none());
    }
}
