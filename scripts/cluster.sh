#!/usr/bin/env bash
# A replicated walletd cluster on loopback, under load and faults, checked end to end.
#
# Starts: a private database on the shared Postgres (127.0.0.1:5432, walletd_cluster_<pid>,
# dropped afterwards), 3 private Redis nodes (the Redlock quorum), 3 walletd replicas (release
# build) on free loopback ports, and a private nginx in front of them with the proxy policy of
# deploy/nginx/proxy.conf. Then, through nginx only, scripts/cluster/drive.py runs concurrent
# debits and credits with Idempotency-Keys over several wallets (double-clicks, client retries
# of the same key), while one replica is SIGKILLed and restarted and the first Redis node is
# stopped and restarted (a key is revoked meanwhile). Afterwards it retries every request
# without a decision, and checks from the database and the API: every acknowledged (2xx)
# request in the ledger exactly once, no entry nobody asked for, seq / balance arithmetic /
# balance = sum, audit; then the per-key rate limit across the 3 replicas and a revocation seen
# by all 3. One summary line on stdout; exit 1 on any failure, 2 if the harness itself broke.
#
#   scripts/cluster.sh                    builds `cargo build --release --locked` first
#   WALLETD_BIN=path scripts/cluster.sh   uses that binary instead (no build)
#   CLUSTER_KEEP=1                        keeps the temp dir (logs, nginx access log, state)
#
# Bounded: about 1.5 minutes after the build, killed (and cleaned up) after CLUSTER_TIMEOUT_S
# (240). Never stops or reconfigures the shared Postgres or Redis. Everything it starts is
# stopped on every exit path (trap), the database dropped, the temp dir removed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { log "$*"; exit 2; }

