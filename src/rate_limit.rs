//! Per-API-key rate limit, shared by all replicas through the first Redis node.
//!
//! A fixed one-second window: `INCR walletd:rl:<key>:<unix second>` with a 2 s expiry. Simple,
//! one round trip, and exact enough for shedding abuse. If Redis cannot answer, requests are
//! let through (fail open): a rate limiter must not turn a Redis outage into an API outage.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::api::error::ApiError;
use crate::domain::KeyId;
use crate::startup::AppState;

pub async fn check(state: &AppState, key: KeyId) -> Result<(), ApiError> {
    let limit = state.settings.rate_limit.requests_per_second;
    if limit == 0 {
        return Ok(());
    }
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let counter = format!("walletd:rl:{key}:{second}");
    let count = state
        .redis
        .primary()
        .call(async |c| {
            redis::pipe()
                .incr(&counter, 1)
                .expire(&counter, 2)
                .ignore()
                .query_async::<(u64,)>(c)
                .await
        })
        .await;
    match count {
        Ok((count,)) if count > u64::from(limit) => Err(ApiError::RateLimited { retry_after_s: 1 }),
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::debug!(%error, "rate limiter unavailable; letting the request through");
            Ok(())
        }
    }
}
