#!/usr/bin/env bash
# Contract test of GET /openapi.json against a running walletd with Schemathesis, every check on:
# no 5xx, every status / content type / header / body as documented, schema-valid requests
# accepted, schema-invalid ones refused, 401 without the key, 405 with Allow for other methods.
#   scripts/schemathesis.sh [more `st run` options, e.g. --seed 1 --report junit]
# Uses a private database (walletd_schemathesis, dropped first so runs are repeatable) on the
# shared Postgres, and the shared Redis. Exits non-zero when Schemathesis reports any failure.
# Configuration: scripts/schemathesis.toml; hooks: scripts/schemathesis_hooks.py.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=.walletd/venv
ADMIN_URL="${SCHEMATHESIS_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DB_NAME=walletd_schemathesis
export DATABASE_URL="${ADMIN_URL%/*}/$DB_NAME"
export REDIS_URLS="${REDIS_URLS:-redis://127.0.0.1:6379}"
# Schemathesis sends thousands of requests with one key; the limiter would answer 429.
export WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND=0
export RUST_LOG="${RUST_LOG:-warn}"

log() { printf 'schemathesis.sh: %s\n' "$*" >&2; }

scripts/ensure-services.sh

# Schemathesis, pinned, in a venv that later runs reuse.
if [ "$("$VENV/bin/st" --version 2>/dev/null)" != "st, version $SCHEMATHESIS_VERSION" ]; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  if ! python3 -m venv "$VENV"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    else
      log "python3 -m venv failed: install python3-venv"; exit 1
    fi
  fi
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

# Same target set as chaos.sh, so the two share one build.
cargo build --locked --bin walletd --examples
walletd="${CARGO_TARGET_DIR:-target}/debug/walletd"

psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -qc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)"
"$walletd" migrate
api_key=$("$walletd" tenant create schemathesis | sed -nE 's/.*"api_key":"([^"]+)".*/\1/p')
[ -n "$api_key" ] || { log "walletd tenant create printed no api_key"; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export WALLETD_BIND="127.0.0.1:$port"
server_log=.walletd/schemathesis-walletd.log
"$walletd" serve --no-migrate >"$server_log" 2>&1 &
server=$!
stop_server() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for _ in $(seq 1 100); do
  curl -fs "http://$WALLETD_BIND/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { log "walletd exited:"; cat "$server_log" >&2; exit 1; }
  sleep 0.1
done
curl -fs "http://$WALLETD_BIND/healthz" >/dev/null || { log "walletd did not answer /healthz"; exit 1; }

# The API key reaches Schemathesis through the config's `bearer` auth (an Authorization header
# on every /v1 request; see schemathesis.toml for why not -H). The hooks give every request its
# own Idempotency-Key. Hypothesis keeps its scratch files under .walletd/.
status=0
WALLETD_API_KEY="$api_key" \
  HYPOTHESIS_STORAGE_DIRECTORY=.walletd/hypothesis \
  SCHEMATHESIS_HOOKS=scripts/schemathesis_hooks.py \
  "$VENV/bin/st" --config-file scripts/schemathesis.toml run \
  "http://$WALLETD_BIND/openapi.json" \
  --checks all \
  --no-color \
  "$@" || status=$?
if [ "$status" -ne 0 ]; then
  log "Schemathesis reported failures (exit $status); walletd's log: $server_log"
fi
exit "$status"
