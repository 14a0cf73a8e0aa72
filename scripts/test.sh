#!/usr/bin/env bash
# Everything CI checks: formatting, lints, unit and integration tests against real Postgres
# and Redis. Test databases (walletd_t_*, and the migrated templates walletd_tpl_* they are
# cloned from) are dropped afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-services.sh

DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/walletd}"
server="${DATABASE_URL%/*}"
drop_test_databases() {
  command -v psql >/dev/null || return 0
  psql "$server/postgres" -qAt -c "SELECT datname FROM pg_database WHERE datname LIKE 'walletd\_t\_%' OR datname LIKE 'walletd\_tpl\_%'" 2>/dev/null |
    while read -r db; do
      psql "$server/postgres" -q -c "ALTER DATABASE \"$db\" IS_TEMPLATE false" -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
}
# Test streams, relay leases and cache entries (walletd:test:*) on the shared Redis.
drop_test_keys() {
  command -v redis-cli >/dev/null || return 0
  redis-cli -h 127.0.0.1 -p 6379 --scan --pattern 'walletd:test:*' 2>/dev/null |
    xargs -r -n 500 redis-cli -h 127.0.0.1 -p 6379 DEL >/dev/null 2>&1 || true
}
trap 'drop_test_databases; drop_test_keys' EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== deploy checks: alert rules and dashboard (scripts/check_deploy.sh), compose and nginx (scripts/check_compose.sh)"
scripts/check_deploy.sh
scripts/check_compose.sh
echo "== cargo test"
cargo test --locked --all-targets
echo "== chaos (scripts/chaos.sh)"
scripts/chaos.sh
echo "== schemathesis (scripts/schemathesis.sh)"
scripts/schemathesis.sh
echo "== OpenAPI generators, linters, generated-client smoke test, /docs in Chromium (scripts/openapi_check.sh)"
scripts/openapi_check.sh
echo "== cluster: 3 replicas behind nginx, 3 Redis, a replica killed, a Redis node stopped (scripts/cluster.sh)"
scripts/cluster.sh
