#!/usr/bin/env bash
# HTTP throughput/latency of continuity's gateway vs HAProxy (mode http) vs direct, with wrk.
#
#   benches/http_load.sh [--rounds N] [--duration S] [--modes keepalive,close]
#                        [--targets direct,continuity,haproxy[,continuity-nolog,haproxy-log,pingora]]
#                        [--skip-continuity]
#                        [--threads T] [--connections C] [--nginx-workers auto|N] [--with-backup]
#                        [--no-warmup] [--wait-quiet S] [--max-foreign PCT] [--repeat-noisy N]
#                        [--out DIR] [--results-dir DIR] [--perf] [--keep] [--continuity-bin PATH]
#
# Upstream: nginx (nginx-light), run by this script in the foreground on a free port with a
# generated config: /small-file (1 KiB static file), /health (200), access log off,
# worker_processes --nginx-workers (default auto). HAProxy: benches/haproxy/haproxy-http.cfg
# (mode http, nbthread 2, option httpchk GET /health, check inter 2s fall 3 rise 2,
# http-reuse safe). continuity: `run --config` with one [[service]] kind = "http",
# upstream web-primary = the nginx, health_path /health, checks every 2 s (as HAProxy's).
# Traffic logs: continuity writes its access log (one line per request, INFO on target
# continuity::access) to stderr, a file here; the reference HAProxy config logs no traffic.
# For like-for-like pairs two more targets can run in the same rounds:
#   continuity-nolog: a second continuity, same config, RUST_LOG=info,continuity::access=off;
#   haproxy-log: a second HAProxy, same config plus `log stderr format raw local0` and
#                `option httplog` (the `#log` lines of haproxy-http.cfg), stderr to a file.
# The report gives C/H (as shipped: continuity logs, HAProxy does not), Cn/H (neither logs)
# and C/Hl (both log) when the targets are there, and the issue's targets for each pair.
# --with-backup: nginx also listens on a second port, given to both proxies as the
# backup/secondary upstream (it takes no traffic while the primary is up).
#
# Per round (default 3) and mode, wrk runs against direct, continuity, haproxy in that order:
#   keepalive: wrk -t2 -c64 -d10s --latency URL/small-file
#   close:     wrk -t2 -c64 -d10s --latency -H 'Connection: close' URL/small-file
# Measured per run (benchlib.py run): req/s, latency percentiles, non-2xx and socket errors,
# proxy CPU us/request (and its user and kernel parts), machine busy %, foreign CPU %.
# --perf: also the proxy's system calls and context switches per request (`perf stat -p`;
# its syscall tracepoint costs the proxy a little, so leave it off for compared runs).
# A run with a non-2xx answer or socket errors on > 0.1% of requests counts as failed and
# stays out of the medians.
# continuity must answer GET /small-file with 200 and 1024 bytes within 20 s of its start,
# else the script stops (exit 3) before any run; --skip-continuity runs direct + HAProxy.
#
# Raw outputs, configs, logs, runs.jsonl and report.md go to --out (default: a new temp
# dir); the report and a JSON summary are also written to
# --results-dir (default benches/results/YYYYMMDD) as http-load-HHMMSSZ.{md,json}.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=3
DURATION=10
MODES="keepalive,close"
TARGETS="direct,continuity,haproxy"
THREADS=2
CONNS=64
NGINX_WORKERS=auto
WITH_BACKUP=0
WARMUP=1
WAIT_QUIET=0
MAX_FOREIGN=5
REPEAT_NOISY=0
PERF=0
OUT=""
RESULTS_DIR=""
NGINX=${NGINX:-/usr/sbin/nginx}
WRK=${WRK:-wrk}
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --duration) DURATION=$2; shift 2 ;;
        --modes) MODES=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        --skip-continuity) TARGETS=$(tr ',' '\n' <<<"$TARGETS" | grep -vx continuity | paste -sd, -); shift ;;
        --threads) THREADS=$2; shift 2 ;;
        --connections) CONNS=$2; shift 2 ;;
        --nginx-workers) NGINX_WORKERS=$2; shift 2 ;;
        --with-backup) WITH_BACKUP=1; shift ;;
        --no-warmup) WARMUP=0; shift ;;
        --wait-quiet) WAIT_QUIET=$2; shift 2 ;;
        --max-foreign) MAX_FOREIGN=$2; shift 2 ;;
        --repeat-noisy) REPEAT_NOISY=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --results-dir) RESULTS_DIR=$2; shift 2 ;;
        --perf) PERF=1; shift ;;
        --keep) KEEP_WORK=1; shift ;;
        --continuity-bin) CONT_BIN=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
