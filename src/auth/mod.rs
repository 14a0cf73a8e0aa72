//! Authentication (`Authorization: Bearer <key>`) and scope checks for `/v1` routes.
//!
//! Keys, and key ids that do not exist, are cached in-process ([`key_cache`]), so most requests
//! and every repeated made-up key cost no database round trip; lookups that do reach Postgres
//! are capped in number, so unauthenticated traffic cannot take the pool from debits.

pub mod admission;
pub mod key_cache;
pub mod keys;

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};

use crate::api::error::ApiError;
use crate::domain::{KeyId, Scope, TenantId};
use crate::startup::AppState;
use key_cache::{Cached, KnownKey};
use keys::PresentedKey;

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

/// Verifies the bearer token: 401 if absent, malformed, unknown, revoked or wrong.
async fn authenticate(state: &AppState, token: Option<&str>) -> Result<Caller, ApiError> {
    let presented = token
        .and_then(PresentedKey::parse)
        .ok_or(ApiError::Unauthorized)?;
    let known = match state.key_cache.get(presented.key_id) {
        Some(Cached::Known(known)) => known,
        Some(Cached::Unknown) => {
            state.metrics.record_unknown_key("hit");
            return Err(ApiError::Unauthorized);
        }
        None => look_up(state, presented.key_id).await?,
    };
    if !presented.matches(&known.secret_hash) {
        return Err(ApiError::Unauthorized);
    }
    known.caller.ok_or(ApiError::Unauthorized)
}

/// The key's row from Postgres — for ids never seen before, within the cache's cap on
/// concurrent lookups; the answer, found or not, is cached.
async fn look_up(state: &AppState, key: KeyId) -> Result<KnownKey, ApiError> {
    let _slot = if state.key_cache.was_known(key) {
        None
    } else {
        let slot = state.key_cache.lookup_slot().await;
        Some(slot.map_err(|busy| ApiError::Unavailable(busy.into()))?)
    };
    // Requests with the same id may have queued for a slot together: the first one's answer
    // serves the rest.
    match state.key_cache.get(key) {
        Some(Cached::Known(known)) => return Ok(known),
        Some(Cached::Unknown) => return Err(ApiError::Unauthorized),
        None => {}
    }
    let mut conn = state.db.get().await.map_err(ApiError::from_pool)?;
    let queried_at = Instant::now();
    let Some(row) = keys::find_key(&mut conn, key)
        .await
        .map_err(ApiError::from_db)?
    else {
        let cleared = state.key_cache.put_unknown(key);
        state.metrics.record_unknown_key("insert");
        if cleared {
            state.metrics.record_unknown_key("clear");
        }
        return Err(ApiError::Unauthorized);
    };
    let known = KnownKey {
        secret_hash: row.secret_hash,
        caller: row.revoked_at.is_none().then(|| Caller {
            tenant: TenantId::from_uuid(row.tenant_id),
            key: KeyId::from_uuid(row.id),
            scopes: row.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
        }),
    };
    state.key_cache.put_known(key, known.clone(), queried_at);
    Ok(known)
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
