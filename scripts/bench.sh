#!/usr/bin/env bash
# Debit benchmark on loopback (issue 9): raw-SQL pgbench (A) against walletd over HTTP (B), in one
# run, interleaved, then a fixed-rate run; rerunnable; prints tables.
#
#   scripts/bench.sh                                          # = make bench
#   BASELINE_BIN=/path/to/old/walletd scripts/bench.sh        # also an older build, same run
#   DURATION=3 ROUNDS=1 scripts/bench.sh                      # a quick look
#
# Workloads (SCENARIOS, default "uniform hot replay reads"); each runs ROUNDS rounds, and within a
# round every target once, DURATION seconds each, CONNECTIONS concurrent clients, in the order
#   pgbench, new, [base], pgbench, new, [base], ...
# so that drift on a noisy machine hits every target alike:
#   uniform  every debit on a wallet picked at random among WALLETS funded wallets, a fresh
#            Idempotency-Key each
#   hot      every debit on one wallet, a fresh Idempotency-Key each
#   replay   a replay storm: every request the same debit with the same Idempotency-Key on one
#            wallet. The key is sent once before the round (that debit charges); every request of
#            the round must then be a 2xx replay (Idempotent-Replayed: true) and charge nothing:
#            both are counted and checked against the wallet's balance. pgbench has no replay of
#            its own: its A for replay is the raw debit on one wallet (the hot script), i.e. what
#            the storm would cost if every request were executed.
#   reads    (walletd only) READERS readers doing READS GET /v1/wallets/{id} each over
#            READ_WALLETS wallets while WRITERS writers debit them; balance cache hit ratio
#   sql      (not in the default list; needs the new target) where the uniform gap is: pgbench
#            only, interleaved: the raw debit (A), then walletd's own Postgres statements for one
#            debit on walletd's schema with its triggers (scripts/bench/walletd_debit.sql: one
#            row-locked transaction with the entry, the event and the stored answer, one commit).
#            Run on the new target's database, its wallets, its relay.
#   fixed rate (after the rounds; FIXED_RATE=0 skips it): RATE_FRACTION (0.5) x the median
#            uniform req/s of the new build, for RATE_DURATION seconds, open loop (a debit is due
#            every 1/rate s whatever happened to the earlier ones; latency from the time it was
#            due), on every walletd target at that same rate: p50/p99, non-2xx, RSS.
#
# A (pgbench): the SQL of one debit (BEGIN; SELECT ... FOR UPDATE; UPDATE wallet; INSERT ledger
# entry; COMMIT) with -M prepared, -c CONNECTIONS -j THREADS -T DURATION, against plain tables
# bench_wallets (WALLETS rows) / bench_ledger in their own database walletd_bench_sql: walletd's
# columns, primary keys, unique keys and indexes, but none of its triggers, foreign keys or CHECKs
# and no idempotency or outbox rows. Wallet per transaction: \set w random(1, WALLETS); hot: 1.
# Latency percentiles from pgbench's per-transaction log (-l).
# B (walletd): wrk -t THREADS -c CONNECTIONS -d DURATION with scripts/bench/debit.lua (POST
# /v1/wallets/{id}/debit {"amount":"0.01","currency":"EUR"}; a fresh Idempotency-Key per request,
# "<run nonce>-<thread>-<counter>"); percentiles from wrk's latency histogram; non-2xx counted by
# status in the script, wrk's socket errors as conn/read/write/timeout.
# Postgres is used as it runs (fsync and synchronous_commit as the server has them; the header
# shows them); this script never stops or reconfigures it, nor Redis.
#
# Every walletd gets a fresh database (walletd_bench_new, walletd_bench_base: migrations differ)
# and its own Redis database (REDIS_DB_NEW=14, REDIS_DB_BASE=15; flushed at start), runs from an
# empty directory (so each binary uses its built-in config defaults) with rate limiting OFF
# (WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND=0) and RUST_LOG=warn, and gets WALLETS wallets
# credited 1,000,000.00 EUR each before the first round (not timed). Its RSS is sampled from
# /proc/<pid>/status every 0.2 s during each run (peak VmRSS of the run; VmHWM: peak since start).
# Publish lag: the walletd_outbox_publish_lag_seconds histogram over the difference of two
# /metrics scrapes around the run (the second 1 s after it, for the relay to catch up).
# Servers are stopped on exit; everything listens on 127.0.0.1 only; every run has a timeout.
#
# Knobs (env): DURATION=10 CONNECTIONS=16 ROUNDS=3 WALLETS=1000 THREADS=2 (wrk -t, pgbench -j)
# SCENARIOS="uniform hot replay reads" READERS=32 READS=500 READ_WALLETS=4 WRITERS=2
# FIXED_RATE=1 RATE_FRACTION=0.5 RATE_DURATION=$DURATION
# BASELINE_BIN= BASELINE_LABEL=base
# NEW_BIN= (a prebuilt walletd instead of building this tree; "none": no new target)
# CLIENT_BIN= (a prebuilt bench_debits example instead of building it)
# WRK=wrk (installed with apt-get when missing and we are root)
# PG=postgres://postgres@127.0.0.1:5432 REDIS=redis://127.0.0.1:6379 PORT_NEW=18080 PORT_BASE=18081
# Release builds go to ${CARGO_TARGET_DIR:-target}.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
root=$PWD

