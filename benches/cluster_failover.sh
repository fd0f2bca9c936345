#!/usr/bin/env bash
# Issue #17 ([cluster]): time from the primary's death to the last engine serving from
# the secondary (3 engines coordinating through a 3-member etcd), the same trial with one
# standalone engine, and the cost of [cluster] on the request path (redis-benchmark through
# an engine with [cluster] vs one without). The work is done by cluster_failover.py.
#
#   benches/cluster_failover.sh [--trials N] [--standalone-trials N] [--api-trials N]
#                               [--leaderkill-trials N] [--rounds N] [--lease-ttl S]
#                               [--parts cluster,standalone,cluster-api,standalone-api,cluster-leaderkill,requestpath]
#                               [--wait-quiet S] [--repeat-noisy N] [--max-foreign PCT] [--interval S]
#                               [--out DIR] [--results-dir DIR] [--note TEXT] [--keep]
#                               [--continuity-bin PATH]   (python3 benches/cluster_failover.py -h: all options)
#
# Parts: cluster (3 engines, client traffic through each, primary SIGKILLed), standalone (one
# engine without [cluster]), cluster-api / standalone-api (no client traffic: the switch is read
# from GET /api/ops/failover/status, detection by health checks alone), cluster-leaderkill (the
# leader engine SIGKILLed with the primary), requestpath (redis-benchmark through an engine with
# and without [cluster], alternated, plus direct). Recommended on the shared 2-core VM:
#   benches/cluster_failover.sh --wait-quiet 30 --repeat-noisy 3 --results-dir benches/results/DATE/cluster17
#
# Needs /usr/bin/etcd (3.4), redis-server, redis-benchmark, python3. Everything runs on
# 127.0.0.1 free ports (20000-32000) with data in a temp work dir; every process started is
# stopped by PID when the script ends, also from this EXIT trap if the Python side dies hard.
# Writes report.md, failover.jsonl, requestpath.jsonl, params.json, machine.json and trials/
# (configs and logs) to --out (default: a new /tmp/continuity-cluster17.XXXXXX).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case " $* " in *" -h "*|*" --help "*) exec python3 "$BENCH_DIR/cluster_failover.py" --help ;; esac
for t in /usr/bin/etcd redis-server redis-benchmark python3; do
    command -v "$t" >/dev/null || { echo "cluster_failover.sh: $t is missing" >&2; exit 2; }
done

KEEP=0
for x in "$@"; do [[ $x == --keep ]] && KEEP=1; done
WORK=$(mktemp -d /tmp/continuity-cluster17-work.XXXXXX)

cleanup() {
    local rc=$? pid st name now
    set +e
    trap - EXIT INT TERM
    # Anything the Python side started and did not stop (it stops everything itself
    # unless it was killed): by PID, only if the start time still matches.
    if [[ -f $WORK/pids ]]; then
        while read -r pid st name; do
            [[ -r /proc/$pid/stat ]] || continue
            now=$(sed 's/.*) //' "/proc/$pid/stat" | cut -d' ' -f20)
            if [[ $now == "$st" ]]; then
                echo "cluster_failover.sh: stopping leftover $name (PID $pid)" >&2
                kill -KILL "$pid" 2>/dev/null
            fi
        done <"$WORK/pids"
    fi
    if [[ $KEEP == 0 ]]; then rm -rf "$WORK"; else echo "work dir kept: $WORK" >&2; fi
    exit "$rc"
}
trap cleanup EXIT
PY=""
# Python runs in the background (so that TERM reaches it too); INT/TERM are passed on and
# it stops its daemons and writes its report before this script exits.
trap '[[ -n $PY ]] && kill -INT "$PY" 2>/dev/null; [[ -n $PY ]] && wait "$PY"; exit 130' INT
trap '[[ -n $PY ]] && kill -TERM "$PY" 2>/dev/null; [[ -n $PY ]] && wait "$PY"; exit 143' TERM

python3 "$BENCH_DIR/cluster_failover.py" --work "$WORK" \
    --command "benches/cluster_failover.sh$(printf ' %q' "$@")" "$@" &
PY=$!
rc=0
wait "$PY" || rc=$?
PY=""
exit "$rc"