IFS=, read -r -a MODE_LIST <<<"$MODES"
has_target() { [[ ",$TARGETS," == *",$1,"* ]]; }
for t in "${TARGET_LIST[@]}"; do
    [[ $t =~ ^(direct|continuity|continuity-nolog|haproxy|haproxy-log|pingora)$ ]] || die "unknown target $t"
done
for m in "${MODE_LIST[@]}"; do [[ $m =~ ^(keepalive|close)$ ]] || die "unknown mode $m"; done
command -v "$WRK" >/dev/null || die "wrk not found (apt install wrk; scripts/install-deps)"
[[ -x $NGINX ]] || die "nginx not found at $NGINX (apt install nginx-light; scripts/install-deps)"
{ has_target haproxy || has_target haproxy-log; } && { [[ -x $HAPROXY ]] || die "haproxy not found at $HAPROXY"; }

bench_init
[[ -n $OUT ]] || OUT=$(mktemp -d /tmp/continuity-http.XXXXXX)
mkdir -p "$OUT/raw" "$OUT/rss"
OUT=$(cd "$OUT" && pwd)
: >"$OUT/runs.jsonl"
STAMP=$(date -u +%Y%m%d)
[[ -n $RESULTS_DIR ]] || RESULTS_DIR="$BENCH_DIR/results/$STAMP"
{ has_target continuity || has_target continuity-nolog; } && ensure_continuity

"${BL[@]}" machine "${CONT_BIN_ORIG:-$CONT_BIN}" >"$OUT/machine.json"
python3 - "$OUT/machine.json" "$NGINX" "$WRK" <<'EOF'
import json, subprocess, sys
p, nginx, wrk = sys.argv[1:]
m = json.load(open(p))
def first_line(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return ((r.stdout + r.stderr).strip().splitlines() or [""])[0]
m["nginx"] = first_line([nginx, "-v"])
m["wrk"] = first_line([wrk, "-v"])
json.dump(m, open(p, "w"))
EOF
log "results: $OUT   (loadavg $(cat /proc/loadavg))"

# ---- nginx ----------------------------------------------------------------------
new_port NG; new_port NG2; new_port H_P; new_port C_P; new_port C_CTL; new_port PG_P
new_port HL_P; new_port CN_P; new_port CN_CTL
NGD="$WORK/nginx"
mkdir -p "$NGD/www" "$NGD/tmp"
head -c 1024 /dev/zero | tr '\0' 'x' >"$NGD/www/small-file"
chmod -R a+rX "$NGD"
backup_listen=""; ((WITH_BACKUP)) && backup_listen="listen 127.0.0.1:$NG2;"
cat >"$NGD/nginx.conf" <<EOF
# generated by benches/http_load.sh
worker_processes $NGINX_WORKERS;
pid $NGD/nginx.pid;
error_log $NGD/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    client_body_temp_path $NGD/tmp/body;
    proxy_temp_path $NGD/tmp/proxy;
    fastcgi_temp_path $NGD/tmp/fastcgi;
    uwsgi_temp_path $NGD/tmp/uwsgi;
    scgi_temp_path $NGD/tmp/scgi;
    server {
        listen 127.0.0.1:$NG;
        $backup_listen
        root $NGD/www;
        location = /health { default_type text/plain; return 200 "ok\n"; }
        location / { }
    }
}
EOF
cp "$NGD/nginx.conf" "$OUT/nginx.conf"
"$NGINX" -t -q -e "$NGD/error.log" -p "$NGD" -c "$NGD/nginx.conf" 2>"$NGD/check.log" ||
    die "bad nginx config: $(cat "$NGD/check.log")"