DURATION=${DURATION:-10} CONNECTIONS=${CONNECTIONS:-16} ROUNDS=${ROUNDS:-3}
WALLETS=${WALLETS:-1000} THREADS=${THREADS:-2}
READERS=${READERS:-32} READS=${READS:-500} READ_WALLETS=${READ_WALLETS:-4} WRITERS=${WRITERS:-2}
SCENARIOS=${SCENARIOS:-uniform hot replay reads}
FIXED_RATE=${FIXED_RATE:-1} RATE_FRACTION=${RATE_FRACTION:-0.5} RATE_DURATION=${RATE_DURATION:-$DURATION}
PG=${PG:-postgres://postgres@127.0.0.1:5432} REDIS=${REDIS:-redis://127.0.0.1:6379}
PORT_NEW=${PORT_NEW:-18080} PORT_BASE=${PORT_BASE:-18081}
REDIS_DB_NEW=${REDIS_DB_NEW:-14} REDIS_DB_BASE=${REDIS_DB_BASE:-15}
BASELINE_BIN=${BASELINE_BIN:-} BASELINE_LABEL=${BASELINE_LABEL:-base}
NEW_BIN=${NEW_BIN:-} CLIENT_BIN=${CLIENT_BIN:-} WRK=${WRK:-wrk}
target_dir=${CARGO_TARGET_DIR:-$root/target}
lua="$root/scripts/bench/debit.lua"
run_timeout=$((DURATION + 60))

die() { echo "bench: $*" >&2; exit 1; }
for n in DURATION CONNECTIONS ROUNDS WALLETS THREADS RATE_DURATION; do
  [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive integer (got '${!n}')"
done
[ "$THREADS" -gt "$CONNECTIONS" ] && THREADS=$CONNECTIONS # wrk and pgbench need threads <= connections
for s in $SCENARIOS; do
  case $s in uniform|hot|replay|reads|sql) ;; *) die "unknown scenario $s (uniform hot replay reads sql)";; esac
done

# --- tools ----------------------------------------------------------------------------------
if ! command -v "$WRK" >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bench: $WRK not found; apt-get install -y wrk" >&2
    timeout 600 apt-get install -y wrk >/dev/null 2>&1 \
      || { timeout 300 apt-get update >/dev/null 2>&1 && timeout 600 apt-get install -y wrk >/dev/null 2>&1; } || true
  fi
  command -v "$WRK" >/dev/null \
    || die "wrk is needed (the HTTP load generator): apt-get install wrk, or WRK=/path/to/wrk"
fi
command -v pgbench >/dev/null || die "pgbench is needed (Debian: apt-get install postgresql-contrib or postgresql-client)"
for tool in psql redis-cli curl timeout; do command -v "$tool" >/dev/null || die "$tool is needed"; done

