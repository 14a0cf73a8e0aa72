#!/usr/bin/env bash
# Checks GET /openapi.json of a running walletd with the tools clients and CI use, and /docs in
# a browser:
#   1. redocly lint (recommended ruleset + redocly.yaml): 0 errors, 0 warnings;
#   2. spectral lint (spectral:oas + .spectral.yaml): 0 errors, 0 warnings;
#   3. openapi-generator validate, then generate -g python, without --skip-validate-spec;
#   4. openapi-python-client generate: every operation, no warning; then a smoke test through
#      the generated client (scripts/openapi_check/smoke.py);
#   5. headless Chromium loads /docs (Swagger UI, vendored, every other host unreachable) and
#      must render every operation of the document.
#   scripts/openapi_check.sh
# Tools are pinned (scripts/openapi_check/requirements.txt, npm/package-lock.json) and
# installed once into $OPENAPI_TOOLS_DIR (default .walletd/openapi-tools). Java 17+ and
# Chromium are needed (installed with apt-get when missing and root). walletd runs on a free
# loopback port with its own database (walletd_openapi_check, dropped first) on the shared
# Postgres, and the shared Redis. Prints one summary line per tool; exits 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS="${OPENAPI_TOOLS_DIR:-$PWD/.walletd/openapi-tools}"
OUT="$PWD/.walletd/openapi-check"
CHECK=scripts/openapi_check
ADMIN_URL="${OPENAPI_CHECK_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
DB_NAME=walletd_openapi_check
export DATABASE_URL="${ADMIN_URL%/*}/$DB_NAME"
export REDIS_URLS="${REDIS_URLS:-redis://127.0.0.1:6379}"
export WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND=0
export RUST_LOG="${RUST_LOG:-warn}"
# No telemetry, update notices or progress bars from the Node tools.
export REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true
export NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false

log() { printf 'openapi_check.sh: %s\n' "$*" >&2; }
started=$SECONDS
declare -a summary=()
failed=0
result() { # tool status text
  summary+=("$(printf '%-22s %-4s %s' "$1" "$2" "$3")")
  [ "$2" = ok ] || failed=1
}
is_root() { [ "$(id -u)" = 0 ]; }
apt_install() {
  if is_root && command -v apt-get >/dev/null; then
    log "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
  else
    log "missing: $* (install it, or run as root with apt-get)"; exit 1
  fi
}

scripts/ensure-services.sh

# --- tools, pinned, installed once per lock file --------------------------------------------
command -v java >/dev/null || apt_install openjdk-17-jre-headless
command -v chromium >/dev/null || apt_install chromium
command -v npm >/dev/null || apt_install npm

stamp() { sha256sum "$@" | sha256sum | cut -c1-16; }
py_stamp=$(stamp "$CHECK/requirements.txt")
if [ "$(cat "$TOOLS/venv/.stamp" 2>/dev/null)" != "$py_stamp" ]; then
  log "installing the Python tools into $TOOLS/venv"
  rm -rf "$TOOLS/venv"
  python3 -m venv "$TOOLS/venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$TOOLS/venv"; }
  "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check -r "$CHECK/requirements.txt"
  echo "$py_stamp" >"$TOOLS/venv/.stamp"
fi
npm_stamp=$(stamp "$CHECK/npm/package.json" "$CHECK/npm/package-lock.json")
if [ "$(cat "$TOOLS/npm/.stamp" 2>/dev/null)" != "$npm_stamp" ]; then
  log "installing the Node tools into $TOOLS/npm"
  rm -rf "$TOOLS/npm" && mkdir -p "$TOOLS/npm"
  cp "$CHECK/npm/package.json" "$CHECK/npm/package-lock.json" "$TOOLS/npm/"
  (cd "$TOOLS/npm" && npm ci --silent --no-audit --no-fund)
  echo "$npm_stamp" >"$TOOLS/npm/.stamp"
