//! Authentication (`Authorization: Bearer <key>`) and scope checks for `/v1` routes.
//!
//! Keys, and key ids that do not exist, are cached in-process ([`key_cache`]), so most requests
//! and every repeated made-up key cost no database round trip; lookups that do reach Postgres
//! are capped in number, so unauthenticated traffic cannot take the pool from debits.

pub mod admission;
pub mod key_cache;
pub mod keys;

use std::sync::Arc;
use std::time::Instant;

use crate::config::{Settings, ms};
use crate::db::PgPool;
use crate::domain::{KeyId, Scope, TenantId};
use crate::metrics::Metrics;
use crate::redis_nodes::RedisNodes;
use key_cache::{Cached, KeyCache, KnownKey};
use keys::PresentedKey;

/// Why a request has no caller, or may not proceed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No key, a malformed, unknown or revoked key, or a wrong secret: 401.
    #[error("a valid API key is required")]
    Unauthorized,
    /// The key's per-second rate limit is spent: 429.
    #[error("rate limit exceeded; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    /// The key could not be checked (Postgres down, lookup slots busy): 503.
    #[error("the API key could not be checked")]
    Unavailable(#[source] anyhow::Error),
}

/// The key lacks the scope a route needs: 403.
#[derive(Debug, thiserror::Error)]
#[error("this API key lacks the {0} scope")]
pub struct MissingScope(pub &'static str);

/// A request's verified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub key: KeyId,
    scopes: Vec<Scope>,
}

impl Caller {
    /// 403 `forbidden` unless the key carries `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), MissingScope> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(MissingScope(scope.as_str()))
        }
    }
}

/// Authentication and admission of `/v1` callers: the key cache, the database it falls back
/// to, and the Redis admission check.
#[derive(Clone)]
pub struct Authenticator {
    key_cache: Arc<KeyCache>,
    db: PgPool,
    redis: RedisNodes,
    metrics: Arc<Metrics>,
    requests_per_second: u32,
}

impl Authenticator {
    pub fn new(db: PgPool, redis: RedisNodes, metrics: Arc<Metrics>, settings: &Settings) -> Self {
        Self {
            key_cache: Arc::new(KeyCache::new(
                ms(settings.auth.cache_ttl_ms),
                ms(settings.auth.negative_cache_ttl_ms),
                settings.auth.lookups_concurrent_max,
                ms(settings.auth.lookup_wait_ms_max),
            )),
            db,
            redis,
            metrics,
            requests_per_second: settings.rate_limit.requests_per_second,
        }
    }

    /// The caller behind a bearer token, admitted (not revoked, within its rate limit).
    /// `known` hears of the tenant once the key is verified, before admission, so that a
    /// refused request is still attributed to its tenant.
    pub async fn caller(
        &self,
        token: Option<&str>,
        known: impl FnOnce(&Caller),
    ) -> Result<Caller, AuthError> {
        let caller = self.authenticate(token).await?;
        known(&caller);
        admission::admit(&self.redis, self.requests_per_second, caller.key).await?;
        Ok(caller)
    }

    /// Key ids remembered as unknown, for `/metrics`.
    pub fn unknown_key_entries(&self) -> usize {
        self.key_cache.unknown_entries()
    }

    /// Verifies the bearer token: 401 if absent, malformed, unknown, revoked or wrong.
    async fn authenticate(&self, token: Option<&str>) -> Result<Caller, AuthError> {
        let presented = token
            .and_then(PresentedKey::parse)
            .ok_or(AuthError::Unauthorized)?;
        let known = match self.key_cache.get(presented.key_id) {
            Some(Cached::Known(known)) => known,
            Some(Cached::Unknown) => {
                self.metrics.record_unknown_key("hit");
                return Err(AuthError::Unauthorized);
            }
            None => self.look_up(presented.key_id).await?,
        };
        if !presented.matches(&known.secret_hash) {
            return Err(AuthError::Unauthorized);
        }
        known.caller.ok_or(AuthError::Unauthorized)
    }

    /// The key's row from Postgres — for ids never seen before, within the cache's cap on
    /// concurrent lookups; the answer, found or not, is cached.
    async fn look_up(&self, key: KeyId) -> Result<KnownKey, AuthError> {
        let unavailable = |error: anyhow::Error| AuthError::Unavailable(error);
        let _slot = if self.key_cache.was_known(key) {
            None
        } else {
            let slot = self.key_cache.lookup_slot().await;
            Some(slot.map_err(|busy| unavailable(busy.into()))?)
        };
        // Requests with the same id may have queued for a slot together: the first one's
        // answer serves the rest.
        match self.key_cache.get(key) {
            Some(Cached::Known(known)) => return Ok(known),
            Some(Cached::Unknown) => return Err(AuthError::Unauthorized),
            None => {}
        }
        let mut conn = self.db.get().await.map_err(|e| unavailable(e.into()))?;
        let queried_at = Instant::now();
        let Some(row) = keys::find_key(&mut conn, key)
            .await
            .map_err(|e| unavailable(e.into()))?
        else {
            if self.key_cache.put_unknown(key) {
                self.metrics.record_unknown_key("clear");
            }
            self.metrics.record_unknown_key("insert");
            return Err(AuthError::Unauthorized);
        };
        let known = KnownKey {
            secret_hash: row.secret_hash,
            caller: row.revoked_at.is_none().then(|| Caller {
                tenant: TenantId::from_uuid(row.tenant_id),
                key: KeyId::from_uuid(row.id),
                scopes: row.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            }),
        };
        self.key_cache.put_known(key, known.clone(), queried_at);
        Ok(known)
    }
}
