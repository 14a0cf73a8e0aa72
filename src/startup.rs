//! Wiring: the shared state, the background jobs, the HTTP server.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::outbox::relay::Relay;
use crate::pipeline::expiry;
use crate::pipeline::retention::{self, RetentionPolicy};
use crate::redis_nodes::RedisNodes;

/// How often each Redis node is pinged for `walletd_redis_node_up`.
const REDIS_PROBE_INTERVAL: Duration = Duration::from_secs(1);

pub struct Application {
    port: u16,
    server: Server,
}

impl Application {
    /// Binds the listener (port 0 picks a free port, as tests do) and builds the server.
    /// Migrations are not run here: `walletd serve` (cli.rs) runs them first.
    pub fn build(settings: &Settings) -> anyhow::Result<Self> {
        let state = AppState::new(settings)?;
        let listener = TcpListener::bind(&settings.server.bind)
            .with_context(|| format!("binding {}", settings.server.bind))?;
        let port = listener.local_addr()?.port();
        let openapi = web::Data::new(api::openapi_json()?);
        tokio::spawn(retention::run_forever(
            state.db.clone(),
            state.pipeline.replay_cache().clone(),
            Arc::clone(&state.metrics),
            RetentionPolicy::from_settings(&settings.idempotency),
            Duration::from_secs(settings.idempotency.purge_interval_s),
        ));
        tokio::spawn(expiry::run_forever(
            state.db.clone(),
            state.effects.clone(),
            Duration::from_secs(settings.holds.sweep_interval_s),
        ));
        tokio::spawn(state.cache.clone().run_epoch_bumps_forever());
        tokio::spawn(probe_redis_nodes_forever(
            state.redis.clone(),
            Arc::clone(&state.metrics),
        ));
        if settings.events.relay_enabled {
            let relay = Relay::new(
                state.db.clone(),
                state.redis.clone(),
                settings.events.clone(),
                Arc::clone(&state.relay_wake),
                Arc::clone(&state.metrics),
            );
            tokio::spawn(relay.run_forever());
        } else {
            tracing::info!("events.relay_enabled = false: events are written, not published, here");
        }
        let state = web::Data::new(state);
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .app_data(openapi.clone())
                .wrap(from_fn(api::middleware::request_context))
                .configure(api::routes)
        })
        .shutdown_timeout(settings.server.shutdown_timeout_s);
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }
        let server = server.listen(listener)?.run();
        tracing::info!(port, "walletd listening");
        Ok(Self { port, server })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM/SIGINT, then drains in-flight requests for at most
    /// `server.shutdown_timeout_s`.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}

/// Pings every Redis node once per [`REDIS_PROBE_INTERVAL`] (each ping bounded by
/// `redis.command_timeout_ms`, all at once) and records who answered.
async fn probe_redis_nodes_forever(nodes: RedisNodes, metrics: Arc<Metrics>) {
    let mut ticks = tokio::time::interval(REDIS_PROBE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let answers =
            futures_util::future::join_all(nodes.all().iter().map(|node| node.ping())).await;
        for (index, up) in answers.into_iter().enumerate() {
            metrics.set_redis_node_up(index, up);
        }
    }
}
