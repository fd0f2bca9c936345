#!/usr/bin/env bash
# Active probe latency (issue 15 item 9): what one health probe costs against a
# real Redis pair, a real PostgreSQL pair and an HTTP upstream, as the engine
# itself measures it (`continuity_probe_latency_seconds`, the snapshot's
# `probe_latency_ms`).
#
#   benches/probe_latency.sh [--seconds S] [--interval S] [--isolate] [--out DIR] --continuity-bin PATH[,PATH...]
#
# Starts the demo's servers once (scripts/demo, sourced: Redis primary + replica,
# PostgreSQL primary + streaming standby) plus scripts/http_upstream.py, then runs
# each binary in turn (in the order given, e.g. old,new,old,new to interleave)
# for S seconds (default 30) with [health] check_interval_seconds = S2 (default
# 0.05) and every upstream probed (redundancy = "hot"). Per binary and upstream it
# reports the run's mean (histogram sum/count) and the snapshot's p50/p95/p99 over
# the last probes. Writes report.md and runs.jsonl to --out (default: a temp dir).
#
# Every probe loop ticks at the same instant, so in the default run each probe's
# latency includes its neighbours' work (five probes and a PostgreSQL fork on 2
# cores). --isolate runs each binary once per upstream kind (redis, postgres,
# http), with only that service's primary probed, to measure one probe alone.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_RUN=30 INTERVAL=0.05 OUT="" BINS="" ISOLATE=0
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) SECONDS_RUN=$2; shift 2 ;;
        --interval) INTERVAL=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --continuity-bin) BINS=$2; shift 2 ;;
        --isolate) ISOLATE=1; shift ;;
        -h | --help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done
[ -n "$BINS" ] || { echo "--continuity-bin is required" >&2; usage 2; }
OUT="${OUT:-$(mktemp -d /tmp/probe-latency.XXXXXX)}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

IFS=, read -r -a BIN_LIST <<<"$BINS"
export CONTINUITY_BIN="${BIN_LIST[0]}"
export DEMO_DIR="$OUT/demo"
# shellcheck source=../scripts/demo
source "$ROOT/scripts/demo"
step_deps_and_build
step_fresh_demo_dir
step_redis
step_postgres

pick_port HTTP_UP_PORT
python3 "$ROOT/scripts/http_upstream.py" --port "$HTTP_UP_PORT" --name web >"$OUT/http-upstream.log" 2>&1 &
HTTP_UP_PID=$!
echo "$HTTP_UP_PID" >>"$PIDS_FILE"

: >"$OUT/runs.jsonl"
run=0
if [ "$ISOLATE" = 1 ]; then KINDS=(redis postgres web); else KINDS=(all); fi
for bin in "${BIN_LIST[@]}"; do
  for only in "${KINDS[@]}"; do
    run=$((run + 1))
    BIN="$bin"
    USED_PORTS=" $REDIS_PRIMARY_PORT $REDIS_REPLICA_PORT $PG_PRIMARY_PORT $PG_STANDBY_PORT $HTTP_UP_PORT "
    rm -rf "$DEMO/data"
    step_config
    # Every upstream probed every INTERVAL; the HTTP service beside them.
    # Isolated: only service $only, and only its primary (redundancy cold).
    python3 - "$DEMO/continuity.toml" "$INTERVAL" "$HTTP_UP_PORT" "$only" <<'EOF'
import re, sys
path, interval, http_port, only = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
text = open(path).read()
text = re.sub(r"check_interval_seconds = [0-9.]+", f"check_interval_seconds = {interval}", text)
redundancy = "hot" if only == "all" else "cold"
text = text.replace('on_failover = "promote"', f'on_failover = "promote"\nredundancy = "{redundancy}"\nfailover = "manual"')
text += f'''
[[service]]
name = "web"
kind = "http"
category = "core"
redundancy = "hot"
failover = "manual"
health_path = "/health"
upstreams = [
  {{ name = "web-1", url = "http://127.0.0.1:{http_port}", role = "primary" }},
]
'''
if only != "all":
    head, *blocks = text.split("\n[[service]]\n")
    keep = [b for b in blocks if f'name = "{only}"' in b]
    text = head + "".join("\n[[service]]\n" + b for b in keep)
open(path, "w").write(text)
EOF
    step_continuity
    sleep "$SECONDS_RUN"
    python3 - "$CONTROL_PORT" "$TOKEN" "$bin" "$run" >>"$OUT/runs.jsonl" <<'EOF'
import hashlib, json, re, sys, urllib.request
port, token, binary, run = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def get(path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
    return urllib.request.urlopen(req, timeout=5).read().decode()
metrics = get("/metrics")
sums, counts = {}, {}
for line in metrics.splitlines():
    m = re.match(r'continuity_probe_latency_seconds_(sum|count)\{(.*)\} ([0-9.e+-]+)', line)
    if m:
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        key = labels["upstream"]
        (sums if m.group(1) == "sum" else counts)[key] = float(m.group(3))
sha = hashlib.sha256(open(binary, "rb").read()).hexdigest()[:12]
def find(doc, name):
    # The upstream snapshot (it has probe_latency_ms) named `name`, anywhere.
    if isinstance(doc, dict):
        if doc.get("name") == name and "probe_latency_ms" in doc:
            return doc
        doc = list(doc.values())
    if isinstance(doc, list):
        for v in doc:
            hit = find(v, name)
            if hit:
                return hit
    return None
docs = []
for path in ("/api/ops/health/deep", "/api/ops/failover/status", "/api/ops/diagnostics"):
    try:
        docs.append(json.loads(get(path)))
    except Exception:
        pass
for pool in sorted(counts):
    up = next((u for u in (find(d, pool) for d in docs) if u), {})
    p = up.get("probe_latency_ms", {})
    print(json.dumps({
        "run": run, "binary": binary, "sha256": sha, "upstream": pool,
        "probes": int(counts[pool]),
        "mean_ms": round(1000 * sums[pool] / counts[pool], 3) if counts[pool] else None,
        **{k + "_ms": (round(p[k], 3) if p.get(k) is not None else None) for k in ("p50", "p95", "p99")},
        "failed": up.get("failed_checks"),
    }))
EOF
    kill "$CONTINUITY_PID" 2>/dev/null || true
    wait "$CONTINUITY_PID" 2>/dev/null || true
    CONTINUITY_PID=""
  done
done

# The demo's cleanup stops what it started; the HTTP upstream is ours.
kill "$HTTP_UP_PID" 2>/dev/null || true
wait "$HTTP_UP_PID" 2>/dev/null || true

python3 - "$OUT/runs.jsonl" >"$OUT/report.md" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| run | binary (sha256) | upstream | probes | failed | mean ms | p50 ms | p95 ms | p99 ms |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r['run']} | {r['sha256']} | {r['upstream']} | {r['probes']} | {r['failed']} | {r['mean_ms']} | {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} |")
EOF
cat "$OUT/report.md"
echo "report: $OUT/report.md"
