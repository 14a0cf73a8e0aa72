//! Black-box tests of walletd over HTTP, against real Postgres and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod cli;
mod concurrency;
mod errors;
mod faults;
mod helpers;
mod idempotency;
mod ledger_db;
mod ops;
mod redlock;
mod tenants;
mod wallets;
