#!/usr/bin/env bash
# Debit and read benchmark on loopback, rerunnable; prints a compact table.
#
#   scripts/bench.sh
#   BASELINE_BIN=/path/to/old/walletd scripts/bench.sh      # also an older build, same run
#
# Scenarios (SCENARIOS, default "distinct hot reads"), each ROUNDS rounds, interleaved within a
# round so that drift on a noisy machine hits every target alike:
#   distinct  CLIENTS clients, one wallet each, DEBITS debits per client:
#             [pgbench raw SQL] [walletd new] [walletd base] [pgbench] [new] [base] ...
#   hot       the same with all clients on one wallet, HOT_DEBITS debits per client
#   reads     READERS readers doing READS GET /v1/wallets/{id} each over READ_WALLETS wallets
#             while WRITERS writers debit them; cache hit ratio and outbox publish lag from the
#             difference of two /metrics scrapes ("n/a" where a build has no such metric)
# pgbench runs the SQL of one debit (BEGIN; SELECT ... FOR UPDATE; UPDATE wallets; INSERT entry;
# COMMIT) against plain tables bench_wallets/bench_ledger in their own database: walletd's
# columns, primary keys, unique keys and indexes, but none of its triggers, foreign keys or CHECKs,
# and no idempotency or outbox rows. Same clients, same debits per client, same wallets per client.
#
# Every walletd gets a fresh database (walletd_bench_new, walletd_bench_base: migrations differ)
# and its own Redis database (REDIS_DB_NEW=14, REDIS_DB_BASE=15; flushed at start), runs from an
# empty directory (so each binary uses its built-in config defaults), with the rate limit off and
# RUST_LOG=warn. Servers are stopped on exit.
#
# Knobs (env): CLIENTS=16 DEBITS=200 HOT_DEBITS=50 ROUNDS=3 READERS=32 READS=500 READ_WALLETS=4
# WRITERS=2 SCENARIOS="distinct hot reads" BASELINE_BIN= BASELINE_LABEL=base
# NEW_BIN= (a prebuilt walletd instead of building this tree; "none": no new target)
# CLIENT_BIN= (a prebuilt bench_debits example instead of building it)
# PG=postgres://postgres@127.0.0.1:5432 REDIS=redis://127.0.0.1:6379 PORT_NEW=18080 PORT_BASE=18081
# Release builds go to ${CARGO_TARGET_DIR:-target}.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

