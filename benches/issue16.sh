#!/usr/bin/env bash
# Issue #16's whole table in one recorded run: every row, side by side with HAProxy and
# direct, one binary, one machine, one session.
#
#   benches/issue16.sh --continuity-bin PATH --out DIR [--rounds N] [--quick]
#
# Runs, in this order, each into a subdirectory of DIR:
#   load/      benches/load.sh: redis_np, redis_p16, redis_c1, pg_S, pg_tpcb against direct,
#              continuity (the default relay), continuity-mux (`multiplex = true`), haproxy
#   http/      benches/http_load.sh: wrk keep-alive and Connection: close, direct,
#              continuity (as shipped: access log on), haproxy
#   profile/   load.sh and http_load.sh once more, 1 round, with --perf: each proxy's
#              system calls and context switches per operation (not in the ratios above:
#              perf's tracepoint costs the proxy a little per call)
#   connmem/   benches/conn_memory.sh: redis, postgres and http through the relay, with the
#              Redis outage (10,000 clients held, or as many as the fd limit allows)
#   connmem-mux/  the same with --redis-multiplex --pg-multiplex (redis and postgres)
#   demo/      scripts/demo with this binary: continuity's VmRSS 45, 50 and 55 s after start
#   failover/  benches/failover.sh: the failover gap, relay and multiplexed, and HAProxy's
#              default config beside them
# then benches/issue16_table.py DIR writes DIR/table.md: the issue's rows with the measured
# ratios and, for each, whether it is met. --rounds (default 5) is the load and wrk rounds;
# --quick (1 round, 200 connections, 1 failover rep) checks that the whole chain works.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BIN="" OUT="" ROUNDS=5 QUICK=0
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --continuity-bin) BIN=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done
[[ -n $BIN && -n $OUT ]] || usage 2
[[ -x $BIN ]] || { echo "no continuity binary at $BIN" >&2; exit 2; }
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
log() { printf '[%s] issue16: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

CONNS=() REPS=3 PGS=10
if ((QUICK)); then ROUNDS=1 CONNS=(--conns 200) REPS=1 PGS=3; fi
{
    echo "continuity binary: $BIN (sha256 $(sha256sum "$BIN" | cut -c1-16))"
    echo "git HEAD: $(git -C "$ROOT" log -1 --format='%h %s' 2>/dev/null || echo unknown)"
    echo "started: $(date -u +%FT%TZ), rounds $ROUNDS, quick $QUICK"
} >"$OUT/run.txt"

log "load (every L4 row)"
"$HERE/load.sh" --rounds "$ROUNDS" --targets direct,continuity,continuity-mux,haproxy \
    --benches redis_np,redis_p16,redis_c1,pg_S,pg_tpcb --pg-seconds "$PGS" \
    --wait-quiet 10 --repeat-noisy 1 --continuity-bin "$BIN" --out "$OUT/load"

log "http (wrk keep-alive and Connection: close)"
"$HERE/http_load.sh" --rounds "$ROUNDS" --duration 8 --targets direct,continuity,haproxy \
    --wait-quiet 5 --repeat-noisy 1 --continuity-bin "$BIN" --out "$OUT/http" \
    --results-dir "$OUT/http"

log "profile pass: system calls and context switches per operation (perf stat, 1 round)"
"$HERE/load.sh" --rounds 1 --targets continuity,continuity-mux,haproxy \
    --benches redis_np,redis_p16,redis_c1,pg_S,pg_tpcb --pg-seconds "$PGS" \
    --wait-quiet 10 --perf --continuity-bin "$BIN" --out "$OUT/profile/load"
"$HERE/http_load.sh" --rounds 1 --duration 8 --targets continuity,haproxy \
    --wait-quiet 5 --perf --continuity-bin "$BIN" --out "$OUT/profile/http" \
    --results-dir "$OUT/profile/http"

log "memory through the relay"
"$HERE/conn_memory.sh" "${CONNS[@]}" --continuity-bin "$BIN" --out "$OUT/connmem"
log "memory, multiplexed"
"$HERE/conn_memory.sh" "${CONNS[@]}" --protocols redis,postgres --redis-multiplex --pg-multiplex \
    --continuity-bin "$BIN" --out "$OUT/connmem-mux"

log "demo: idle RSS"
mkdir -p "$OUT/demo"
# The demo's servers and state in a temp dir of their own (their data is not a result).
DEMO_RUN=$(mktemp -d /tmp/continuity-issue16-demo.XXXXXX)
chmod 755 "$DEMO_RUN"
DEMO_DIR="$DEMO_RUN" CONTINUITY_BIN="$BIN" setsid "$ROOT/scripts/demo" >"$OUT/demo/demo.log" 2>&1 &
DEMO=$!
rss_of_demo() {
    local pid
    pid=$(pgrep -f -n "^$BIN run --config $DEMO_RUN/continuity.toml" || true)
    [[ -n $pid ]] && awk '/^VmRSS/ {print $2}' "/proc/$pid/status"
}
: >"$OUT/demo/rss.txt"
for at in 45 50 55; do
    sleep $((at == 45 ? 45 : 5))
    echo "$at $(rss_of_demo)" >>"$OUT/demo/rss.txt"
done
kill -INT -- "-$DEMO" 2>/dev/null || true
wait "$DEMO" 2>/dev/null || true
rm -rf "$DEMO_RUN"

log "failover gap"
"$HERE/failover.sh" --reps "$REPS" --modes persistent,newconn \
    --targets continuity-route,continuity-promote,continuity-mux-route,continuity-mux-promote,haproxy-default \
    --continuity-bin "$BIN" --out "$OUT/failover"

echo "ended: $(date -u +%FT%TZ)" >>"$OUT/run.txt"
python3 "$HERE/issue16_table.py" "$OUT"
log "table: $OUT/table.md"