fi
bin="$TOOLS/npm/node_modules/.bin"
jar=$("$TOOLS/venv/bin/python" -c 'import openapi_generator_cli, os; print(os.path.join(os.path.dirname(openapi_generator_cli.__file__), "openapi-generator.jar"))')

# --- walletd on a free loopback port, with its own database ---------------------------------
cargo build --locked --bin walletd
walletd="${CARGO_TARGET_DIR:-target}/debug/walletd"
PGOPTIONS=--client-min-messages=warning psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -qc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)"
"$walletd" migrate >/dev/null
api_key=$("$walletd" tenant create openapi-check | sed -nE 's/.*"api_key":"([^"]+)".*/\1/p')
[ -n "$api_key" ] || { log "walletd tenant create printed no api_key"; exit 1; }

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export WALLETD_BIND="127.0.0.1:$port"
base="http://$WALLETD_BIND"
rm -rf "$OUT" && mkdir -p "$OUT"
"$walletd" serve --no-migrate >"$OUT/walletd.log" 2>&1 &
server=$!
browser_profile=$(mktemp -d)
cleanup() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  rm -rf "$browser_profile"
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB_NAME WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
for _ in $(seq 1 100); do
  curl -fs "$base/healthz" >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { log "walletd exited:"; cat "$OUT/walletd.log" >&2; exit 1; }
  sleep 0.1
done
curl -fsS "$base/openapi.json" -o "$OUT/openapi.json"
log "checking $base/openapi.json ($(wc -c <"$OUT/openapi.json") bytes); output in $OUT"