"$NGINX" -e "$NGD/error.log" -p "$NGD" -c "$NGD/nginx.conf" -g 'daemon off;' >"$NGD/stdout.log" 2>&1 &
NGINX_PID=$!
STARTED_PIDS+=("$NGINX_PID")
"${BL[@]}" http-wait "http://127.0.0.1:$NG/small-file" 10 1024 || die "nginx did not start: $(tail -5 "$NGD/error.log")"
NGINX_WORKER_PIDS=$(pgrep -P "$NGINX_PID" | paste -sd' ' - || true)
log "nginx on $NG (master $NGINX_PID, workers $NGINX_WORKER_PIDS)"
DAEMONS="nginx=$NGINX_PID"
i=0; for w in $NGINX_WORKER_PIDS; do DAEMONS+=",nginx_w$((i++))=$w"; done

# ---- proxies --------------------------------------------------------------------
HAP_PID=""; CONT_PID=""; HAPL_PID=""; CONTN_PID=""
# start_haproxy_http VAR PORT NAME [log]: HAProxy from haproxy-http.cfg on PORT, config
# $WORK/NAME.cfg (stderr in NAME.cfg.log); with `log`, the `#log` lines are uncommented
# (one httplog line per request to stderr).
start_haproxy_http() {
    local __v=$1 port=$2 name=$3 logged=${4:-} cfg="$WORK/$3.cfg" hpid
    sed -e "s/127\.0\.0\.1:28080/127.0.0.1:$port/; s/127\.0\.0\.1:18080/127.0.0.1:$NG/; s/127\.0\.0\.1:18081/127.0.0.1:$NG2/" \
        -e "s#stats socket ./haproxy.sock#stats socket $WORK/$name.sock#" \
        "$BENCH_DIR/haproxy/haproxy-http.cfg" >"$cfg"
    ((WITH_BACKUP)) && sed -i 's/^#backup//' "$cfg"
    [[ $logged == log ]] && sed -i 's/^#log//' "$cfg"
    cp "$cfg" "$OUT/$name.cfg"
    start_haproxy hpid "$cfg"
    "${BL[@]}" hactl-wait "$WORK/$name.sock" 30 || die "$name: servers not UP"
    "${BL[@]}" http-wait "http://127.0.0.1:$port/small-file" 10 1024 || die "$name does not serve /small-file"
    printf -v "$__v" '%s' "$hpid"
}
if has_target haproxy; then
    start_haproxy_http HAP_PID "$H_P" haproxy
    HCFG="$WORK/haproxy.cfg"
fi
if has_target haproxy-log; then
    start_haproxy_http HAPL_PID "$HL_P" haproxy-log log
fi

# start_continuity_http VAR NAME PORT CTL_PORT: continuity with one kind = "http" service
# on PORT in front of the nginx; config $WORK/NAME.toml, its log NAME.toml.log. The
# caller's environment (RUST_LOG) passes through.
start_continuity_http() {
    local __v=$1 name=$2 port=$3 ctl=$4 cfg="$WORK/$2.toml" backup_up="" cpid
    ((WITH_BACKUP)) && backup_up="  { name = \"web-secondary\", url = \"http://127.0.0.1:$NG2\", role = \"secondary\" },"
    cat >"$cfg" <<EOF
# generated by benches/http_load.sh
data_dir = "$WORK/$name-data"
drain_timeout_ms = 1000

[control]
listen = "127.0.0.1:$ctl"

[health]
# as HAProxy's checks: inter 2s fall 3 rise 2
check_interval_seconds = 2
failure_threshold = 3
recovery_threshold = 2

[[service]]
name = "web"
kind = "http"
category = "core"
listen = "127.0.0.1:$port"
health_path = "/health"
upstreams = [
  { name = "web-primary", url = "http://127.0.0.1:$NG", role = "primary" },
$backup_up
]
EOF
    cp "$cfg" "$OUT/$name.toml"
    "$CONT_BIN" check --config "$cfg" >"$WORK/$name-check.log" 2>&1 ||
        die "continuity rejects the generated config (kind = \"http\" not supported by this build?):
$(cat "$WORK/$name-check.log")"
    start_continuity cpid "$cfg"
    if ! "${BL[@]}" http-wait "http://127.0.0.1:$port/small-file" 20 1024; then
        log "ERROR: continuity's HTTP gateway (127.0.0.1:$port, service \"web\") does not answer" \
            "GET /small-file with 200 + 1024 bytes; is the gateway built into $CONT_BIN_ORIG?"
        log "continuity log (last 20 lines):"
        sed 's/\x1b\[[0-9;]*m//g' "$cfg.log" | tail -20 >&2
        log "rerun with --skip-continuity to measure direct and HAProxy only"
        exit 3
    fi
    "${BL[@]}" ctl-wait-healthy "http://127.0.0.1:$ctl" web 15 || log "WARNING: $name does not report web healthy"
    printf -v "$__v" '%s' "$cpid"
}
if has_target continuity; then
    start_continuity_http CONT_PID continuity "$C_P" "$C_CTL"
    CCFG="$WORK/continuity.toml"
