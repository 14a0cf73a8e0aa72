//! The hold expiry sweeper: a bounded background job that releases active holds past their
//! `expires_at` and raises their wallets' `version`. Correctness does not wait for it — a
//! capture of an expired hold is refused (and expires it) whenever it comes — the sweeper only
//! returns the money to `available` without anyone asking.
//!
//! Every replica runs it; each wallet is handled in its own transaction under its row lock,
//! like any other change of that wallet, so it never races a capture.

use std::time::Duration;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use super::append::entry_time;
use super::changes::{Changes, CommitEffects};
use crate::db::PgPool;
use crate::db::schema::holds;

/// Wallets handled per run at most (each in its own transaction).
const WALLETS_PER_RUN_MAX: i64 = 500;

/// Runs the sweeper every `interval` until the process ends; a failed run is logged and
/// retried at the next interval.
pub async fn run_forever(pool: PgPool, effects: CommitEffects, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match sweep(&pool, &effects).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(expired, "expired holds released"),
            Err(error) => tracing::warn!(%error, "hold sweeper failed; will retry"),
        }
    }
}

/// One run: releases the due holds of at most [`WALLETS_PER_RUN_MAX`] wallets; returns how
/// many holds it expired.
pub async fn sweep(pool: &PgPool, effects: &CommitEffects) -> anyhow::Result<usize> {
    let at = entry_time();
    let mut conn = pool.get().await?;
    let wallets: Vec<uuid::Uuid> = holds::table
        .filter(holds::status.eq("active"))
        .filter(holds::expires_at.le(at))
        .select(holds::wallet_id)
        .distinct()
        .limit(WALLETS_PER_RUN_MAX)
        .load(&mut conn)
        .await?;
    let mut expired = 0;
    for wallet in wallets {
        // One wallet's trouble (a lock held by a long request, a timeout) must not stop the
        // others: it is logged, and the next run tries it again.
        // Like any change of a wallet: its events in the transaction, its cache entry marked
        // before the commit and updated after.
        let swept = conn
            .transaction(async |c| {
                let mut changes = Changes::default();
                let count = super::holds::expire_due(c, wallet, entry_time(), &mut changes).await?;
                crate::outbox::insert(c, changes.events()).await?;
                let mark = effects.before_commit(&changes).await;
                Ok::<_, super::transaction::TxError>((count, changes, mark))
            })
            .await;
        match swept {
            Ok((count, changes, mark)) => {
                effects.after_commit(&changes, mark).await;
                expired += count;
            }
            Err(error) => {
                tracing::warn!(%wallet, %error, "could not release a wallet's expired holds")
            }
        }
    }
    Ok(expired)
}
