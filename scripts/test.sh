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
trap drop_test_databases EXIT

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
echo "== chaos (scripts/chaos.sh)"
scripts/chaos.sh
echo "== schemathesis (scripts/schemathesis.sh)"
scripts/schemathesis.sh