fi
if has_target continuity-nolog; then
    RUST_LOG=info,continuity::access=off start_continuity_http CONTN_PID continuity-nolog "$CN_P" "$CN_CTL"
fi

# --targets ...,pingora: the bare pingora proxy of examples/pingora_baseline.rs
# (no filters, no logging, pingora's own Server), to tell pingora's cost from ours.
# PING_BIN=path runs another proxy in that slot instead (args: LISTEN UPSTREAM),
# e.g. a prototype to compare in the same run.
PING_PID=""
if has_target pingora; then
    PING_BIN="${PING_BIN:-$ROOT/target/release/examples/pingora_baseline}"
    if [[ ! -x $PING_BIN ]]; then
        log "building examples/pingora_baseline (cargo build --release --example pingora_baseline)"
        (cd "$ROOT" && cargo build --release --example pingora_baseline) >&2 || die "cannot build the pingora baseline"
    fi
    "$PING_BIN" "127.0.0.1:$PG_P" "127.0.0.1:$NG" >"$WORK/pingora.log" 2>&1 &
    PING_PID=$!
    STARTED_PIDS+=("$PING_PID")
    "${BL[@]}" http-wait "http://127.0.0.1:$PG_P/small-file" 10 1024 || die "pingora baseline does not serve /small-file"
    DAEMONS+=",pingora=$PING_PID"
fi

port_of() {
    case $1 in
        direct) echo "$NG" ;; continuity) echo "$C_P" ;; continuity-nolog) echo "$CN_P" ;;
        haproxy) echo "$H_P" ;; haproxy-log) echo "$HL_P" ;; pingora) echo "$PG_P" ;;
    esac
}
wrk_cmd() { # MODE PORT DURATION -> argv, one per line
    printf '%s\n' "$WRK" "-t$THREADS" "-c$CONNS" "-d${3}s" --latency
    [[ $1 == close ]] && printf '%s\n' -H 'Connection: close'
    printf '%s\n' "http://127.0.0.1:$2/small-file"
}

python3 - "$OUT/params.json" <<EOF
import json, sys
json.dump({"rounds": $ROUNDS, "duration_s": $DURATION, "threads": $THREADS, "connections": $CONNS,
           "nginx_worker_processes": "$NGINX_WORKERS", "nginx_workers_started": len("$NGINX_WORKER_PIDS".split()),
           "with_backup": bool($WITH_BACKUP), "targets": "$TARGETS", "modes": "$MODES",
           "file": "/small-file (1024 bytes)"}, open(sys.argv[1], "w"))
EOF

sleep 2
snap_rss idle_start

if ((WARMUP)); then
    for t in "${TARGET_LIST[@]}"; do
        log "warm-up $t"
        mapfile -t cmd < <(wrk_cmd keepalive "$(port_of "$t")" 2)
        "${cmd[@]}" >"$OUT/raw/warmup-$t.txt" 2>&1 || log "WARNING: warm-up through $t failed"
    done
fi

