#!/usr/bin/env bash
# Static checks of the monitoring files, no running walletd needed:
#   1. `promtool check rules deploy/prometheus/alerts.yml` and the rules' unit tests,
#      `promtool test rules deploy/prometheus/alerts_test.yml`;
#   2. deploy/grafana/walletd.json is JSON, and every PromQL expression in it parses (promtool
#      checks them as recording rules, Grafana's $__rate_interval / $instance filled in);
#   3. every walletd_* / process_* name the dashboard and the alerts query is one walletd
#      exports: the families listed in docs/metrics.md, which the test
#      `every_exported_family_is_documented_and_every_documented_one_exported`
#      (tests/api/metrics.rs) holds equal to what the binary registers. (A live scrape would
#      miss the families that have no series yet, e.g. a shed counter before the first shed.)
# Installs promtool (Debian package `prometheus`) with apt-get when it is missing and this runs
# in CI (CI=true) or as root.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf 'check_deploy: %s\n' "$*" >&2; }

RULES=deploy/prometheus/alerts.yml
RULE_TESTS=deploy/prometheus/alerts_test.yml
DASHBOARD=deploy/grafana/walletd.json
METRICS_DOC=docs/metrics.md

if ! command -v promtool >/dev/null; then
  if { [ "${CI:-}" = true ] || [ "$(id -u)" = 0 ]; } && command -v apt-get >/dev/null; then
    log "installing promtool (apt-get install prometheus)"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq prometheus >/dev/null
  fi
  command -v promtool >/dev/null || { log "promtool is missing: apt-get install prometheus"; exit 1; }
fi
command -v python3 >/dev/null || { log "python3 is missing"; exit 1; }
tmp=$(mktemp -d /tmp/walletd-check-deploy.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# 1. Alert rules and their unit tests.
promtool check rules "$RULES"
promtool test rules "$RULE_TESTS"

# 2 + 3. The dashboard, and the names both query.
python3 - "$DASHBOARD" "$RULES" "$METRICS_DOC" "$tmp/dashboard_rules.yml" <<'PY'
import json, re, sys

dashboard_path, rules_path, doc_path, out_path = sys.argv[1:]
try:
    with open(dashboard_path) as f:
        dashboard = json.load(f)
except ValueError as e:
    sys.exit(f"check_deploy: {dashboard_path} is not JSON: {e}")

def exprs(node):
    """Every PromQL expression of the dashboard: panel targets and query variables."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from exprs(value)
    elif isinstance(node, list):
        for value in node:
            yield from exprs(value)

queries = [q for q in exprs(dashboard) if q.strip()]
if not queries:
    sys.exit(f"check_deploy: {dashboard_path} has no queries")
for panel in dashboard.get("panels", []):
    if panel.get("type") != "row" and not panel.get("targets"):
        sys.exit(f"check_deploy: panel {panel.get('title')!r} has no query")

# PromQL syntax: each expression as a recording rule, Grafana's variables filled in.
def promql(q):
    q = q.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$instance", ".*")
    m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", q)
    return f"count by ({m.group(2)}) ({m.group(1)})" if m else q
with open(out_path, "w") as out:
    out.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, q in enumerate(queries):
        out.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(promql(q))}\n")

# Names: what docs/metrics.md lists (histograms also as _bucket, _sum, _count).
known, histograms = set(), set()
with open(doc_path) as f:
    for line in f:
        m = re.match(r"\| `((?:walletd|process)_[a-z0-9_]+)` \| (\w+) \|", line)
        if m:
            known.add(m.group(1))
            if m.group(2) == "H":
                histograms.add(m.group(1))
if len(known) < 10:
    sys.exit(f"check_deploy: found only {len(known)} metric names in {doc_path}")
for h in histograms:
    known.update({h + "_bucket", h + "_sum", h + "_count"})

with open(rules_path) as f:
    rules_text = f.read()
name = re.compile(r"\b(?:walletd|process)_[a-z0-9_]+\b")
unknown = {}
for source, text in [(dashboard_path, "\n".join(queries)), (rules_path, rules_text)]:
    # The rules file whole: expressions, and annotations too (a wrong name there misleads
    # whoever is paged).
    for used in set(name.findall(text)):
        if used not in known:
            unknown.setdefault(source, set()).add(used)
if unknown:
    for source, names in unknown.items():
        print(f"check_deploy: {source} uses names walletd does not export: {', '.join(sorted(names))}",
              file=sys.stderr)
    sys.exit(1)
used_total = len(set(name.findall("\n".join(queries))))
print(f"check_deploy: {dashboard_path}: {len(queries)} queries over {used_total} metric names, all exported")
PY
promtool check rules "$tmp/dashboard_rules.yml" >/dev/null \
  || { promtool check rules "$tmp/dashboard_rules.yml"; log "$DASHBOARD: a query does not parse"; exit 1; }
log "OK: alert rules valid and tested, dashboard valid, every queried metric exported"
