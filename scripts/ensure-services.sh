#!/usr/bin/env bash
# Makes sure Postgres and Redis answer at the URLs walletd will use, on a fresh Debian machine:
#   1. already reachable at DATABASE_URL / the first REDIS_URLS node  -> use them;
#   2. installed but stopped  -> start them (a Debian cluster, or a private one in .walletd/);
#   3. not installed and we are root with apt-get  -> install them, then 2;
#   4. otherwise  -> say exactly what is missing and exit 1.
# It never stops or reconfigures a service that is already running.
set -euo pipefail

cd "$(dirname "$0")/.."
STATE_DIR="$PWD/.walletd"
DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/walletd}"
REDIS_URLS="${REDIS_URLS:-redis://127.0.0.1:6379}"

log() { printf 'ensure-services: %s\n' "$*" >&2; }

# host and port out of scheme://[user[:pw]@]host[:port][/...]
url_host() { local r="${1#*://}"; r="${r##*@}"; r="${r%%/*}"; r="${r%%\?*}"; printf '%s' "${r%%:*}"; }
url_port() { local r="${1#*://}"; r="${r##*@}"; r="${r%%/*}"; r="${r%%\?*}"; [[ "$r" == *:* ]] && printf '%s' "${r##*:}" || printf '%s' "$2"; }

reachable() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

wait_for() { # host port what
  for _ in $(seq 1 60); do reachable "$1" "$2" && return 0; sleep 0.5; done
  log "$3 did not come up on $1:$2 within 30 s"; return 1
}

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
  if is_root && command -v apt-get >/dev/null; then
    log "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    return 1
  fi
}

pg_bindir() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do [ -x "$dir/postgres" ] && { printf '%s' "$dir"; return 0; }; done
  command -v postgres >/dev/null && { dirname "$(command -v postgres)"; return 0; }
  return 1
}

ensure_postgres() {
  local host port; host=$(url_host "$DATABASE_URL"); port=$(url_port "$DATABASE_URL" 5432)
  if reachable "$host" "$port"; then log "Postgres is up at $host:$port"; return 0; fi
  case "$host" in 127.*|localhost) ;; *) log "Postgres at $host:$port is unreachable and not local: start it, or set DATABASE_URL"; return 1;; esac

  # A Debian cluster on that port that is merely stopped.
  if command -v pg_lsclusters >/dev/null; then
    local version cluster
    read -r version cluster < <(pg_lsclusters --no-header 2>/dev/null | awk -v p="$port" '$3 == p {print $1, $2; exit}') || true
    if [ -n "${version:-}" ]; then
      log "starting Postgres cluster $version/$cluster"
      pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start || true
      wait_for "$host" "$port" Postgres && return 0
    fi
  fi

  local bindir
  bindir=$(pg_bindir) || { apt_install postgresql && bindir=$(pg_bindir); } || {
    log "Postgres is not reachable at $host:$port and not installed."
    log "Install it (Debian: apt-get install postgresql) or point DATABASE_URL at a server."
    return 1
  }
  # A private cluster with trust auth for the local user 'postgres', data under .walletd/.
  local data="$STATE_DIR/pg" runas=()
  mkdir -p "$STATE_DIR"
  if is_root; then runas=(runuser -u postgres --); chown postgres "$STATE_DIR" 2>/dev/null || true; fi
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising a private Postgres cluster in $data"
    "${runas[@]}" "$bindir/initdb" -D "$data" -U postgres --auth=trust >/dev/null
  fi
  log "starting private Postgres on $host:$port"
  "${runas[@]}" "$bindir/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $port -k /tmp -c listen_addresses=127.0.0.1" start >/dev/null
  wait_for "$host" "$port" Postgres
}

ensure_redis() {
  local first="${REDIS_URLS%%,*}" host port
  host=$(url_host "$first"); port=$(url_port "$first" 6379)
  if reachable "$host" "$port"; then log "Redis is up at $host:$port"; return 0; fi
  case "$host" in 127.*|localhost) ;; *) log "Redis at $host:$port is unreachable and not local: start it, or set REDIS_URLS"; return 1;; esac
  command -v redis-server >/dev/null || apt_install redis-server || {
    log "Redis is not reachable at $host:$port and redis-server is not installed."
    log "Install it (Debian: apt-get install redis-server) or point REDIS_URLS at a server."
    return 1
  }
  mkdir -p "$STATE_DIR"
  log "starting redis-server on $host:$port"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$STATE_DIR" --logfile "$STATE_DIR/redis-$port.log"
  wait_for "$host" "$port" Redis
}

ensure_toolchain() {
  command -v cargo >/dev/null && return 0
  log "cargo is missing: install the Rust toolchain (rustup, Rust >= 1.88) and retry."
  return 1
}

ensure_toolchain
ensure_postgres
ensure_redis