# --- 1. redocly ---------------------------------------------------------------------------
if "$bin/redocly" lint --config redocly.yaml --format json "$OUT/openapi.json" >"$OUT/redocly.json" 2>"$OUT/redocly.err"; then :; fi
read -r errors warnings < <(python3 -c '
import json, sys
t = json.load(open(sys.argv[1]))["totals"]
print(t["errors"], t["warnings"])' "$OUT/redocly.json" 2>/dev/null || echo "? ?")
if [ "$errors" = 0 ] && [ "$warnings" = 0 ]; then
  result redocly ok "0 errors, 0 warnings"
else
  "$bin/redocly" lint --config redocly.yaml --format stylish "$OUT/openapi.json" >&2 || true
  result redocly FAIL "$errors errors, $warnings warnings"
fi

# --- 2. spectral --------------------------------------------------------------------------
"$bin/spectral" lint --ruleset .spectral.yaml --format json --quiet --output "$OUT/spectral.json" \
  "$OUT/openapi.json" >/dev/null 2>"$OUT/spectral.err" || true
read -r errors warnings < <(python3 -c '
import json, sys
results = json.load(open(sys.argv[1]))
print(sum(r["severity"] == 0 for r in results), sum(r["severity"] == 1 for r in results))' "$OUT/spectral.json" 2>/dev/null || echo "? ?")
if [ "$errors" = 0 ] && [ "$warnings" = 0 ]; then
  result spectral ok "0 errors, 0 warnings"
else
  "$bin/spectral" lint --ruleset .spectral.yaml "$OUT/openapi.json" >&2 || true
  result spectral FAIL "$errors errors, $warnings warnings"
fi

# --- 3. openapi-generator -----------------------------------------------------------------
if java -jar "$jar" validate -i "$OUT/openapi.json" >"$OUT/openapi-generator-validate.log" 2>&1 &&
  grep -q 'No validation issues detected' "$OUT/openapi-generator-validate.log"; then
  if java -jar "$jar" generate -g python -i "$OUT/openapi.json" -o "$OUT/openapi-generator-python" \
    --package-name walletd_client >"$OUT/openapi-generator-generate.log" 2>&1 &&
    "$TOOLS/venv/bin/python" -m compileall -q "$OUT/openapi-generator-python/walletd_client" >/dev/null; then
    result openapi-generator ok "validate: no issues; generate -g python: $(find "$OUT/openapi-generator-python/walletd_client/api" -name '*_api.py' | wc -l) API modules, compiles"
  else
    tail -20 "$OUT/openapi-generator-generate.log" >&2
    result openapi-generator FAIL "generate -g python failed (see $OUT/openapi-generator-generate.log)"
  fi
else
  cat "$OUT/openapi-generator-validate.log" >&2
  result openapi-generator FAIL "validate: $(grep -cE '^\s+- ' "$OUT/openapi-generator-validate.log" || true) issues"
fi

# --- 4. openapi-python-client, and the smoke test through it ------------------------------
operations=$(python3 -c '
import json, sys
paths = json.load(open(sys.argv[1]))["paths"]
print(sum(m in ("get", "put", "post", "delete", "patch") for item in paths.values() for m in item))' "$OUT/openapi.json")
if "$TOOLS/venv/bin/openapi-python-client" generate --path "$OUT/openapi.json" \
  --config "$CHECK/python-client.yaml" --output-path "$OUT/python-client/walletd_client" --meta none \
  >"$OUT/openapi-python-client.log" 2>&1; then
  generated=$(find "$OUT/python-client/walletd_client/api" -name '*.py' ! -name '__init__.py' | wc -l)
  if grep -qiE 'warning|error|will not be generated|unable to' "$OUT/openapi-python-client.log"; then
    cat "$OUT/openapi-python-client.log" >&2
    result openapi-python-client FAIL "warnings while generating; $generated of $operations operations"
  elif [ "$generated" -ne "$operations" ]; then
    result openapi-python-client FAIL "$generated of $operations operations generated"
  else
    result openapi-python-client ok "$generated of $operations operations, no warning"
  fi
  if PYTHONPATH="$OUT/python-client" "$TOOLS/venv/bin/python" "$CHECK/smoke.py" "$base" "$api_key" \
    >"$OUT/smoke.log" 2>&1; then
    result smoke ok "$(grep -c '^smoke: ok' "$OUT/smoke.log") steps through the generated client"
  else
    cat "$OUT/smoke.log" >&2
    result smoke FAIL "$(grep -m1 -E 'FAIL|Error' "$OUT/smoke.log" || echo 'see smoke.log')"
  fi
else
  cat "$OUT/openapi-python-client.log" >&2
  result openapi-python-client FAIL "generate failed"
  result smoke FAIL "no client"
fi

# --- 5. Swagger UI in headless Chromium ---------------------------------------------------
# Every host but 127.0.0.1 resolves to nothing: the page must work from vendored assets alone.
timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --disable-dev-shm-usage --user-data-dir="$browser_profile" \
  --host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
  --virtual-time-budget=15000 --dump-dom "$base/docs" >"$OUT/docs.html" 2>"$OUT/chromium.log" || true
docs=$(python3 -c '
import json, re, sys
doc = json.load(open(sys.argv[1]))
html = open(sys.argv[2], encoding="utf-8", errors="replace").read()
rendered = set(re.findall(r"data-path=\"([^\"]+)\"", html))
missing = sorted(set(doc["paths"]) - rendered)
print(len(rendered & set(doc["paths"])), len(doc["paths"]), "debit" if "/v1/wallets/{id}/debit" in rendered else "-", " ".join(missing))' \
  "$OUT/openapi.json" "$OUT/docs.html")
read -r shown total debit missing <<<"$docs"
if [ "$shown" = "$total" ] && [ "$debit" = debit ]; then
  result chromium-docs ok "/docs rendered $shown of $total paths (POST /v1/wallets/{id}/debit among them)"
else
  result chromium-docs FAIL "/docs rendered $shown of $total paths; missing: ${missing:-?}"
fi

printf '\n== openapi_check summary (%s s)\n' "$((SECONDS - started))"
printf '%s\n' "${summary[@]}"
exit "$failed"
