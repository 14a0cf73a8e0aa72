//! walletd: an idempotent wallet debit/credit service.
//!
//! Reading order: [`pipeline`] (the four layers of a debit), then [`api`] (HTTP), [`domain`]
//! (parsed types), [`db`] (schema, pool), [`auth`], [`startup`] and [`cli`].

pub mod api;
pub mod auth;
pub mod balance_cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod ledger_audit;
pub mod metrics;
pub mod outbox;
pub mod pipeline;
pub mod problem;
pub mod readiness;
pub mod redis_nodes;
pub mod representation;
pub mod startup;
pub mod telemetry;
