#!/usr/bin/env bash
# Where the CPU goes during a uniform debit run (issue 9): runs scripts/bench.sh with one long
# uniform round on the new build only, samples the whole machine with `perf record` for
# SAMPLE_S seconds while wrk is running, and prints the CPU split by process and the hottest
# symbols of walletd and of Postgres. Rerunnable; loopback only; needs perf (linux-perf).
#
#   scripts/profile.sh                       # builds this tree (as bench.sh does)
#   NEW_BIN=/path/walletd CLIENT_BIN=/path/bench_debits scripts/profile.sh
#
# Knobs (env): SAMPLE_S=8 FREQ=499 TOP=15, and bench.sh's (CONNECTIONS, WALLETS, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLE_S=${SAMPLE_S:-8} FREQ=${FREQ:-499} TOP=${TOP:-15}
command -v perf >/dev/null || { echo "profile: perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
work=$(mktemp -d /tmp/walletd-profile.XXXXXX)
trap 'kill "$bench" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

DURATION=$((SAMPLE_S + 12)) ROUNDS=1 SCENARIOS=uniform FIXED_RATE=0 BASELINE_BIN='' \
  scripts/bench.sh >"$work/bench.out" 2>&1 &
bench=$!
# The uniform round starts with pgbench; sample once wrk (walletd's turn) has run for 2 s.
for _ in $(seq 1 600); do pgrep -x wrk >/dev/null && break; sleep 0.5; done
pgrep -x wrk >/dev/null || { cat "$work/bench.out" >&2; echo "profile: wrk never started" >&2; exit 1; }
sleep 2
perf record -a -F "$FREQ" -g -o "$work/perf.data" -- sleep "$SAMPLE_S" >/dev/null 2>&1
wait "$bench" || true

echo "== CPU by process, ${SAMPLE_S} s of a uniform debit run (all cores; % of samples)"
perf report -i "$work/perf.data" --no-children --sort comm --stdio 2>/dev/null \
  | grep -E '^ +[0-9.]+%' | head -12 || true
# walletd's threads: actix's workers (names cut to 15 characters) and tokio's.
for comm in 'actix-server wo,tokio-rt-worker' postgres redis-server; do
  echo "== hottest symbols in $comm (% of all samples)"
  perf report -i "$work/perf.data" --no-children --comm "$comm" --sort dso,sym --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | head -"$TOP" || true
done
echo "== the bench run sampled"
grep -E '^uniform +(pgbench|new) ' "$work/bench.out" | tail -2 || true
grep -A1 'where the time goes' "$work/bench.out" | tail -1 || true
