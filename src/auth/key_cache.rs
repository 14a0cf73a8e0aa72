//! What this process remembers about API keys, so that most requests never touch Postgres to
//! authenticate — including requests that present key ids nobody issued.
//!
//! - **Known keys** (active or revoked) are trusted for `auth.cache_ttl_ms` (1 s by default):
//!   that bounds how long a revocation takes to reach a replica without Redis.
//! - **Unknown key ids** are remembered for `auth.negative_cache_ttl_ms`, so a client repeating
//!   a made-up or deleted key id costs one lookup per TTL, not one per request. Key ids are
//!   server-issued UUIDv7s (74 random bits), so a "not found" answer cannot hide a key
//!   created later except by a lucky guess.
//! - **Lookups** of ids never seen before are capped at `auth.lookups_concurrent_max` at once,
//!   so a flood of distinct made-up ids holds at most that many pooled connections; the rest
//!   wait at most `auth.lookup_wait_ms_max` and then answer 503. Refreshes of keys seen before
//!   skip that queue, so such a flood never locks real callers out.
//!
//! Both maps are bounded by entry count; a full map is cleared rather than grown (expired
//! entries first), and the negative map is separate so that a flood of unknown ids can never
//! evict the keys of real callers.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use super::Caller;
use crate::domain::KeyId;

/// Most known keys held before the map is cleared.
const KNOWN_KEYS_MAX: usize = 10_000;
/// Most unknown key ids held before the map is cleared.
const UNKNOWN_KEYS_MAX: usize = 10_000;

/// A key row as far as authentication needs it.
#[derive(Clone)]
pub struct KnownKey {
    pub secret_hash: Vec<u8>,
    /// `None` once revoked.
    pub caller: Option<Caller>,
}

/// What the cache can say about a key id without Postgres.
pub enum Cached {
    Known(KnownKey),
    Unknown,
}

pub struct KeyCache {
    known_ttl: Duration,
    unknown_ttl: Duration,
    known: Mutex<HashMap<KeyId, (Instant, KnownKey)>>,
    unknown: Mutex<HashMap<KeyId, Instant>>,
    lookups: Semaphore,
    lookups_max: usize,
    lookup_wait_max: Duration,
}

/// Postgres lookup slots were all busy for `auth.lookup_wait_ms_max`.
#[derive(Debug, thiserror::Error)]
#[error("all {slots} key lookup slots stayed busy for {waited_ms} ms")]
pub struct LookupsBusy {
    pub slots: usize,
    pub waited_ms: u128,
}

impl KeyCache {
    pub fn new(
        known_ttl: Duration,
        unknown_ttl: Duration,
        lookups_concurrent_max: usize,
        lookup_wait_max: Duration,
    ) -> Self {
        Self {
            known_ttl,
            unknown_ttl,
            known: Mutex::default(),
            unknown: Mutex::default(),
            lookups: Semaphore::new(lookups_concurrent_max),
            lookups_max: lookups_concurrent_max,
            lookup_wait_max,
        }
    }

    pub fn get(&self, key: KeyId) -> Option<Cached> {
        {
            let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((fetched_at, entry)) = known.get(&key)
                && fetched_at.elapsed() < self.known_ttl
            {
                return Some(Cached::Known(entry.clone()));
            }
        }
        let unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        unknown
            .get(&key)
            .filter(|seen_at| seen_at.elapsed() < self.unknown_ttl)
            .map(|_| Cached::Unknown)
    }

    /// Caches a key row read from Postgres by a query that started at `queried_at` (the entry
    /// ages from then, so a revocation committed during the query is seen within the TTL).
    pub fn put_known(&self, key: KeyId, entry: KnownKey, queried_at: Instant) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= KNOWN_KEYS_MAX {
            let ttl = self.known_ttl;
            known.retain(|_, (fetched_at, _)| fetched_at.elapsed() < ttl);
            if known.len() >= KNOWN_KEYS_MAX {
                known.clear();
            }
        }
        known.insert(key, (queried_at, entry));
    }

    /// Whether `key` was seen in Postgres before (its entry may have expired): such lookups are
    /// refreshes of real keys and do not queue behind lookups of made-up ones.
    pub fn was_known(&self, key: KeyId) -> bool {
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key)
    }

    /// Remembers that `key` does not exist; true if the map was full and had to be cleared.
    pub fn put_unknown(&self, key: KeyId) -> bool {
        let mut unknown = self.unknown.lock().unwrap_or_else(|e| e.into_inner());
        let mut cleared = false;
        if unknown.len() >= UNKNOWN_KEYS_MAX {
            let ttl = self.unknown_ttl;
            unknown.retain(|_, seen_at| seen_at.elapsed() < ttl);
            if unknown.len() >= UNKNOWN_KEYS_MAX {
                unknown.clear();
                cleared = true;
            }
        }
        unknown.insert(key, Instant::now());
        cleared
    }

    /// How many unknown key ids are remembered now (expired ones included until evicted).
    pub fn unknown_entries(&self) -> usize {
        self.unknown.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A slot for one Postgres key lookup, waiting at most `auth.lookup_wait_ms_max`.
    pub async fn lookup_slot(&self) -> Result<SemaphorePermit<'_>, LookupsBusy> {
        let started = Instant::now();
        let busy = || LookupsBusy {
            slots: self.lookups_max,
            waited_ms: started.elapsed().as_millis(),
        };
        match tokio::time::timeout(self.lookup_wait_max, self.lookups.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one would mean no lookups at all.
            Ok(Err(_)) | Err(_) => Err(busy()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(unknown_ttl_ms: u64) -> KeyCache {
        KeyCache::new(
            Duration::from_secs(1),
            Duration::from_millis(unknown_ttl_ms),
            1,
            Duration::from_millis(20),
        )
    }

    #[test]
    fn unknown_ids_are_remembered_for_their_ttl() {
        let cache = cache(50);
        let key = KeyId::generate();
        assert!(cache.get(key).is_none());
        assert!(!cache.put_unknown(key));
        assert!(matches!(cache.get(key), Some(Cached::Unknown)));
        assert_eq!(cache.unknown_entries(), 1);
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(key).is_none(), "expired entries are not served");
    }

    #[test]
    fn the_unknown_map_is_bounded_and_never_evicts_known_keys() {
        let cache = cache(60_000);
        let real = KeyId::generate();
        cache.put_known(
            real,
            KnownKey {
                secret_hash: vec![0; 32],
                caller: None,
            },
            Instant::now(),
        );
        let clears = (0..UNKNOWN_KEYS_MAX + 10)
            .filter(|_| cache.put_unknown(KeyId::generate()))
            .count();
        assert_eq!(clears, 1);
        assert!(cache.unknown_entries() <= UNKNOWN_KEYS_MAX);
        assert!(matches!(cache.get(real), Some(Cached::Known(_))));
    }

    #[tokio::test]
    async fn lookups_beyond_the_cap_wait_then_give_up() {
        let cache = cache(1000);
        let held = cache.lookup_slot().await.unwrap();
        assert!(cache.lookup_slot().await.is_err());
        drop(held);
        assert!(cache.lookup_slot().await.is_ok());
    }
}
