//! What every handler can reach: the business core, the read-side pool, authentication,
//! metrics and the readiness probe. Built once at start; cheap to clone (all shared).

use std::sync::Arc;

use tokio::sync::Notify;

use crate::auth::Authenticator;
use crate::balance_cache::BalanceCache;
use crate::config::Settings;
use crate::db::{self, PgPool};
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::pipeline::changes::CommitEffects;
use crate::readiness::ReadinessProbe;
use crate::redis_nodes::RedisNodes;

/// Everything a request needs; cheap to clone (all shared).
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub redis: RedisNodes,
    /// The mutating path (the business core).
    pub pipeline: Arc<Pipeline>,
    /// Authentication and admission of `/v1` callers.
    pub auth: Authenticator,
    /// The balance read cache of `GET /v1/wallets/{id}`.
    pub cache: BalanceCache,
    /// Wakes the outbox relay after a commit (the pipeline and the sweeper signal it).
    pub relay_wake: Arc<Notify>,
    /// What the sweeper shares with the pipeline around each commit.
    pub effects: CommitEffects,
    pub metrics: Arc<Metrics>,
    pub settings: Arc<Settings>,
    pub readiness: Arc<ReadinessProbe>,
}

impl AppState {
    pub fn new(settings: &Settings) -> anyhow::Result<Self> {
        settings.validate()?;
        let redis = RedisNodes::connect(&settings.redis)?;
        let db = db::build_pool(&settings.database)?;
        let metrics = Arc::new(Metrics::new()?);
        let addresses: Vec<&str> = redis.all().iter().map(|node| node.label()).collect();
        metrics.describe_redis_nodes(&addresses);
        let cache = BalanceCache::new(redis.clone(), settings.cache.clone(), Arc::clone(&metrics));
        let relay_wake = Arc::new(Notify::new());
        let effects = CommitEffects::new(cache.clone(), Arc::clone(&relay_wake));
        Ok(Self {
            pipeline: Arc::new(Pipeline::new(
                db.clone(),
                &redis,
                effects.clone(),
                Arc::clone(&metrics),
                settings,
            )),
            cache,
            relay_wake,
            effects,
            auth: Authenticator::new(db.clone(), redis.clone(), Arc::clone(&metrics), settings),
            db,
            redis,
            metrics,
            settings: Arc::new(settings.clone()),
            readiness: Arc::default(),
        })
    }
}