# Knobs (documented in docs/cluster.md).
LOAD_S=${CLUSTER_LOAD_S:-24}          # how long the load runs
RATE_LIMIT=${CLUSTER_RATE_LIMIT:-20}  # rate_limit.requests_per_second of every replica
WORKERS=16                            # load clients, one API key each (the limit is per key)
WORKER_RATE=12                        # sends per second per client (< RATE_LIMIT)
SERVER=${CLUSTER_PG_SERVER:-postgres://postgres@127.0.0.1:5432}

if [ -z "${CLUSTER_INNER:-}" ]; then
  # --- outside the time bound: prerequisites and the build ---------------------------------
  is_root() { [ "$(id -u)" = 0 ]; }
  apt_install() {
    is_root && command -v apt-get >/dev/null || return 1
    log "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  }
  have_nginx() { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }
  have_nginx || apt_install nginx || die "nginx is missing: apt-get install nginx"
  command -v redis-server >/dev/null || apt_install redis-server || die "redis-server is missing: apt-get install redis-server"
  command -v psql >/dev/null || apt_install postgresql-client || die "psql is missing: apt-get install postgresql-client"
  command -v curl >/dev/null || apt_install curl || die "curl is missing: apt-get install curl"
  command -v python3 >/dev/null || die "python3 (>= 3.9, standard library only) is missing"
  # The shared Postgres must answer (started if it is merely stopped; never reconfigured).
  psql "$SERVER/postgres" -Atqc 'SELECT 1' >/dev/null 2>&1 \
    || DATABASE_URL="$SERVER/walletd" scripts/ensure-services.sh
  if [ -z "${WALLETD_BIN:-}" ]; then
    log "building walletd (release)"
    cargo build --release --locked --bin walletd
    WALLETD_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/walletd"
  fi
  [ -x "$WALLETD_BIN" ] || die "no walletd binary at $WALLETD_BIN"
  WALLETD_BIN=$(cd "$(dirname "$WALLETD_BIN")" && pwd)/$(basename "$WALLETD_BIN")
  export WALLETD_BIN CLUSTER_INNER=1
  exec timeout -k 20 "${CLUSTER_TIMEOUT_S:-240}" "$0" "$@"
fi

# --- inside the time bound ---------------------------------------------------------------------
STARTED=$(date +%s)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
TMP=$(mktemp -d /tmp/walletd-cluster.XXXXXX)
chmod 755 "$TMP"   # nginx workers (another user when run as root) create temp files under it
DB="walletd_cluster_$$"
declare -a REDIS_PORTS WALLETD_PORTS WALLETD_PIDS
CHILD=""
LOAD_PID=""
DB_CREATED=""

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$CHILD" ] && kill -KILL "$CHILD" 2>/dev/null
  [ -n "$LOAD_PID" ] && kill -KILL "$LOAD_PID" 2>/dev/null
  for pid in "${WALLETD_PIDS[@]:-}"; do [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; done
  if [ -f "$TMP/nginx/nginx.pid" ]; then
    local master; master=$(cat "$TMP/nginx/nginx.pid")
    local workers; workers=$(pgrep -P "$master" 2>/dev/null)
    kill -TERM "$master" 2>/dev/null
    for _ in $(seq 1 20); do kill -0 "$master" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$master" $workers 2>/dev/null
  fi
  for i in 0 1 2; do
    local pidfile="$TMP/redis-$i/redis.pid"
    [ -f "$pidfile" ] && kill -TERM "$(cat "$pidfile")" 2>/dev/null
  done
  sleep 0.3
  for pid in "${WALLETD_PIDS[@]:-}"; do [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; done
  for i in 0 1 2; do
    local pidfile="$TMP/redis-$i/redis.pid"
    [ -f "$pidfile" ] && kill -KILL "$(cat "$pidfile")" 2>/dev/null
  done
  wait 2>/dev/null
  if [ -n "$DB_CREATED" ]; then
    psql "$SERVER/postgres" -Xq -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 \
      || log "could not drop database $DB"
  fi
  if [ $rc -ne 0 ]; then
    for f in "$TMP"/walletd-*.log "$TMP"/nginx/error.log; do
      [ -s "$f" ] && { log "--- last lines of $f"; tail -n 15 "$f" >&2; }
    done
  fi
  if [ -n "${CLUSTER_KEEP:-}" ]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit $rc
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated (time bound ${CLUSTER_TIMEOUT_S:-240} s?)"; exit 124' TERM

# Runs a step in the background and waits for it, so that a signal (the time bound) interrupts
# the wait and the trap can stop the step.
step() { "$@" & CHILD=$!; local rc=0; wait "$CHILD" || rc=$?; CHILD=""; return $rc; }

free_ports() { # count: distinct free loopback ports, bound at once so they differ
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r -a PORTS <<<"$(free_ports 7)"
REDIS_PORTS=("${PORTS[@]:0:3}")
WALLETD_PORTS=("${PORTS[@]:3:3}")
NGINX_PORT=${PORTS[6]}

# --- Redis: three private nodes ------------------------------------------------------------
redis_start() { # index
  local dir="$TMP/redis-$1" port=${REDIS_PORTS[$1]}
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --dir "$dir" --logfile "$dir/redis.log"
  for _ in $(seq 1 50); do
    [ "$(redis-cli -p "$port" ping 2>/dev/null)" = PONG ] && return 0
    sleep 0.1
  done
  die "redis on :$port did not start"
}
redis_stop() { # index: SHUTDOWN NOSAVE, its data is gone (as with a crashed node)
  local port=${REDIS_PORTS[$1]} pidfile="$TMP/redis-$1/redis.pid"
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  for _ in $(seq 1 50); do [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$(cat "$pidfile")" 2>/dev/null || true
}
for i in 0 1 2; do redis_start "$i"; done

# --- walletd: one database, three replicas ---------------------------------------------------
# Only our settings: nothing from the caller's environment may point elsewhere.
bin=$WALLETD_BIN
for v in $(compgen -e); do case "$v" in WALLETD*|DATABASE_URL|REDIS_URLS) unset "$v";; esac; done
export WALLETD_BIN=$bin
export DATABASE_URL="$SERVER/$DB"
export REDIS_URLS="redis://127.0.0.1:${REDIS_PORTS[0]},redis://127.0.0.1:${REDIS_PORTS[1]},redis://127.0.0.1:${REDIS_PORTS[2]}"
export WALLETD_CONFIG_DIR="$ROOT/config"
export WALLETD__RATE_LIMIT__REQUESTS_PER_SECOND=$RATE_LIMIT
# Short lock TTL and idempotency lease, so the SIGKILLed replica's locks and in-flight keys
# free themselves within seconds (walletd requires lock wait < request deadline < lease).
export WALLETD__LOCK__TTL_MS=2000 WALLETD__LOCK__WAIT_MS_MAX=1000
export WALLETD__PIPELINE__DEADLINE_MS=2500 WALLETD__IDEMPOTENCY__LEASE_MS=3000
export WALLETD__DATABASE__STATEMENT_TIMEOUT_MS=2000 WALLETD__DATABASE__LOCK_TIMEOUT_MS=1000
export WALLETD__DATABASE__IDLE_IN_TRANSACTION_SESSION_TIMEOUT_MS=2000
# 3 replicas x 8 connections on a Postgres other work shares.
export WALLETD__DATABASE__POOL_MAX_SIZE=8
export WALLETD__SERVER__SHUTDOWN_TIMEOUT_S=1
export RUST_LOG=warn NO_COLOR=1

PGOPTIONS=--client-min-messages=warning psql "$SERVER/postgres" -Xq -c "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null
DB_CREATED=1
step timeout 60 "$WALLETD_BIN" migrate >"$TMP/migrate.log" 2>&1 || { cat "$TMP/migrate.log" >&2; die "walletd migrate failed"; }

walletd_start() { # index
  local port=${WALLETD_PORTS[$1]}
  WALLETD_BIND="127.0.0.1:$port" "$WALLETD_BIN" serve --no-migrate \
    </dev/null >>"$TMP/walletd-$1.log" 2>&1 &
  WALLETD_PIDS[$1]=$!
  for _ in $(seq 1 150); do
    curl -fsS -m 1 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    kill -0 "${WALLETD_PIDS[$1]}" 2>/dev/null || die "walletd $1 exited at start"
    sleep 0.1
  done
  die "walletd $1 not ready on :$port within 15 s"
}
for i in 0 1 2; do walletd_start "$i"; done

# --- nginx ---------------------------------------------------------------------------------
mkdir -p "$TMP/nginx/tmp"
upstreams=""
for port in "${WALLETD_PORTS[@]}"; do
  upstreams+="        server 127.0.0.1:$port max_fails=1 fail_timeout=2s;"$'\n'
done
python3 - "$ROOT/scripts/cluster/nginx.conf.in" "$TMP/nginx/nginx.conf" \
  "$TMP/nginx" "$NGINX_PORT" "$ROOT/deploy/nginx/proxy.conf" "$upstreams" <<'EOF'
import sys
src, dst, prefix, port, proxy, upstreams = sys.argv[1:]
text = open(src).read()
for k, v in {"@PREFIX@": prefix, "@PORT@": port, "@PROXY_CONF@": proxy,
             "@UPSTREAM_SERVERS@": upstreams.rstrip("\n")}.items():
    text = text.replace(k, v)
open(dst, "w").write(text)
EOF
"$NGINX" -t -q -e "$TMP/nginx/error.log" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" \
  || die "nginx rejected its configuration"
"$NGINX" -e "$TMP/nginx/error.log" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" \
  || die "nginx did not start"
for _ in $(seq 1 50); do
  curl -fsS -m 1 "http://127.0.0.1:$NGINX_PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
curl -fsS -m 1 "http://127.0.0.1:$NGINX_PORT/healthz" >/dev/null || die "nginx does not answer"

export CLUSTER_NGINX_URL="http://127.0.0.1:$NGINX_PORT"
export CLUSTER_REPLICA_URLS="http://127.0.0.1:${WALLETD_PORTS[0]} http://127.0.0.1:${WALLETD_PORTS[1]} http://127.0.0.1:${WALLETD_PORTS[2]}"
log "up in $(( $(date +%s) - STARTED )) s in $TMP: redis :${REDIS_PORTS[*]}, walletd :${WALLETD_PORTS[*]}, nginx :$NGINX_PORT, database $DB"

drive() { step python3 "$ROOT/scripts/cluster/drive.py" --state "$TMP" "$@"; }
FAILED=0
drive setup --workers "$WORKERS" --wallets 8 --funding 40.00 || die "setup failed"

# --- load, with the faults in the middle of it ---------------------------------------------------
python3 "$ROOT/scripts/cluster/drive.py" --state "$TMP" load --duration "$LOAD_S" \
  --worker-rate "$WORKER_RATE" &
LOAD_PID=$!
CHILD=$LOAD_PID
REPLICA_KILLS=0
REDIS_STOPS=0
REVOCATIONS=()
sleep 5
victim=1
# Frozen first (SIGSTOP) for a moment, so the SIGKILL lands on requests the replica has
# accepted and not answered (some mid-transaction, some committed but unanswered): at this
# load a bare kill catches about one request in flight.
log "fault: SIGSTOP then SIGKILL walletd $victim (pid ${WALLETD_PIDS[$victim]}) mid-load"
kill -STOP "${WALLETD_PIDS[$victim]}"
sleep 0.7
{ kill -KILL "${WALLETD_PIDS[$victim]}"; wait "${WALLETD_PIDS[$victim]}"; } 2>/dev/null || true
REPLICA_KILLS=$((REPLICA_KILLS + 1))
sleep 1.5
log "fault: restarting walletd $victim"
walletd_start "$victim"
RESTARTED_AT=$(date +%s.%N)
sleep 2
log "fault: stopping redis node 0 (:${REDIS_PORTS[0]}; also the rate-limit, revocation, replay-cache and stream node)"
redis_stop 0
REDIS_STOPS=$((REDIS_STOPS + 1))
sleep 1
# A revocation while the node that carries revocation markers is down: the replicas' key cache
# (auth.cache_ttl_ms) is the bound.
drive revoke --which 1 --label redis_down || FAILED=1
REVOCATIONS+=(redis_down)
sleep 2
log "fault: restarting redis node 0 (empty)"
redis_start 0
CHILD=$LOAD_PID
wait "$LOAD_PID" || { log "the load driver failed"; FAILED=1; }
CHILD=""
LOAD_PID=""
# Evidence from nginx's access log: requests the restarted replica answered after its restart
# (passive failover brought it back), and requests nginx moved to another replica.
VICTIM_SERVED=$(awk -v t="$RESTARTED_AT" -v u="upstream=127.0.0.1:${WALLETD_PORTS[$victim]}" \
  '$1 > t && $5 == u' "$TMP/nginx/access.log" | wc -l)
INFLIGHT_KILLED=$(awk -v u="upstream=127.0.0.1:${WALLETD_PORTS[$victim]}" \
  '$4 == 502 && $5 == u' "$TMP/nginx/access.log" | wc -l)
NEXT_UPSTREAM=$(grep -c 'upstream=[^ ]*, ' "$TMP/nginx/access.log" || true)
log "nginx: $INFLIGHT_KILLED requests were in flight on the killed replica (502 to the client), $NEXT_UPSTREAM were moved to another replica, the restarted replica answered $VICTIM_SERVED after its restart"

# --- after the faults ---------------------------------------------------------------------------
drive settle || FAILED=1
drive verify || FAILED=1
drive ratelimit --limit "$RATE_LIMIT" || FAILED=1
drive revoke --which 2 --label redis_up || FAILED=1
REVOCATIONS+=(redis_up)
drive metrics || FAILED=1
drive summary --replica-kills "$REPLICA_KILLS" --redis-stops "$REDIS_STOPS" \
  --victim-served "$VICTIM_SERVED" --next-upstream "$NEXT_UPSTREAM" \
  --inflight-killed "$INFLIGHT_KILLED" \
  --seconds "$(( $(date +%s) - STARTED ))" --revocations "${REVOCATIONS[@]}" || FAILED=1
exit "$FAILED"
