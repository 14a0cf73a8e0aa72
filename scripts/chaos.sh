#!/usr/bin/env bash
# Chaos proof: a private Postgres cluster, three Redis nodes and two walletd replicas on free
# loopback ports (never the shared 5432/6379), bounded concurrent load with idempotency keys,
# and in turn: one Redis node stopped, all Redis stopped, a Postgres restart, a walletd SIGKILL
# and restart, a SIGSTOP of walletd longer than the lock TTL. After each fault, once every replica
# reports ready, every request without a decision (no answer, client timeout, 408, 409, 429, 5xx)
# is retried with its same key, and the ledger is checked from the API: one line per fault (lost
# and duplicated must be 0); exit status non-zero on any violation (a 500 or any other unexpected
# status included).
# Bounded: about 1-2 minutes, killed after 5. Everything it starts is cleaned up.
#   scripts/chaos.sh            (CHAOS_LOG_DIR=dir keeps the walletd and Postgres logs)
set -euo pipefail
cd "$(dirname "$0")/.."
# Same target set as schemathesis.sh, so the two share one build (examples pull in
# dev-dependency features, which would otherwise rebuild walletd for each script).
cargo build --locked --bin walletd --examples
bin="${CARGO_TARGET_DIR:-target}/debug"
exec timeout -k 10 300 "$bin/examples/chaos" "$bin/walletd"
