//! Black-box tests of walletd over HTTP, against real Postgres and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod audit;
mod balance_cache;
mod batching;
mod catalog;
mod cli;
mod concurrency;
mod errors;
mod events_tail;
mod export;
mod fairness;
mod faults;
mod hardening;
mod helpers;
mod holds;
mod idempotency;
mod ledger_db;
mod logging;
mod metrics;
mod openapi;
mod ops;
mod outbox;
mod pipelined;
mod prepared;
mod redlock;
mod reversals;
mod row_lock;
mod tenants;
mod wallets;
