//! Black-box tests of walletd over HTTP, against real Postgres and Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod concurrency;
mod errors;
mod helpers;
mod idempotency;
mod ops;
mod wallets;