DATABASE_URL="$PG/walletd" REDIS_URLS="$REDIS" scripts/ensure-services.sh
work=$(mktemp -d /tmp/walletd-bench.XXXXXX)
pids=() sampler=
cleanup() {
  local pid
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- builds ---------------------------------------------------------------------------------
build=()
[ -z "$NEW_BIN" ] && build+=(--bin walletd)
[ -z "$CLIENT_BIN" ] && build+=(--example bench_debits)
if [ ${#build[@]} -gt 0 ] && ! timeout 3600 cargo build --release --locked "${build[@]}" >"$work/build.log" 2>&1; then
  tail -30 "$work/build.log" >&2
  die "build failed (NEW_BIN=none / NEW_BIN=..., CLIENT_BIN=... use prebuilt binaries)"
fi
new_built=; [ -z "$NEW_BIN" ] && new_built=1 && NEW_BIN="$target_dir/release/walletd"
[ -z "$CLIENT_BIN" ] && CLIENT_BIN="$target_dir/release/examples/bench_debits"
client() { timeout "$run_timeout" "$CLIENT_BIN" "$@"; }

psql_do() { PGOPTIONS='-c client_min_messages=warning' timeout 300 psql "$PG/$1" -v ON_ERROR_STOP=1 -qAt "${@:2}"; }
fresh_db() {
  psql_do postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1" >/dev/null
}

# --- walletd servers ------------------------------------------------------------------------
declare -A url key pid_of wallets_of
targets=()
start_walletd() { # name bin db port redis_db
  local name=$1 bin=$2 db=$3 port=$4 rdb=$5 dir="$work/$1"
  [ -x "$bin" ] || die "$name: no executable $bin"
  mkdir -p "$dir"
  fresh_db "$db"
  timeout 30 redis-cli -u "$REDIS/$rdb" flushdb >/dev/null
  local env=(env DATABASE_URL="$PG/$db" REDIS_URLS="$REDIS/$rdb" WALLETD_BIND="127.0.0.1:$port"
    WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND=0 RUST_LOG=warn)
  (cd "$dir" && timeout 300 "${env[@]}" "$bin" migrate) >"$dir/migrate.log" 2>&1 \
    || { cat "$dir/migrate.log" >&2; exit 1; }
  key[$name]=$(cd "$dir" && timeout 60 "${env[@]}" "$bin" tenant create bench \
    | sed -E 's/.*"api_key":"([^"]+)".*/\1/')
  # exec all the way down: $! is walletd's own pid (for its RSS and for stopping it)
  (cd "$dir" && exec "${env[@]}" "$bin" serve) >"$dir/server.log" 2>&1 &
  pids+=($!)
  pid_of[$name]=$!
  url[$name]="http://127.0.0.1:$port"
  local _
  for _ in $(seq 1 100); do curl -fs -m 2 "${url[$name]}/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs -m 2 "${url[$name]}/readyz" >/dev/null || { tail -20 "$dir/server.log" >&2; exit 1; }
  targets+=("$name")
}
setup_wallets() { # name
  local t=$1 line
  wallets_of[$t]="$work/$t/wallets"
  line=$(timeout 600 "$CLIENT_BIN" setup "${url[$t]}" "${key[$t]}" "$WALLETS" "${wallets_of[$t]}")
  echo "  $t: $WALLETS wallets created and funded in $(field "$line" elapsed_s) s"
}
[ "$NEW_BIN" != none ] && start_walletd new "$NEW_BIN" walletd_bench_new "$PORT_NEW" "$REDIS_DB_NEW"
[ -n "$BASELINE_BIN" ] && start_walletd "$BASELINE_LABEL" "$BASELINE_BIN" walletd_bench_base \
  "$PORT_BASE" "$REDIS_DB_BASE"

# --- RSS sampling ---------------------------------------------------------------------------
rss_start() { # name: samples VmRSS (kB) of its walletd into $work/rss every 0.2 s
  local p=${pid_of[$1]}
  ( while [ -r "/proc/$p/status" ]; do
      awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true; sleep 0.2
    done ) >"$work/rss" &
  sampler=$!
}
rss_stop() { # name -> "rss_mb=<peak VmRSS during the run> hwm_mb=<VmHWM>" (call it in this shell)
  local p=${pid_of[$1]} now hwm
  now=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
  kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; sampler=
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
  kill -0 "$p" 2>/dev/null || { tail -20 "$work/$1/server.log" >&2; die "$1: walletd (pid $p) died"; }
  { cat "$work/rss"; echo "${now:-0}"; } | awk -v h="${hwm:-0}" '$1>m {m=$1} END {printf "rss_mb=%.1f hwm_mb=%.1f\n", m/1024, h/1024}'
}

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
  FROM generate_series(1, $WALLETS) g;
ANALYZE bench_wallets;
SQL
pgbench_script() { # file wallet-expression
  cat >"$1" <<SQL
\\set w $2
BEGIN;
SELECT balance AS bal, last_seq AS seq, last_hash AS prev, md5(random()::text) || md5(random()::text) AS h FROM bench_wallets WHERE id = $wallet_uuid FOR UPDATE \\gset
UPDATE bench_wallets SET balance = balance - 0.01, version = version + 1, last_seq = last_seq + 1, last_hash = :h, updated_at = now() WHERE id = $wallet_uuid;
INSERT INTO bench_ledger (wallet_id, seq, id, tenant_id, entry_type, amount, currency, balance_before, balance_after, metadata, idempotency_key, created_at, prev_hash, hash) VALUES ($wallet_uuid, (:seq)::bigint + 1, gen_random_uuid(), '00000000-0000-4000-8000-000000000000', 'debit', 0.01, 'EUR', (:bal)::numeric, (:bal)::numeric - 0.01, '{}', gen_random_uuid()::text, now(), :prev, :h);
COMMIT;
SQL
}
pgbench_script "$work/uniform.sql" "random(1, $WALLETS)"
pgbench_script "$work/hot.sql" '1'
cp "$work/hot.sql" "$work/replay.sql"

pct() { # p (0..1) of the numbers (µs) on stdin, in ms; the same rank rule as the client
  sort -n | awk -v p="$1" '{v[NR]=$1} END {if (NR==0) {print "n/a"; exit}
    i=int((NR-1)*p+0.5)+1; printf "%.2f\n", v[i]/1000}'
}
run_pgbench() { # workload [script database] -> key=value line
  local log="$work/pglog" out tps ok failed lat bad="-"
  local script=${2:-$work/$1.sql} db=${3:-walletd_bench_sql}
  rm -f "$log".*
  out=$(timeout "$run_timeout" pgbench "$PG/$db" -n -M prepared -c "$CONNECTIONS" \
    -j "$THREADS" -T "$DURATION" -D wallets="$WALLETS" -f "$script" -l --log-prefix="$log" 2>&1) || true
  tps=$(sed -nE 's/^tps = ([0-9.]+).*/\1/p' <<<"$out" | head -1)
  ok=$(sed -nE 's/^number of transactions actually processed: ([0-9]+).*/\1/p' <<<"$out")
  failed=$(sed -nE 's/^number of failed transactions: ([0-9]+).*/\1/p' <<<"$out")
  [ -n "$tps" ] || { echo "pgbench failed:" >&2; echo "$out" >&2; exit 1; }
  lat=$(cat "$log".* | awk '{print $3}')
  [ "${failed:-0}" != 0 ] && bad="failed:$failed"
  echo "ok=$ok non2xx=$bad rps=$tps p50_ms=$(pct 0.50 <<<"$lat") p90_ms=$(pct 0.90 <<<"$lat") p99_ms=$(pct 0.99 <<<"$lat")"
}

# --- walletd runs ---------------------------------------------------------------------------
field() { sed -nE "s/.* $2=([^ ]*).*/\1/p" <<<" $1"; }
balance() { # name wallet -> its balance (from GET /v1/wallets/{id})
  curl -fsS -m 10 -H "Authorization: Bearer ${key[$1]}" "${url[$1]}/v1/wallets/$2" \
    | sed -nE 's/.*"balance":"([-0-9.]+)".*/\1/p'
}
debit_once() { # name wallet idempotency-key -> HTTP status
  curl -sS -m 10 -o /dev/null -w '%{http_code}' -X POST -H "Authorization: Bearer ${key[$1]}" \
    -H 'Content-Type: application/json' -H "Idempotency-Key: $3" \
    --data '{"amount":"0.01","currency":"EUR"}' "${url[$1]}/v1/wallets/$2/debit"
}
charges() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.0f", (a - b) / 0.01}'; }
run_wrk() { # name workload round -> key=value line
  local t=$1 w=$2 nonce out line hot first="" before after lagline
  nonce="bench-$w-$t-r$3-$$-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  hot=$(head -1 "${wallets_of[$t]}")
  if [ "$w" = replay ]; then
    first=$(debit_once "$t" "$hot" "$nonce")
    [ "$first" = 201 ] || echo "bench: $t replay: the first debit answered $first, not 201" >&2
  fi
  [ "$w" = uniform ] || before=$(balance "$t" "$hot")
  curl -fsS -m 10 "${url[$t]}/metrics" >"$work/metrics.before"
  rss_start "$t"
  out=$(timeout "$run_timeout" "$WRK" -t "$THREADS" -c "$CONNECTIONS" -d "${DURATION}s" --timeout 10s \
    -s "$lua" "${url[$t]}" -- "${key[$t]}" "${wallets_of[$t]}" "$w" "$nonce" 2>&1) || true
  line=$(sed -n 's/^wrk: //p' <<<"$out")
  [ -n "$line" ] || { echo "$out" >&2; die "$t $w: wrk failed"; }
  rss_stop "$t" >"$work/rss.line"
  line+=" $(<"$work/rss.line")"
  sleep 1 # the relay catches up before the second scrape
  curl -fsS -m 10 "${url[$t]}/metrics" >"$work/metrics.after"
  lagline=$(client lag "$work/metrics.before" "$work/metrics.after")
  line+=" $lagline"
  echo "          $w round $3 $t: mean ms per request in each layer $(field "$lagline" layers_ms); debits per batch $(field "$lagline" batch_mean)" >>"$work/layers.notes"
  if [ "$w" != uniform ]; then
    after=$(balance "$t" "$hot")
    line+=" charged=$(charges "$before" "$after")"
  fi
  [ -n "$first" ] && line+=" first=$first"
  echo "$line"
}

# --- tables ---------------------------------------------------------------------------------
median() { # [printf format] of the numbers among the words on stdin
  tr ' ' '\n' | { grep -E '^[0-9.]+$' || true; } | sort -g | awk -v f="${1:-%.2f}" '{v[NR]=$1} END {
  if (NR==0) print "n/a"; else printf f "\n", (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
maximum() { tr ' ' '\n' | { grep -E '^[0-9.]+$' || true; } | sort -g | tail -1 | grep . || echo n/a; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b+0>0 && a ~ /^[0-9.]+$/) printf "%.3f", a/b; else print "n/a"}'; }
sum_non2xx() { # "401:3,conn:1 - 401:2" -> "401:5,conn:1" or "-"
  tr ' ' '\n' | tr ',' '\n' | { grep : || true; } | awk -F: '{n[$1]+=$2} END {
    s=""; for (k in n) s = s (s=="" ? "" : ",") k ":" n[k]; print (s=="" ? "-" : s)}'; }
dash() { local v; v=$(cat); [ "$v" = n/a ] && [ "$t" = pgbench ] && v=-; echo "$v"; } # "-" for pgbench
declare -A rps p50 p90 p99 bad rss hwm hit l50 l99 note

echo "walletd bench $(date -u +%FT%TZ) on $(nproc) cores ($(sed -nE 's/^model name\s*: //p' /proc/cpuinfo | head -1)), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "  parameters: connections=$CONNECTIONS duration=${DURATION}s rounds=$ROUNDS wallets=$WALLETS threads=$THREADS (wrk -t, pgbench -j)"
echo "              scenarios: $SCENARIOS; reads: readers=$READERS reads/reader=$READS read_wallets=$READ_WALLETS writers=$WRITERS"
echo "  rate limiting: OFF for every walletd (WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND=0)"
if [ "$NEW_BIN" != none ]; then
  if [ -n "$new_built" ]; then
    rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)
    [ -n "$(git -C "$root" status --porcelain -- src migrations Cargo.toml Cargo.lock 2>/dev/null)" ] && rev="$rev+dirty"
    from="built from this tree, $rev"
  else
    from="prebuilt, $(date -u -r "$NEW_BIN" +%FT%TZ)"
  fi
  echo "  new:  $NEW_BIN ($from), db walletd_bench_new, redis db $REDIS_DB_NEW, 127.0.0.1:$PORT_NEW"
fi
[ -n "$BASELINE_BIN" ] && echo "  $BASELINE_LABEL: $BASELINE_BIN (prebuilt, $(date -u -r "$BASELINE_BIN" +%FT%TZ)), db walletd_bench_base, redis db $REDIS_DB_BASE, 127.0.0.1:$PORT_BASE"
echo "  B: $("$WRK" -v 2>&1 | head -1 | cut -d' ' -f1-2), scripts/bench/debit.lua: a fresh Idempotency-Key per request, amount 0.01 EUR"
echo "  A: pgbench $(pgbench --version | awk '{print $3}') -M prepared, raw-SQL debit on plain tables (walletd's columns, keys and indexes;"
echo "     no triggers, FKs, CHECKs, idempotency or outbox rows), db walletd_bench_sql; replay's A is the hot debit"
echo "  postgres (shared, not reconfigured): fsync=$(psql_do postgres -c 'show fsync') synchronous_commit=$(psql_do postgres -c 'show synchronous_commit') shared_buffers=$(psql_do postgres -c 'show shared_buffers')"
echo "  req/s counts 2xx only; p50/p90/p99 ms over all answers; B/A: this round's pgbench; RSS MB: peak"
echo "  VmRSS sampled during the run / VmHWM since start; lag: outbox publish lag p50/p99 ms"
for t in "${targets[@]}"; do setup_wallets "$t"; done
sleep 1 # the setup's events are published before the first scrape

for scenario in $SCENARIOS; do
  case $scenario in
    uniform|hot|replay)
      echo
      printf '%-8s %5s %-8s %9s %8s %-16s %7s %7s %7s %6s %6s %6s %7s %7s  %s\n' "$scenario" round target \
        'req/s' ok non-2xx p50 p90 p99 B/A rss hwm lag50 lag99 check
      for round in $(seq 1 "$ROUNDS"); do
        for t in pgbench "${targets[@]}"; do
          if [ "$t" = pgbench ]; then line=$(run_pgbench "$scenario")
          else line=$(run_wrk "$t" "$scenario" "$round"); fi
          r=$(field "$line" rps) ok=$(field "$line" ok)
          [ "$t" = pgbench ] && round_pg=$r
          rps[$scenario,$t]+=" $r"; p50[$scenario,$t]+=" $(field "$line" p50_ms)"
          p90[$scenario,$t]+=" $(field "$line" p90_ms)"; p99[$scenario,$t]+=" $(field "$line" p99_ms)"
          bad[$scenario,$t]+=" $(field "$line" non2xx)"
          lag50=$(field "$line" lag_p50_ms) lag99=$(field "$line" lag_p99_ms)
          l50[$scenario,$t]+=" $lag50"; l99[$scenario,$t]+=" $lag99"
          rss[$scenario,$t]+=" $(field "$line" rss_mb)"; hwm[$scenario,$t]+=" $(field "$line" hwm_mb)"
          check=-
          if [ "$t" != pgbench ] && [ "$scenario" = hot ]; then
            # a debit still in flight when wrk stops is charged but not counted: up to CONNECTIONS
            c=$(field "$line" charged)
            check="charged=$c ok=$ok"
            if [ "$c" -lt "$ok" ] || [ "$c" -gt $((ok + CONNECTIONS)) ]; then check+=" MISMATCH"; fi
          elif [ "$t" != pgbench ] && [ "$scenario" = replay ]; then
            reps=$(field "$line" replays) c=$(field "$line" charged)
            check="first=$(field "$line" first) replays=$reps/$(field "$line" requests) charged=$c"
            { [ "$reps" = "$(field "$line" requests)" ] && [ "$c" = 0 ]; } || check+=" (NOT all replays)"
          fi
          [ "$check" != - ] && note[$scenario,$t]+="$check; "
          vs=-; [ "$t" != pgbench ] && vs=$(ratio "$r" "$round_pg")
          printf '%-8s %5s %-8s %9.1f %8s %-16s %7s %7s %7s %6s %6s %6s %7s %7s  %s\n' "" "$round" "$t" "$r" "$ok" \
            "$(field "$line" non2xx)" "$(field "$line" p50_ms)" "$(field "$line" p90_ms)" "$(field "$line" p99_ms)" \
            "$vs" "$(field "$line" rss_mb)" \
            "$(field "$line" hwm_mb)" "${lag50:--}" "${lag99:--}" "$check"
        done
      done
      ;;
    reads)
      [ ${#targets[@]} -gt 0 ] || continue
      echo
      printf '%-8s %5s %-8s %8s %7s %7s %7s %-12s %8s %-9s %6s %6s %7s %7s\n' reads round target 'reads/s' p50 p90 p99 \
        non-2xx 'writes/s' cache-hit rss hwm lag50 lag99
      for round in $(seq 1 "$ROUNDS"); do
        for t in "${targets[@]}"; do
          rss_start "$t"
          line=$(client reads "${url[$t]}" "${key[$t]}" "$READERS" "$READS" "$READ_WALLETS" "$WRITERS")
          rss_stop "$t" >"$work/rss.line"
          line+=" $(<"$work/rss.line")"
          r=$(field "$line" rps)
          rps[reads,$t]+=" $r"; p50[reads,$t]+=" $(field "$line" p50_ms)"
          p90[reads,$t]+=" $(field "$line" p90_ms)"; p99[reads,$t]+=" $(field "$line" p99_ms)"; bad[reads,$t]+=" $(field "$line" non2xx)"
          hit[$t]+=" $(field "$line" cache_hit)"; l50[reads,$t]+=" $(field "$line" lag_p50_ms)"
          l99[reads,$t]+=" $(field "$line" lag_p99_ms)"
          rss[reads,$t]+=" $(field "$line" rss_mb)"; hwm[reads,$t]+=" $(field "$line" hwm_mb)"
          printf '%-8s %5s %-8s %8.1f %7s %7s %7s %-12s %8s %-9s %6s %6s %7s %7s\n' "" "$round" "$t" "$r" \
            "$(field "$line" p50_ms)" "$(field "$line" p90_ms)" "$(field "$line" p99_ms)" "$(field "$line" non2xx)" \
            "$(field "$line" wps)" "$(field "$line" cache_hit)" "$(field "$line" rss_mb)" "$(field "$line" hwm_mb)" \
            "$(field "$line" lag_p50_ms)" "$(field "$line" lag_p99_ms)"
          echo "          $t: cache reads: $(field "$line" cache_reads); writes: $(field "$line" writes) ($(field "$line" write_non2xx) non-2xx); events in lag histogram: $(field "$line" lag_events)" >>"$work/reads.notes"
        done
      done
      ;;
    sql)
      [ "${targets[0]:-}" = new ] || die "the sql workload needs the new target"
      # The setup's wallets (created first; the reads workload adds its own later).
      psql_do walletd_bench_new -c "DROP TABLE IF EXISTS bench_ids" -c \
        "CREATE TABLE bench_ids AS SELECT row_number() OVER (ORDER BY id) AS n, id, tenant_id FROM (SELECT id, tenant_id FROM wallets ORDER BY created_at, id LIMIT $WALLETS) setup" \
        -c "CREATE UNIQUE INDEX ON bench_ids (n)"
      [ "$(psql_do walletd_bench_new -c 'SELECT count(*) FROM bench_ids')" = "$WALLETS" ] \
        || die "sql: walletd_bench_new does not hold $WALLETS wallets"
      echo
      printf '%-8s %5s %-12s %9s %7s %7s %7s %-16s %7s\n' sql round statements tps p50 p90 p99 failed x/raw
      for round in $(seq 1 "$ROUNDS"); do
        for v in raw walletd; do
          if [ "$v" = raw ]; then line=$(run_pgbench uniform)
          else line=$(run_pgbench sql "$root/scripts/bench/walletd_debit.sql" walletd_bench_new); fi
          r=$(field "$line" rps); [ "$v" = raw ] && round_pg=$r
          rps[sql,$v]+=" $r"
          printf '%-8s %5s %-12s %9.1f %7s %7s %7s %-16s %7s\n' "" "$round" "$v" "$r" "$(field "$line" p50_ms)" \
            "$(field "$line" p90_ms)" "$(field "$line" p99_ms)" "$(field "$line" non2xx)" \
            "$( [ "$v" = raw ] && echo - || ratio "$r" "$round_pg")"
        done
      done
      ;;
  esac
done

echo
echo "medians over $ROUNDS rounds of ${DURATION}s (req/s, p50/p90/p99 ms, lag ms: medians of the rounds' values;"
echo "non-2xx: summed over the rounds; RSS MB: max over the rounds; B/A and B/${targets[1]:-base}: ratios of the median req/s)"
printf '%-8s %-8s %9s %7s %7s %7s %-16s %7s %7s %6s %6s %7s %7s\n' workload target 'req/s' p50 p90 p99 non-2xx \
  B/A "B/${targets[1]:-base}" rss hwm lag50 lag99
for scenario in $SCENARIOS; do
  [ "$scenario" = sql ] && continue
  names=("${targets[@]}"); [ "$scenario" != reads ] && names=(pgbench "${targets[@]}")
  for t in "${names[@]}"; do
    m=$(median <<<"${rps[$scenario,$t]:-}")
    vs_pg=-; vs_base=-
    [ "$scenario" != reads ] && [ "$t" != pgbench ] && vs_pg=$(ratio "$m" "$(median <<<"${rps[$scenario,pgbench]}")")
    [ ${#targets[@]} -gt 1 ] && [ "$t" = "${targets[0]}" ] && vs_base=$(ratio "$m" "$(median <<<"${rps[$scenario,${targets[1]}]}")")
    printf '%-8s %-8s %9.1f %7s %7s %7s %-16s %7s %7s %6s %6s %7s %7s\n' "$scenario" "$t" "$m" \
      "$(median <<<"${p50[$scenario,$t]}")" "$(median <<<"${p90[$scenario,$t]:-}" | dash)" \
      "$(median <<<"${p99[$scenario,$t]}")" "$(sum_non2xx <<<"${bad[$scenario,$t]}")" "$vs_pg" "$vs_base" \
      "$(maximum <<<"${rss[$scenario,$t]:-}" | dash)" "$(maximum <<<"${hwm[$scenario,$t]:-}" | dash)" \
      "$(median <<<"${l50[$scenario,$t]:-}" | dash)" "$(median <<<"${l99[$scenario,$t]:-}" | dash)"
  done
done
if [[ " $SCENARIOS " == *" uniform "* ]]; then
  for t in "${targets[@]}"; do
    u=$(sum_non2xx <<<"${bad[uniform,$t]}")
    if [ "$u" = - ]; then echo "uniform  $t: no non-2xx (0 expected)"
    else echo "uniform  $t: non-2xx $u (0 expected)"; fi
  done
fi
if [[ " $SCENARIOS " == *" sql "* ]]; then
  raw=$(median <<<"${rps[sql,raw]}") own=$(median <<<"${rps[sql,walletd]}")
  echo "sql      median tps: raw $raw; walletd's statements $own ($(ratio "$own" "$raw") x raw)"
  if [[ " $SCENARIOS " == *" uniform "* ]]; then
    http=$(median <<<"${rps[uniform,new]}")
    echo "sql      walletd over HTTP (uniform) / its own statements through pgbench: $(ratio "$http" "$own")"
  fi
fi
for scenario in hot replay; do
  for t in "${targets[@]}"; do
    [ -n "${note[$scenario,$t]:-}" ] && echo "$(printf '%-8s' "$scenario") $t per round: ${note[$scenario,$t]%; }"
  done
done
if [ -f "$work/layers.notes" ]; then
  echo "where the time goes (walletd_pipeline_layer_seconds over each run; batches: walletd_pipeline_batch_size):"
  cat "$work/layers.notes"
fi
if [ -f "$work/reads.notes" ]; then
  for t in "${targets[@]}"; do
    echo "reads    $t: cache-hit $(median %.3f <<<"${hit[$t]}") (median of the rounds)"
  done
  echo "reads detail (per round, in order):"; cat "$work/reads.notes"
fi

# --- fixed rate -----------------------------------------------------------------------------
if [ "$FIXED_RATE" = 1 ] && [[ " $SCENARIOS " == *" uniform "* ]] && [ "$NEW_BIN" != none ]; then
  peak=$(median <<<"${rps[uniform,new]}")
  rate=$(awk -v p="$peak" -v f="$RATE_FRACTION" 'BEGIN {printf "%.1f", p * f}')
  echo
  echo "fixed rate: ${rate} debits/s = $RATE_FRACTION x new's median uniform ${peak} req/s, ${RATE_DURATION}s open loop,"
  echo "uniform over $WALLETS wallets, latency from each debit's due time (goals: p99 <= 10 ms, RSS <= 100 MB)"
  printf '%-8s %9s %8s %8s %-16s %7s %7s %7s %7s %6s %6s %9s %8s\n' target 'target/s' 'req/s' ok non-2xx p50 p90 p99 \
    max rss hwm send-lag in-flight
  for t in "${targets[@]}"; do
    rss_start "$t"
    line=$(timeout $((RATE_DURATION + 60)) "$CLIENT_BIN" rate "${url[$t]}" "${key[$t]}" "$rate" "$RATE_DURATION" "${wallets_of[$t]}")
    rss_stop "$t" >"$work/rss.line"
    line+=" $(<"$work/rss.line")"
    printf '%-8s %9s %8s %8s %-16s %7s %7s %7s %7s %6s %6s %9s %8s\n' "$t" "$(field "$line" target_rps)" \
      "$(field "$line" rps)" "$(field "$line" ok)" "$(field "$line" non2xx)" "$(field "$line" p50_ms)" \
      "$(field "$line" p90_ms)" "$(field "$line" p99_ms)" "$(field "$line" max_ms)" "$(field "$line" rss_mb)" \
      "$(field "$line" hwm_mb)" "$(field "$line" send_lag_max_ms)" "$(field "$line" max_in_flight)"
    p99v=$(field "$line" p99_ms)
    all_rss="$(field "$line" rss_mb)"
    for s in $SCENARIOS; do all_rss+=" ${rss[$s,$t]:-}"; done
    rmax=$(maximum <<<"$all_rss")
    echo "  $t: p99 $p99v ms $(awk -v v="$p99v" 'BEGIN {print (v ~ /^[0-9.]+$/ && v <= 10) ? "<= 10 ms: met" : "> 10 ms: NOT met"}');" \
      "max RSS under load (every run) $rmax MB $(awk -v v="$rmax" 'BEGIN {print (v ~ /^[0-9.]+$/ && v <= 100) ? "<= 100 MB: met" : "> 100 MB: NOT met"}')"
  done
fi
echo "load at end $(cut -d' ' -f1-3 /proc/loadavg)"
