#!/usr/bin/env bash
# Throughput benchmark on loopback: a release walletd with its own database, 16 concurrent
# clients debiting 16 distinct wallets. Prints each round and the median debits/s.
#   scripts/bench.sh [clients=16] [debits_per_client=200] [rounds=3]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh
cargo build --release --locked --bin walletd --example bench_debits 2>&1 | tail -1
bin="${CARGO_TARGET_DIR:-target}/release"

PORT="${BENCH_PORT:-18080}"
export DATABASE_URL="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/walletd_bench}"
export WALLETD_BIND="127.0.0.1:$PORT"
export WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND=0
export RUST_LOG=warn

"$bin/walletd" migrate
key=$("$bin/walletd" tenant create bench | sed -E 's/.*"api_key":"([^"]+)".*/\1/')
"$bin/walletd" serve &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do curl -fs "http://$WALLETD_BIND/healthz" >/dev/null 2>&1 && break; sleep 0.2; done

"$bin/examples/bench_debits" "http://$WALLETD_BIND" "$key" "${1:-16}" "${2:-200}" "${3:-3}"
