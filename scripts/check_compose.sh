#!/usr/bin/env bash
# Static checks of the deploy files, for a machine without a container engine:
#   1. `docker-compose config` parses and resolves deploy/compose.yaml (anchors, merge keys,
#      depends_on conditions, variable defaults) and must print no warning;
#   2. the nginx configuration it mounts (deploy/nginx/walletd.conf + proxy.conf) passes
#      `nginx -t` with the local nginx, the replica host names replaced by 127.0.0.1 (nginx
#      resolves upstream names when it loads a configuration, and walletd-1/-2 exist only on
#      the compose network);
#   3. the Dockerfile's HEALTHCHECK is valid JSON exec form and the .dockerignore lets through
#      every path the Dockerfile copies.
# Neither builds nor runs an image. Installs docker-compose / nginx with apt-get when they are
# missing and this runs as root (as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'check_compose: %s\n' "$*" >&2; }
apt_install() {
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || return 1
  log "installing $* with apt-get"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v docker-compose >/dev/null || apt_install docker-compose \
  || { log "docker-compose is missing: apt-get install docker-compose"; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || apt_install nginx || { log "nginx is missing: apt-get install nginx"; exit 1; }
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
tmp=$(mktemp -d /tmp/walletd-check-compose.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# 1. compose
if ! docker-compose -f deploy/compose.yaml config >"$tmp/compose.out" 2>"$tmp/compose.err"; then
  cat "$tmp/compose.err" >&2; log "deploy/compose.yaml: INVALID"; exit 1
fi
if [ -s "$tmp/compose.err" ]; then
  cat "$tmp/compose.err" >&2; log "deploy/compose.yaml: warnings (see above)"; exit 1
fi
services=$(docker-compose -f deploy/compose.yaml config --services | sort | tr '\n' ' ')
expected="migrate nginx postgres redis-1 redis-2 redis-3 walletd-1 walletd-2 "
[ "$services" = "$expected" ] || { log "services are '$services', expected '$expected'"; exit 1; }

# 2. nginx, as the compose file mounts it
mkdir -p "$tmp/nginx/conf.d" "$tmp/nginx/walletd" "$tmp/nginx/tmp"
cp deploy/nginx/proxy.conf "$tmp/nginx/walletd/proxy.conf"
sed -e 's/walletd-[0-9]:8080/127.0.0.1:8080/' \
    -e "s#/etc/nginx/walletd/proxy.conf#$tmp/nginx/walletd/proxy.conf#" \
    deploy/nginx/walletd.conf >"$tmp/nginx/conf.d/default.conf"
cat >"$tmp/nginx/nginx.conf" <<CONF
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $tmp/nginx/tmp/body;
    proxy_temp_path $tmp/nginx/tmp/proxy;
    fastcgi_temp_path $tmp/nginx/tmp/fastcgi;
    uwsgi_temp_path $tmp/nginx/tmp/uwsgi;
    scgi_temp_path $tmp/nginx/tmp/scgi;
    include $tmp/nginx/conf.d/default.conf;
}
CONF
if ! "$NGINX" -t -q -e "$tmp/nginx/error.log" -p "$tmp/nginx/" -c "$tmp/nginx/nginx.conf" 2>"$tmp/nginx.err"; then
  cat "$tmp/nginx.err" >&2; log "deploy/nginx: INVALID"; exit 1
fi

# 3. Dockerfile
python3 - <<'PY'
import json, re, sys
text = open("Dockerfile").read()
joined = re.sub(r"\\\n", " ", text)
hc = [l for l in joined.splitlines() if l.startswith("HEALTHCHECK")]
assert len(hc) == 1, "one HEALTHCHECK"
json.loads(hc[0].split("CMD", 1)[1])  # exec form must be valid JSON
ignore = open(".dockerignore").read().split()
allowed = {p.lstrip("!").rstrip("/") for p in ignore if p.startswith("!")}
for line in joined.splitlines():
    if line.startswith("COPY") and "--from=" not in line:
        for src in line.split()[1:-1]:
            if src.rstrip("/") not in allowed:
                sys.exit(f"Dockerfile copies {src}, which .dockerignore excludes")
PY
log "ok: deploy/compose.yaml (services: ${services% }), deploy/nginx (nginx -t), Dockerfile/.dockerignore; no image was built or run (no container engine here)"