# ---- rounds ---------------------------------------------------------------------
for ((round = 1; round <= ROUNDS; round++)); do
    for mode in "${MODE_LIST[@]}"; do
        for ((attempt = 0; ; attempt++)); do
            first_line=$(grep -c . "$OUT/runs.jsonl" || true)
            for t in "${TARGET_LIST[@]}"; do
                wait_quiet "$WAIT_QUIET"
                port=$(port_of "$t")
                mapfile -t cmd < <(wrk_cmd "$mode" "$port" "$DURATION")
                sfx=""; ((attempt > 0)) && sfx="-a$attempt"
                raw="$OUT/raw/$mode-$t-r$round$sfx.txt"
                log "round $round/$ROUNDS $mode $t: ${cmd[*]}  (loadavg $(loadavg1))"
                perf_args=()
                ((PERF)) && [[ $t != direct ]] && perf_args=(--perf "$raw.perf")
                "${BL[@]}" run --out-json "$OUT/runs.jsonl" --stdout "$raw" \
                    --daemons "$(all_daemons)" --proxy "$(pid_of "$t")" \
                    ${perf_args[@]+"${perf_args[@]}"} \
                    --meta "{\"target\":\"$t\",\"mode\":\"$mode\",\"round\":$round,\"attempt\":$attempt,\"port\":$port}" \
                    -- "${cmd[@]}" >/dev/null || log "WARNING: wrk through $t exited non-zero (raw: $raw)"
                grep -E '^Requests/sec|Non-2xx|Socket errors|^ +99%' "$raw" | tr -s ' ' | paste -sd';' - >&2 || true
                for p in "$CONT_PID" "$CONTN_PID" "$HAP_PID" "$HAPL_PID" "$NGINX_PID"; do
                    [[ -z $p ]] || _alive "$p" || die "PID $p died during $mode/$t (logs in $WORK)"
                done
            done
            ((attempt < REPEAT_NOISY)) || break
            "${BL[@]}" supersede "$OUT/runs.jsonl" "$first_line" "$MAX_FOREIGN" || break
            log "round $round $mode: foreign CPU >= $MAX_FOREIGN% in some run; repeating ($((attempt + 1))/$REPEAT_NOISY)"
        done
    done
done

sleep 2
snap_rss idle_end

# ---- report ---------------------------------------------------------------------
# (check_log's `grep | head` pipeline can end in SIGPIPE: keep errexit off inside it)
if [[ -n $CONT_PID ]]; then
    cp "$CCFG.log" "$OUT/continuity.log"
    check_log "$OUT/continuity.log" continuity || true
fi
if [[ -n $HAP_PID ]]; then
    cp "$HCFG.log" "$OUT/haproxy.log"
    check_log "$OUT/haproxy.log" haproxy || true
fi
if [[ -n $CONTN_PID ]]; then
    cp "$WORK/continuity-nolog.toml.log" "$OUT/continuity-nolog.log"
    check_log "$OUT/continuity-nolog.log" continuity-nolog || true
fi
if [[ -n $HAPL_PID ]]; then
    # one line per request: keep its other lines (start, alerts) and the line count
    check_log "$WORK/haproxy-log.cfg.log" haproxy-log || true
    { grep -v ' fe_http ' "$WORK/haproxy-log.cfg.log" | head -200 || true
      echo "($(grep -c ' fe_http ' "$WORK/haproxy-log.cfg.log" || true) request lines left out)"; } >"$OUT/haproxy-log.log"
fi
cp "$NGD/error.log" "$OUT/nginx-error.log" 2>/dev/null || true
"${BL[@]}" report-http "$OUT" "$OUT/summary.json" >"$OUT/report.md"
mkdir -p "$RESULTS_DIR"
base="$RESULTS_DIR/http-load-$(date -u +%H%M%SZ)"
{
    echo "# HTTP load: direct vs continuity vs HAProxy (wrk)"
    echo
    echo "Command: \`benches/http_load.sh --rounds $ROUNDS --duration $DURATION --modes $MODES --targets $TARGETS$( ((WITH_BACKUP)) && echo ' --with-backup')\`"
    echo "(raw outputs: $OUT)"
    echo
    cat "$OUT/report.md"
} >"$base.md"
cp "$OUT/summary.json" "$base.json"
cat "$OUT/report.md"
FAILED_RUNS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["failed_runs"])' "$OUT/summary.json")
log "report: $base.md (+ .json); raw results: $OUT  (failed runs: $FAILED_RUNS)"
((FAILED_RUNS == 0)) || exit 1