CLIENTS=${CLIENTS:-16} DEBITS=${DEBITS:-200} HOT_DEBITS=${HOT_DEBITS:-50} ROUNDS=${ROUNDS:-3}
READERS=${READERS:-32} READS=${READS:-500} READ_WALLETS=${READ_WALLETS:-4} WRITERS=${WRITERS:-2}
SCENARIOS=${SCENARIOS:-distinct hot reads}
PG=${PG:-postgres://postgres@127.0.0.1:5432} REDIS=${REDIS:-redis://127.0.0.1:6379}
PORT_NEW=${PORT_NEW:-18080} PORT_BASE=${PORT_BASE:-18081}
REDIS_DB_NEW=${REDIS_DB_NEW:-14} REDIS_DB_BASE=${REDIS_DB_BASE:-15}
BASELINE_BIN=${BASELINE_BIN:-} BASELINE_LABEL=${BASELINE_LABEL:-base}
NEW_BIN=${NEW_BIN:-} CLIENT_BIN=${CLIENT_BIN:-}
target_dir=${CARGO_TARGET_DIR:-$root/target}

DATABASE_URL="$PG/walletd" REDIS_URLS="$REDIS" scripts/ensure-services.sh
work=$(mktemp -d /tmp/walletd-bench.XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- builds ---------------------------------------------------------------------------------
build=()
[ -z "$NEW_BIN" ] && build+=(--bin walletd)
[ -z "$CLIENT_BIN" ] && build+=(--example bench_debits)
if [ ${#build[@]} -gt 0 ] && ! cargo build --release --locked "${build[@]}" >"$work/build.log" 2>&1; then
  tail -30 "$work/build.log" >&2
  echo "bench: build failed (NEW_BIN=none / NEW_BIN=..., CLIENT_BIN=... use prebuilt binaries)" >&2
  exit 1
fi
[ -z "$NEW_BIN" ] && NEW_BIN="$target_dir/release/walletd"
[ -z "$CLIENT_BIN" ] && CLIENT_BIN="$target_dir/release/examples/bench_debits"

psql_do() { PGOPTIONS='-c client_min_messages=warning' psql "$PG/$1" -v ON_ERROR_STOP=1 -qAt "${@:2}"; }
fresh_db() {
  psql_do postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
}

# --- walletd servers ------------------------------------------------------------------------
declare -A url key
targets=()
start_walletd() { # name bin db port redis_db
  local name=$1 bin=$2 db=$3 port=$4 rdb=$5 dir="$work/$1"
  mkdir -p "$dir"
  fresh_db "$db"
  redis-cli -u "$REDIS/$rdb" flushdb >/dev/null
  local env=(env DATABASE_URL="$PG/$db" REDIS_URLS="$REDIS/$rdb" WALLETD_BIND="127.0.0.1:$port"
    WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND=0 RUST_LOG=warn)
  (cd "$dir" && "${env[@]}" "$bin" migrate) >"$dir/migrate.log" 2>&1 \
    || { cat "$dir/migrate.log" >&2; exit 1; }
  key[$name]=$(cd "$dir" && "${env[@]}" "$bin" tenant create bench \
    | sed -E 's/.*"api_key":"([^"]+)".*/\1/')
  (cd "$dir" && exec "${env[@]}" "$bin" serve) >"$dir/server.log" 2>&1 &
  pids+=($!)
  url[$name]="http://127.0.0.1:$port"
  local _
  for _ in $(seq 1 100); do curl -fs "${url[$name]}/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "${url[$name]}/readyz" >/dev/null || { tail -20 "$dir/server.log" >&2; exit 1; }
  targets+=("$name")
}
[ "$NEW_BIN" != none ] && start_walletd new "$NEW_BIN" walletd_bench_new "$PORT_NEW" "$REDIS_DB_NEW"
[ -n "$BASELINE_BIN" ] && start_walletd "$BASELINE_LABEL" "$BASELINE_BIN" walletd_bench_base \
  "$PORT_BASE" "$REDIS_DB_BASE"

# --- pgbench baseline -----------------------------------------------------------------------
fresh_db walletd_bench_sql
wallet_uuid="('00000000-0000-4000-8000-' || lpad((:w)::text, 12, '0'))::uuid"
psql_do walletd_bench_sql <<SQL
CREATE TABLE bench_wallets (
    id uuid PRIMARY KEY, tenant_id uuid NOT NULL, currency char(3) NOT NULL, owner_ref text,
    balance numeric(28,4) NOT NULL DEFAULT 0, held numeric(28,4) NOT NULL DEFAULT 0,
    overdraft_limit numeric(28,4) NOT NULL DEFAULT 0, version bigint NOT NULL DEFAULT 1,
    last_seq bigint NOT NULL DEFAULT 0, status text NOT NULL DEFAULT 'active',
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_hash text NOT NULL DEFAULT repeat('0', 64));
CREATE INDEX bench_wallets_tenant_id ON bench_wallets (tenant_id);
CREATE TABLE bench_ledger (
    wallet_id uuid NOT NULL, seq bigint NOT NULL, id uuid NOT NULL, tenant_id uuid NOT NULL,
    entry_type text NOT NULL, amount numeric(28,4) NOT NULL, currency char(3) NOT NULL,
    balance_before numeric(28,4) NOT NULL, balance_after numeric(28,4) NOT NULL,
    reference text, description text, metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text NOT NULL, created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    direction text, hold_id uuid, reverses uuid, prev_hash text, hash text,
    PRIMARY KEY (wallet_id, seq),
    UNIQUE (wallet_id, id), UNIQUE (wallet_id, idempotency_key), UNIQUE (wallet_id, hold_id));
CREATE INDEX bench_ledger_by_id ON bench_ledger (id);
CREATE INDEX bench_ledger_reversals ON bench_ledger (wallet_id, reverses) WHERE reverses IS NOT NULL;
CREATE INDEX bench_ledger_by_time ON bench_ledger (tenant_id, created_at, wallet_id, seq);
CREATE INDEX bench_ledger_by_wallet_time ON bench_ledger (wallet_id, created_at, seq);
INSERT INTO bench_wallets (id, tenant_id, currency, balance)
SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid,
       '00000000-0000-4000-8000-000000000000', 'EUR', 1000000
  FROM generate_series(1, $CLIENTS) g;
SQL
pgbench_script() { # file wallet-expression
  cat >"$1" <<SQL
\\set w $2
BEGIN;
SELECT balance AS bal, last_seq AS seq, last_hash AS prev, md5(random()::text) || md5(random()::text) AS h FROM bench_wallets WHERE id = $wallet_uuid FOR UPDATE \\gset
UPDATE bench_wallets SET balance = balance - 1, version = version + 1, last_seq = last_seq + 1, last_hash = :h, updated_at = now() WHERE id = $wallet_uuid;
INSERT INTO bench_ledger (wallet_id, seq, id, tenant_id, entry_type, amount, currency, balance_before, balance_after, metadata, idempotency_key, created_at, prev_hash, hash) VALUES ($wallet_uuid, (:seq)::bigint + 1, gen_random_uuid(), '00000000-0000-4000-8000-000000000000', 'debit', 1, 'EUR', (:bal)::numeric, (:bal)::numeric - 1, '{}', gen_random_uuid()::text, now(), :prev, :h);
COMMIT;
SQL
}
pgbench_script "$work/distinct.sql" ':client_id + 1'
pgbench_script "$work/hot.sql" '1'

pct() { # p (0..1) of the numbers on stdin, the same rank rule as the client
  sort -n | awk -v p="$1" '{v[NR]=$1} END {if (NR==0) {print "n/a"; exit}
    i=int((NR-1)*p+0.5)+1; printf "%.2f\n", v[i]/1000}'
}
run_pgbench() { # scenario debits_per_client -> the client's key=value line
  local log="$work/pglog" out jobs=$(( CLIENTS < $(nproc) ? CLIENTS : $(nproc) ))
  rm -f "$log".*
  out=$(pgbench "$PG/walletd_bench_sql" -n -M prepared -c "$CLIENTS" -j "$jobs" -t "$2" \
    -f "$work/$1.sql" -l --log-prefix="$log" 2>&1) || true
  local tps ok failed
  tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' <<<"$out" | head -1)
  ok=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$out")
  failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' <<<"$out")
  [ -n "$tps" ] || { echo "pgbench failed:" >&2; echo "$out" >&2; exit 1; }
  local lat; lat=$(cat "$log".* | awk '{print $3}')
  local bad="-"; [ "${failed:-0}" != 0 ] && bad="failed:$failed"
  echo "ok=$ok non2xx=$bad rps=$tps p50_ms=$(pct 0.50 <<<"$lat") p99_ms=$(pct 0.99 <<<"$lat")"
}

# --- measurement and table ------------------------------------------------------------------
field() { sed -nE "s/.* $2=([^ ]*).*/\1/p" <<<" $1"; }
median() { # [printf format] of the numbers among the words on stdin
  tr ' ' '\n' | { grep -E '^[0-9.]+$' || true; } | sort -g | awk -v f="${1:-%.2f}" '{v[NR]=$1} END {
  if (NR==0) print "n/a"; else printf f "\n", (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b+0>0 && a ~ /^[0-9.]+$/) printf "%.3f", a/b; else print "n/a"}'; }
declare -A rps p50 p99 hit l50 l99

echo "walletd bench $(date -u +%FT%TZ) on $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  clients=$CLIENTS debits/client=$DEBITS (hot: $HOT_DEBITS) rounds=$ROUNDS readers=$READERS reads/reader=$READS read_wallets=$READ_WALLETS writers=$WRITERS"
if [ "$NEW_BIN" != none ]; then
  rev=$(git -C "$root" rev-parse --short HEAD)
  [ -n "$(git -C "$root" status --porcelain -- src migrations Cargo.toml Cargo.lock)" ] && rev="$rev+dirty"
  echo "  new:  $NEW_BIN (tree $rev), db walletd_bench_new"
fi
[ -n "$BASELINE_BIN" ] && echo "  $BASELINE_LABEL: $BASELINE_BIN, db walletd_bench_base"
echo "  pgbench: -M prepared, plain tables bench_wallets/bench_ledger (walletd's columns, keys and"
echo "    indexes; no triggers, FKs, CHECKs, idempotency or outbox rows), db walletd_bench_sql"
echo "  throughput counts 2xx; p50/p99 over all answers, ms; x/pgbench: this round's pgbench"

for scenario in $SCENARIOS; do
  case $scenario in
    distinct|hot)
      if [ "$scenario" = distinct ]; then per=$DEBITS wallets=$CLIENTS; else per=$HOT_DEBITS wallets=1; fi
      echo
      printf '%-8s %5s %-8s %7s %-14s %9s %8s %8s %10s %9s %9s\n' "$scenario" round target ok non-2xx 'debits/s' p50 p99 x/pgbench lag-p50 lag-p99
      for round in $(seq 1 "$ROUNDS"); do
        for t in pgbench "${targets[@]}"; do
          if [ "$t" = pgbench ]; then line=$(run_pgbench "$scenario" "$per")
          else line=$("$CLIENT_BIN" debits "${url[$t]}" "${key[$t]}" "$CLIENTS" "$per" "$wallets"); fi
          r=$(field "$line" rps)
          [ "$t" = pgbench ] && round_pg=$r
          rps[$scenario,$t]+=" $r"; p50[$scenario,$t]+=" $(field "$line" p50_ms)"
          p99[$scenario,$t]+=" $(field "$line" p99_ms)"
          lag50=$(field "$line" lag_p50_ms) lag99=$(field "$line" lag_p99_ms)
          l50[$scenario,$t]+=" $lag50"; l99[$scenario,$t]+=" $lag99"
          printf '%-8s %5s %-8s %7s %-14s %9.1f %8s %8s %10s %9s %9s\n' "" "$round" "$t" "$(field "$line" ok)" \
            "$(field "$line" non2xx)" "$r" "$(field "$line" p50_ms)" "$(field "$line" p99_ms)" \
            "$( [ "$t" = pgbench ] && echo - || ratio "$r" "$round_pg")" "${lag50:--}" "${lag99:--}"
        done
      done
      ;;
    reads)
      [ ${#targets[@]} -gt 0 ] || continue
      echo
      printf '%-8s %5s %-8s %8s %8s %8s %-12s %8s %-11s %9s %9s\n' reads round target 'reads/s' p50 p99 non-2xx 'writes/s' cache-hit lag-p50 lag-p99
      for round in $(seq 1 "$ROUNDS"); do
        for t in "${targets[@]}"; do
          line=$("$CLIENT_BIN" reads "${url[$t]}" "${key[$t]}" "$READERS" "$READS" "$READ_WALLETS" "$WRITERS")
          r=$(field "$line" rps)
          rps[reads,$t]+=" $r"; p50[reads,$t]+=" $(field "$line" p50_ms)"
          p99[reads,$t]+=" $(field "$line" p99_ms)"
          hit[$t]+=" $(field "$line" cache_hit)"; l50[reads,$t]+=" $(field "$line" lag_p50_ms)"
          l99[reads,$t]+=" $(field "$line" lag_p99_ms)"
          printf '%-8s %5s %-8s %8.1f %8s %8s %-12s %8s %-11s %9s %9s\n' "" "$round" "$t" "$r" \
            "$(field "$line" p50_ms)" "$(field "$line" p99_ms)" "$(field "$line" non2xx)" \
            "$(field "$line" wps)" "$(field "$line" cache_hit)" "$(field "$line" lag_p50_ms)" \
            "$(field "$line" lag_p99_ms)"
          echo "          cache reads: $(field "$line" cache_reads); writes: $(field "$line" writes) ($(field "$line" write_non2xx) non-2xx); events in lag histogram: $(field "$line" lag_events)" >>"$work/reads.notes"
        done
      done
      ;;
    *) echo "unknown scenario $scenario" >&2; exit 1 ;;
  esac
done

echo
echo "medians over $ROUNDS rounds (req/s; p50, p99 ms: medians of the rounds' values)"
printf '%-8s %-8s %9s %8s %8s %10s %10s\n' scenario target 'req/s' p50 p99 x/pgbench "x/${targets[1]:-base}"
for scenario in $SCENARIOS; do
  names=("${targets[@]}"); [ "$scenario" != reads ] && names=(pgbench "${targets[@]}")
  for t in "${names[@]}"; do
    m=$(median <<<"${rps[$scenario,$t]:-}")
    vs_pg=-; vs_base=-
    [ "$scenario" != reads ] && [ "$t" != pgbench ] && vs_pg=$(ratio "$m" "$(median <<<"${rps[$scenario,pgbench]}")")
    [ ${#targets[@]} -gt 1 ] && [ "$t" = "${targets[0]}" ] && vs_base=$(ratio "$m" "$(median <<<"${rps[$scenario,${targets[1]}]}")")
    printf '%-8s %-8s %9.1f %8s %8s %10s %10s\n' "$scenario" "$t" "$m" "$(median <<<"${p50[$scenario,$t]}")" \
      "$(median <<<"${p99[$scenario,$t]}")" "$vs_pg" "$vs_base"
  done
done
for scenario in $SCENARIOS; do
  for t in "${targets[@]}"; do
    echo "$(printf '%-8s' "$scenario") $t: publish lag p50/p99 ms $(median <<<"${l50[$scenario,$t]:-}") / $(median <<<"${l99[$scenario,$t]:-}") (medians of the rounds)"
  done
done
if [ -f "$work/reads.notes" ]; then
  for t in "${targets[@]}"; do
    echo "reads    $t: cache-hit $(median %.3f <<<"${hit[$t]}")"
  done
  echo "reads detail (per round, in order):"; cat "$work/reads.notes"
fi
echo "load at end $(cut -d' ' -f1-3 /proc/loadavg)"
