//! The readiness probe behind `/readyz`, run at most once per [`PROBE_AGE_MAX`] whatever the
//! request rate: `/readyz` needs no authentication, so without this every call would take a
//! pooled Postgres connection and a round trip to each Redis node away from debits.
//!
//! Concurrent callers that find the last result too old wait for one probe together (a single
//! flight under an async mutex) and all get its result.

use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::db::{self, PgPool};
use crate::redis_nodes::RedisNodes;

/// Oldest probe result `/readyz` serves.
pub const PROBE_AGE_MAX: Duration = Duration::from_secs(1);

/// What one probe found.
#[derive(Debug, Clone)]
pub struct Probe {
    /// Postgres answers, takes writes and has every migration.
    pub postgres_up: bool,
    /// Each Redis node's label (`host:port`, never a password) and whether it answered.
    pub redis: Vec<(String, bool)>,
}

#[derive(Default)]
pub struct ReadinessProbe {
    last: tokio::sync::Mutex<Option<(Instant, Probe)>>,
}

impl ReadinessProbe {
    /// The latest probe result, probing again if it is older than [`PROBE_AGE_MAX`].
    pub async fn current(&self, db: &PgPool, redis: &RedisNodes) -> Probe {
        let mut last = self.last.lock().await;
        if let Some((probed_at, probe)) = last.as_ref()
            && probed_at.elapsed() < PROBE_AGE_MAX
        {
            return probe.clone();
        }
        // Stamped before probing, and the probe bounded by the same age: what is served is
        // never older than PROBE_AGE_MAX plus one probe. A probe that does not finish in time
        // counts as everything down.
        let probed_at = Instant::now();
        let probe = tokio::time::timeout(PROBE_AGE_MAX, probe(db, redis))
            .await
            .unwrap_or_else(|_| Probe {
                postgres_up: false,
                redis: redis
                    .all()
                    .iter()
                    .map(|node| (node.label().to_owned(), false))
                    .collect(),
            });
        *last = Some((probed_at, probe.clone()));
        probe
    }
}

async fn probe(db: &PgPool, redis: &RedisNodes) -> Probe {
    let (postgres_up, redis) = tokio::join!(
        postgres_ready(db),
        join_all(
            redis
                .all()
                .iter()
                .map(|node| async move { (node.label().to_owned(), node.ping().await) })
        )
    );
    Probe { postgres_up, redis }
}

async fn postgres_ready(pool: &PgPool) -> bool {
    let Ok(mut conn) = pool.get().await else {
        return false;
    };
    let checks = async {
        Ok::<_, anyhow::Error>(
            db::migrations_applied(&mut conn).await?
                && db::chain_complete(&mut conn).await?
                && db::accepts_writes(&mut conn).await?,
        )
    };
    match checks.await {
        Ok(ready) => ready,
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            false
        }
    }
}
