//! Authentication (`Authorization: Bearer <key>`) and scope checks for `/v1` routes.
//!
//! Verified keys are cached in-process for `auth.cache_ttl_ms` (1 s by default): that bounds how
//! long a revoked key keeps working on any replica, and spares a database round trip on most
//! requests. The cache is bounded; when full it is cleared rather than grown.

pub mod admission;
pub mod keys;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};

use crate::api::error::ApiError;
use crate::domain::{KeyId, Scope, TenantId};
use crate::startup::AppState;
use keys::PresentedKey;

/// Most keys the cache holds before it is cleared.
const KEY_CACHE_ENTRIES_MAX: usize = 10_000;

/// A request's verified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: TenantId,
    pub key: KeyId,
    scopes: Vec<Scope>,
}

impl Caller {
    /// 403 `forbidden` unless the key carries `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(&scope) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(scope.as_str()))
        }
    }
}

#[derive(Clone)]
struct CachedKey {
    secret_hash: Vec<u8>,
    caller: Option<Caller>,
    fetched_at: Instant,
}

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<KeyId, CachedKey>>,
}

impl KeyCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, key: KeyId) -> Option<CachedKey> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&key)
            .filter(|cached| cached.fetched_at.elapsed() < self.ttl)
            .cloned()
    }

    fn put(&self, key: KeyId, cached: CachedKey) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= KEY_CACHE_ENTRIES_MAX {
            entries.clear();
        }
        entries.insert(key, cached);
    }
}

/// Verifies the bearer token: 401 if absent, malformed, unknown, revoked or wrong.
async fn authenticate(state: &AppState, token: Option<&str>) -> Result<Caller, ApiError> {
    let presented = token
        .and_then(PresentedKey::parse)
        .ok_or(ApiError::Unauthorized)?;
    let cached = match state.key_cache.get(presented.key_id) {
        Some(cached) => cached,
        None => {
            let mut conn = state.db.get().await.map_err(ApiError::from_pool)?;
            let row = keys::find_key(&mut conn, presented.key_id)
                .await
                .map_err(ApiError::from_db)?
                .ok_or(ApiError::Unauthorized)?;
            let caller = row.revoked_at.is_none().then(|| Caller {
                tenant: TenantId::from_uuid(row.tenant_id),
                key: KeyId::from_uuid(row.id),
                scopes: row.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
            });
            let cached = CachedKey {
                secret_hash: row.secret_hash,
                caller,
                fetched_at: Instant::now(),
            };
            state.key_cache.put(presented.key_id, cached.clone());
            cached
        }
    };
    if !presented.matches(&cached.secret_hash) {
        return Err(ApiError::Unauthorized);
    }
    cached.caller.ok_or(ApiError::Unauthorized)
}

fn bearer_token(request: &HttpRequest) -> Option<&str> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(request: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = request.app_data::<web::Data<AppState>>().cloned();
        let token = bearer_token(request).map(str::to_owned);
        Box::pin(async move {
            let state =
                state.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("AppState missing")))?;
            let caller = authenticate(&state, token.as_deref()).await?;
            admission::admit(&state, caller.key).await?;
            Ok(caller)
        })
    }
}
