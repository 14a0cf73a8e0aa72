//! Retention of stored answers: a bounded background job that drops the stored *bodies* of
//! completed keys older than `idempotency.retention_hours` (at least 24, API.md), in batches.
//!
//! The key row, its fingerprint and its wallet are kept forever (state `expired`), so "one
//! entry per key, ever" still holds and a very late retry answers 410
//! `idempotency_key_expired` instead of executing again. Every replica runs the job; batches
//! take their rows `FOR UPDATE SKIP LOCKED`, so replicas never wait on each other or on a
//! request. The cutoff is computed on the database's clock, the one that stamped
//! `completed_at`, so an application clock running ahead cannot drop answers early.

use std::time::Duration;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Text, Uuid as SqlUuid};
use diesel_async::RunQueryDsl;

use super::replay_cache::ReplayCache;
use crate::config::IdempotencySettings;
use crate::db::PgPool;
use crate::domain::TenantId;
use crate::metrics::Metrics;

/// What one run of the job may do.
#[derive(Debug, Clone, Copy)]
pub struct RetentionPolicy {
    pub retention: Duration,
    pub batch_size: u32,
    pub batches_per_run_max: u32,
}

impl RetentionPolicy {
    pub fn from_settings(settings: &IdempotencySettings) -> Self {
        Self {
            retention: Duration::from_secs(settings.retention_hours.saturating_mul(3600)),
            batch_size: settings.purge_batch_size,
            batches_per_run_max: settings.purge_batches_per_run_max,
        }
    }
}

/// Runs the job every `interval` until the process ends. A failed run is logged and retried at
/// the next interval; nothing depends on it finishing.
pub async fn run_forever(
    pool: PgPool,
    replay_cache: ReplayCache,
    metrics: std::sync::Arc<Metrics>,
    policy: RetentionPolicy,
    interval: Duration,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match purge_expired_answers(&pool, &replay_cache, policy).await {
            Ok(0) => {}
            Ok(purged) => {
                metrics.record_purged(purged);
                tracing::info!(purged, "dropped stored answers past retention");
            }
            Err(error) => tracing::warn!(%error, "purging stored answers failed; will retry"),
        }
    }
}

#[derive(QueryableByName)]
struct PurgedKey {
    #[diesel(sql_type = SqlUuid)]
    tenant_id: uuid::Uuid,
    #[diesel(sql_type = Text)]
    idempotency_key: String,
}

/// One run: at most `batches_per_run_max` batches of `batch_size` answers completed before
/// the database's `now() - retention`, each batch's keys also dropped from the replay cache. Returns how many
/// answers were dropped.
pub async fn purge_expired_answers(
    pool: &PgPool,
    replay_cache: &ReplayCache,
    policy: RetentionPolicy,
) -> anyhow::Result<u64> {
    let retention_s = i64::try_from(policy.retention.as_secs())?;
    let batch_size = i32::try_from(policy.batch_size).unwrap_or(i32::MAX);
    let mut conn = pool.get().await?;
    let mut purged: u64 = 0;
    for _ in 0..policy.batches_per_run_max {
        let purged_keys: Vec<PurgedKey> = diesel::sql_query(
            "WITH batch AS ( \
                 SELECT result_id FROM idempotency_keys \
                 WHERE state = 'completed' AND completed_at < now() - $1 * interval '1 second' \
                 ORDER BY completed_at LIMIT $2 \
                 FOR UPDATE SKIP LOCKED) \
             UPDATE idempotency_keys k \
             SET state = 'expired', response_body = NULL, expired_at = now() \
             FROM batch \
             WHERE k.result_id = batch.result_id \
             RETURNING k.tenant_id, k.idempotency_key",
        )
        .bind::<BigInt, _>(retention_s)
        .bind::<Integer, _>(batch_size)
        .load(&mut conn)
        .await?;
        let keys: Vec<(TenantId, String)> = purged_keys
            .into_iter()
            .map(|row| (TenantId::from_uuid(row.tenant_id), row.idempotency_key))
            .collect();
        replay_cache.forget(&keys).await;
        purged += keys.len() as u64;
        if keys.len() < policy.batch_size as usize {
            break;
        }
    }
    Ok(purged)
}
