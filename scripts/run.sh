#!/usr/bin/env bash
# Runs walletd on WALLETD_BIND (default 127.0.0.1:8080): makes sure Postgres and Redis are up,
# builds, creates the database if missing, applies migrations, serves.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
cargo build --release --locked
exec ./target/release/walletd serve
