#!/usr/bin/env bash
# Per-connection memory of continuity vs HAProxy 2.6, side by side in the same run.
#
#   benches/conn_memory.sh [--conns N] [--protocols redis,postgres,http]
#                          [--targets continuity,haproxy] [--rounds R] [--skip-outage]
#                          [--batch B] [--buffer-timeout-ms MS] [--outage-min-s S]
#                          [--out DIR] [--keep] [--redis-multiplex] [--pg-multiplex]
#                          [--continuity-bin PATH]
#
# --redis-multiplex: continuity's redis service gets `multiplex = true` (docs/multiplex.md):
# its clients share one upstream connection instead of one each.
# --pg-multiplex: continuity's postgres service gets `multiplex = true`: continuity answers
# each client's startup itself (user postgres and database bench are the upstream's `user`
# and `database`; no `password_env`, so no password is asked) and its statements share the
# service's `multiplex_connections` (default 4) connections to pgbouncer.
# The two can be given together; the report and params.json say which mode was measured.
#
# Upstreams, all on 127.0.0.1 free ports, in a temp work dir, stopped from the EXIT trap:
#   redis     a redis-server primary (--maxclients 30000); request PING -> +PONG
#   postgres  PostgreSQL 15 (as load.sh starts it, database `bench`) behind pgbouncer
#             (pool_mode transaction, max_client_conn 30000, default_pool_size 20,
#             auth_type trust): PostgreSQL cannot hold 10,000 backends here, pgbouncer can.
#             Both proxies point at pgbouncer. Request: StartupMessage (user postgres,
#             database bench) to ReadyForQuery, then Query `SELECT 1` to ReadyForQuery.
#   http      nginx as http_load.sh starts it (worker_connections above N); request
#             `GET / HTTP/1.1` keep-alive, 1 KiB body read whole.
# Proxies: continuity (one generated config with a service per protocol: max_connections,
# for http max_client_connections, above N; the redis service without `fallback`, so
# memory fallback is off, and buffer_timeout_ms = --buffer-timeout-ms, default 60000) and
# HAProxy (the reference haproxy-default.cfg / haproxy-http.cfg sections: nbthread 2,
# checks inter 2s fall 3 rise 2, with maxconn above N in global and every frontend).
#
# Per protocol, round (default 1) and target, in that order, a fresh proxy process:
#   idle RSS = VmRSS 3 s after it is ready; then conn_memory.py hold opens N connections,
#   --batch (500) at a time, each sends one request and reads its reply (verified, failures
#   counted by kind), keeps them all open and idle, samples VmRSS (median of 5 over 2 s,
#   after 2 s to settle), closes them all and samples VmRSS every 0.5 s for 12 s;
#   KiB/conn = (RSS with conns - idle RSS) / conns; first time RSS <= 1.2 x idle.
# Outage (redis, unless --skip-outage), per round and target, a fresh proxy: Redis is
#   stopped, N clients each send PING (continuity holds them), VmRSS sampled every 0.25 s;
#   when all are in and Redis has been down --outage-min-s (default 6: longer than
#   HAProxy's connect retries, `retries 3` 1 s apart), Redis is restarted on the same port
#   and the script counts +PONG, error replies, EOF, resets and timeouts (up to 40 s after
#   the restart).
# The proxy needs two fds per proxied connection: the script raises `ulimit -n` to 200000
# (as root); if the hard limit is lower, N is cut to (limit - 300) / 2 with a warning that
# the report repeats. Writes --out DIR (default: a new temp dir): report.md, results.json,
# params.json, machine.json, raw/*.json (one per run), logs/ and the generated configs.
# Needs redis-server, postgresql-15, pgbouncer (apt-get install -y pgbouncer: the script
# installs it if it is missing), nginx-light, haproxy, python3.
set -euo pipefail
# Before anything else: 2 fds per proxied connection in the proxy, 1 per connection in
# the client. Without CAP_SYS_RESOURCE the hard limit caps this (see the N cut below).
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNS=10000
PROTOCOLS="redis,postgres,http"
TARGETS="continuity,haproxy"
ROUNDS=1
SKIP_OUTAGE=0
BATCH=500
BUFFER_TIMEOUT_MS=60000
OUTAGE_MIN_S=6
OUT=""
REDIS_MUX=""
PG_MUX=""
NGINX=${NGINX:-/usr/sbin/nginx}
PGBOUNCER=${PGBOUNCER:-/usr/sbin/pgbouncer}
CM=(python3 "$BENCH_DIR/conn_memory.py")
CMDLINE="benches/conn_memory.sh $*"
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --conns) CONNS=$2; shift 2 ;;
        --protocols) PROTOCOLS=$2; shift 2 ;;
        --targets) TARGETS=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --skip-outage) SKIP_OUTAGE=1; shift ;;
        --batch) BATCH=$2; shift 2 ;;
        --buffer-timeout-ms) BUFFER_TIMEOUT_MS=$2; shift 2 ;;
        --outage-min-s) OUTAGE_MIN_S=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --keep) KEEP_WORK=1; shift ;;
        --redis-multiplex) REDIS_MUX="multiplex = true"; shift ;;
        --pg-multiplex) PG_MUX="multiplex = true"; shift ;;
        --continuity-bin) CONT_BIN=$2; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "unknown option $1" >&2; usage 2 ;;
    esac
done
IFS=, read -r -a PROTO_LIST <<<"$PROTOCOLS"
IFS=, read -r -a TARGET_LIST <<<"$TARGETS"
has_proto() { [[ ",$PROTOCOLS," == *",$1,"* ]]; }
has_target() { [[ ",$TARGETS," == *",$1,"* ]]; }
for p in "${PROTO_LIST[@]}"; do [[ $p =~ ^(redis|postgres|http)$ ]] || die "unknown protocol $p"; done
for t in "${TARGET_LIST[@]}"; do [[ $t =~ ^(continuity|haproxy)$ ]] || die "unknown target $t"; done
[[ $CONNS =~ ^[0-9]+$ && $CONNS -gt 0 ]] || die "--conns: a positive integer"
has_target haproxy && { [[ -x $HAPROXY ]] || die "haproxy not found at $HAPROXY"; }
has_proto http && { [[ -x $NGINX ]] || die "nginx not found at $NGINX (apt install nginx-light)"; }
if has_proto postgres && [[ ! -x $PGBOUNCER ]]; then
    # pgbouncer is not in scripts/install-deps: the Debian package, installed here if missing.
    log "pgbouncer missing: apt-get install -y pgbouncer"
    DEBIAN_FRONTEND=noninteractive apt-get install -y pgbouncer >&2 || die "cannot install pgbouncer"
    [[ -x $PGBOUNCER ]] || die "pgbouncer not found at $PGBOUNCER"
fi

# ---- fd limit -> most connections ---------------------------------------------------
NOFILE=$(ulimit -n)
NOTES=()
CONNS_REQUESTED=$CONNS
MAXN=$(((NOFILE - 300) / 2))
if ((CONNS > MAXN)); then
    NOTES+=("ulimit -n is $NOFILE (hard limit $(ulimit -Hn); raising it needs CAP_SYS_RESOURCE): a proxy holding N proxied connections needs 2N fds, so N was cut from $CONNS to $MAXN.")
    log "WARNING: ${NOTES[-1]}"
    CONNS=$MAXN
fi
MAXCONN=$((CONNS + 1024))   # continuity's connection caps, above N
# HAProxy's maxconn, above N: HAProxy refuses to start when it cannot get about
# 2 x maxconn fds ("Cannot raise FD limit"), so keep it within the fd limit.
H_MAXCONN=$(((NOFILE - 64) / 2))
if ((H_MAXCONN >= MAXCONN)); then
    H_MAXCONN=$MAXCONN
else
    NOTES+=("HAProxy's maxconn is $H_MAXCONN (not N + 1024 = $MAXCONN): HAProxy 2.6 will not start when it cannot raise its fd limit to about 2 x maxconn.")
fi

bench_init
[[ -n $OUT ]] || OUT=$(mktemp -d /tmp/continuity-connmem.XXXXXX)
mkdir -p "$OUT/raw" "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
has_target continuity && ensure_continuity
"${BL[@]}" machine "${CONT_BIN_ORIG:-}" >"$OUT/machine.json"
log "results: $OUT   (N = $CONNS, ulimit -n $NOFILE, loadavg $(cat /proc/loadavg))"

# ---- upstreams ------------------------------------------------------------------------
new_port R1; new_port PG; new_port PB; new_port NG
new_port C_R; new_port C_PG; new_port C_HTTP; new_port C_CTL
new_port H_R; new_port H_PG; new_port H_HTTP
R1_PID=""
if has_proto redis; then
    start_redis R1_PID "$R1" primary --maxclients 30000
    log "redis on $R1 (PID $R1_PID)"
fi

if has_proto postgres; then
    start_pg PG_PID "$PG"
    createdb -h 127.0.0.1 -p "$PG" -U postgres bench
    PBD="$WORK/pgbouncer"
    mkdir -p "$PBD"
    echo '"postgres" ""' >"$PBD/userlist.txt"
    cat >"$PBD/pgbouncer.ini" <<EOF
; generated by benches/conn_memory.sh
[databases]
bench = host=127.0.0.1 port=$PG dbname=bench
* = host=127.0.0.1 port=$PG

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PB
unix_socket_dir =
listen_backlog = 4096
; started as root: pgbouncer refuses to run as root unless told which user to switch to
user = postgres
auth_type = trust
auth_file = $PBD/userlist.txt
pool_mode = transaction
max_client_conn = 30000
default_pool_size = 20
logfile = $PBD/pgbouncer.log
log_connections = 0
log_disconnections = 0
EOF
    chown -R postgres:postgres "$PBD"
    cp "$PBD/pgbouncer.ini" "$OUT/pgbouncer.ini"
    "$PGBOUNCER" "$PBD/pgbouncer.ini" >"$PBD/stderr.log" 2>&1 &
    PB_PID=$!
    STARTED_PIDS+=("$PB_PID")
    "${CM[@]}" probe --proto postgres --port "$PB" --timeout 15 ||
        die "pgbouncer on $PB does not serve SELECT 1: $(tail -5 "$PBD/pgbouncer.log" "$PBD/stderr.log" 2>/dev/null)"
    log "postgres on $PG, pgbouncer on $PB (PID $PB_PID)"
fi

if has_proto http; then
    NGD="$WORK/nginx"
    mkdir -p "$NGD/www" "$NGD/tmp"
    head -c 1024 /dev/zero | tr '\0' 'x' >"$NGD/www/index.html"
    chmod -R a+rX "$NGD"
    cat >"$NGD/nginx.conf" <<EOF
# generated by benches/conn_memory.sh (http_load.sh's, with room for N connections)
worker_processes auto;
worker_rlimit_nofile $NOFILE;
pid $NGD/nginx.pid;
error_log $NGD/error.log warn;
events { worker_connections $MAXCONN; }
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
        listen 127.0.0.1:$NG backlog=4096;
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
    "${BL[@]}" http-wait "http://127.0.0.1:$NG/" 10 1024 || die "nginx did not start: $(tail -5 "$NGD/error.log")"
    log "nginx on $NG (PID $NGINX_PID)"
fi

# ---- proxy configs ----------------------------------------------------------------------
CCFG="$WORK/continuity.toml"
{
    cat <<EOF
# generated by benches/conn_memory.sh
data_dir = "$WORK/continuity-data"
drain_timeout_ms = 1000

[control]
listen = "127.0.0.1:$C_CTL"

[health]
check_interval_seconds = 1
EOF
    if has_proto redis; then
        cat <<EOF

[[service]]
name = "redis"
kind = "redis"
category = "core"
listen = "127.0.0.1:$C_R"
max_connections = $MAXCONN
# clients arriving while Redis is down are held this long (the outage test); there is
# no \`fallback\` key, so memory fallback is off (docs/fallback.md: default off)
buffer_timeout_ms = $BUFFER_TIMEOUT_MS
$REDIS_MUX
upstreams = [
  { name = "redis-primary", address = "127.0.0.1:$R1", role = "primary" },
]
EOF
    fi
    if has_proto postgres; then
        cat <<EOF

[[service]]
name = "postgres"
kind = "postgres"
category = "core"
listen = "127.0.0.1:$C_PG"
max_connections = $MAXCONN
$PG_MUX
# user/database: the probe's, and with multiplex the only ones a client may ask for
# (they equal the client's: user postgres, database bench); no password_env, no password
upstreams = [
  { name = "pgbouncer", address = "127.0.0.1:$PB", role = "primary", user = "postgres", database = "bench" },
]
EOF
    fi
    if has_proto http; then
        cat <<EOF

[[service]]
name = "web"
kind = "http"
category = "core"
listen = "127.0.0.1:$C_HTTP"
health_path = "/health"
max_client_connections = $MAXCONN
upstreams = [
  { name = "web-primary", url = "http://127.0.0.1:$NG", role = "primary" },
]
EOF
    fi
} >"$CCFG"
grep -q '^fallback' "$CCFG" && die "the generated config turns memory fallback on"
cp "$CCFG" "$OUT/continuity.toml"
if has_target continuity; then
    "$CONT_BIN" check --config "$CCFG" >"$WORK/continuity-check.log" 2>&1 ||
        die "continuity rejects the generated config: $(cat "$WORK/continuity-check.log")"
fi

HCFG="$WORK/haproxy.cfg"
{
    cat <<EOF
# generated by benches/conn_memory.sh: the global/defaults and fe/be sections of
# haproxy/haproxy-default.cfg (tcp) and haproxy-http.cfg (http), with maxconn above N
global
    nbthread 2
    maxconn $H_MAXCONN
    stats socket $WORK/haproxy.sock mode 600 level admin
    # no traffic logging (keeps the data path lean)

defaults
    mode tcp
    retries 3
    option redispatch
    timeout connect 2s
    timeout client  60s
    timeout server  60s
    timeout check   1s
EOF
    if has_proto redis; then
        cat <<EOF

frontend fe_redis
    bind 127.0.0.1:$H_R
    maxconn $H_MAXCONN
    default_backend be_redis

backend be_redis
    option redis-check
    server primary 127.0.0.1:$R1 check inter 2s fall 3 rise 2
EOF
    fi
    if has_proto postgres; then
        cat <<EOF

frontend fe_pg
    bind 127.0.0.1:$H_PG
    maxconn $H_MAXCONN
    default_backend be_pg

backend be_pg
    option pgsql-check user postgres
    server pg1 127.0.0.1:$PB check inter 2s fall 3 rise 2
EOF
    fi
    if has_proto http; then
        cat <<EOF

frontend fe_http
    mode http
    bind 127.0.0.1:$H_HTTP
    maxconn $H_MAXCONN
    default_backend be_http

backend be_http
    mode http
    http-reuse safe
    option httpchk GET /health
    server web1 127.0.0.1:$NG check inter 2s fall 3 rise 2
EOF
    fi
} >"$HCFG"
cp "$HCFG" "$OUT/haproxy.cfg"

port_of() { # TARGET PROTO
    case $1:$2 in
        continuity:redis) echo "$C_R" ;; continuity:postgres) echo "$C_PG" ;; continuity:http) echo "$C_HTTP" ;;
        haproxy:redis) echo "$H_R" ;; haproxy:postgres) echo "$H_PG" ;; haproxy:http) echo "$H_HTTP" ;;
    esac
}
service_of() { case $1 in redis) echo redis ;; postgres) echo postgres ;; http) echo web ;; esac; }
# mux_of TARGET PROTO: true if that run's proxy multiplexes PROTO (continuity with the flag)
mux_of() {
    case $1:$2 in
        continuity:redis) [[ -n $REDIS_MUX ]] && echo true || echo false ;;
        continuity:postgres) [[ -n $PG_MUX ]] && echo true || echo false ;;
        *) echo false ;;
    esac
}
proto_args=(--pg-user postgres --pg-db bench --http-path / --http-len 1024)

# start_target TARGET PROTO LABEL: a fresh proxy process, ready for PROTO (every service
# healthy, one request answered), then 3 s idle; sets TPID and IDLE_KB.
start_target() {
    local t=$1 proto=$2 label=$3 port svc
    port=$(port_of "$t" "$proto")
    case $t in
        continuity)
            rm -rf "$WORK/continuity-data"
            start_continuity TPID "$CCFG"
            for p in "${PROTO_LIST[@]}"; do
                svc=$(service_of "$p")
                "${BL[@]}" ctl-wait-healthy "http://127.0.0.1:$C_CTL" "$svc" 20 ||
                    log "WARNING: continuity does not report $svc healthy"
            done
            ;;
        haproxy)
            start_haproxy TPID "$HCFG"
            sleep 0.2
            _alive "$TPID" || die "haproxy exited at start: $(grep -E 'ALERT' "$HCFG.log" | head -3)"
            "${BL[@]}" hactl-wait "$WORK/haproxy.sock" 30 || die "haproxy servers not UP: $(tail -5 "$HCFG.log")"
            ;;
    esac
    "${CM[@]}" probe --proto "$proto" --port "$port" --timeout 20 "${proto_args[@]}" ||
        die "$t does not serve $proto on $port (log: $(tail -5 "$WORK/$t"*.log 2>/dev/null | tail -5))"
    sleep 3
    IDLE_KB=$("${BL[@]}" rss "$TPID" | python3 -c 'import json,sys; print(json.load(sys.stdin)["VmRSS"])')
    log "$label: $t PID $TPID ready, idle VmRSS $IDLE_KB kB"
}

# stop_target TARGET LABEL: stop it, keep its log, report panics/errors in it.
stop_target() {
    local t=$1 label=$2 f
    _alive "$TPID" || log "WARNING: $t (PID $TPID) died during $label"
    stop_pid "$TPID"
    case $t in continuity) f="$CCFG.log" ;; haproxy) f="$HCFG.log" ;; esac
    sed 's/\x1b\[[0-9;]*m//g' "$f" >"$OUT/logs/$label.log" 2>/dev/null || true
    check_log "$OUT/logs/$label.log" "$label" || true
    TPID=""
}

python3 - "$OUT/params.json" "$CMDLINE" "${NOTES[@]}" <<EOF
import json, sys
path, cmd, notes = sys.argv[1], sys.argv[2], sys.argv[3:]
json.dump({"command": cmd, "conns": $CONNS, "conns_requested": $CONNS_REQUESTED, "nofile": $NOFILE,
           "continuity_max_connections": $MAXCONN, "haproxy_maxconn": $H_MAXCONN, "batch": $BATCH, "rounds": $ROUNDS,
           "protocols": "$PROTOCOLS".split(","), "targets": "$TARGETS".split(","),
           "outage": not $SKIP_OUTAGE, "buffer_timeout_ms": $BUFFER_TIMEOUT_MS, "outage_min_s": $OUTAGE_MIN_S,
           # continuity's redis/postgres service: relayed (false) or multiplex = true (true)
           "continuity_multiplex": {"redis": bool("$REDIS_MUX"), "postgres": bool("$PG_MUX")}, "notes": notes},
          open(path, "w"), indent=1)
EOF

# ---- idle connections ---------------------------------------------------------------------
TPID=""
for proto in "${PROTO_LIST[@]}"; do
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in "${TARGET_LIST[@]}"; do
            label="hold-$proto-$t-r$round"
            start_target "$t" "$proto" "$label"
            log "$label: $CONNS connections (loadavg $(loadavg1))"
            "${CM[@]}" hold --proto "$proto" --port "$(port_of "$t" "$proto")" --pid "$TPID" --conns "$CONNS" \
                --batch "$BATCH" --idle-kb "$IDLE_KB" --out "$OUT/raw/$label.json" "${proto_args[@]}" \
                --meta "{\"phase\":\"hold\",\"target\":\"$t\",\"round\":$round,\"multiplex\":$(mux_of "$t" "$proto")}" >&2 ||
                log "WARNING: $label: client exited non-zero"
            stop_target "$t" "$label"
        done
    done
done

# ---- outage: clients held while every Redis upstream is down -------------------------------
if has_proto redis && ((SKIP_OUTAGE == 0)); then
    for ((round = 1; round <= ROUNDS; round++)); do
        for t in "${TARGET_LIST[@]}"; do
            label="outage-redis-$t-r$round"
            _alive "$R1_PID" || start_redis R1_PID "$R1" primary --maxclients 30000
            start_target "$t" redis "$label"
            log "$label: stopping Redis (PID $R1_PID), then $CONNS clients send PING"
            t_down=$EPOCHREALTIME
            stop_pid "$R1_PID"
            rm -f "$WORK/outage.ready" "$WORK/outage.go" "$WORK/outage.go.tmp"
            "${CM[@]}" outage --port "$(port_of "$t" redis)" --pid "$TPID" --conns "$CONNS" --batch "$BATCH" \
                --idle-kb "$IDLE_KB" --ready "$WORK/outage.ready" --go "$WORK/outage.go" \
                --out "$OUT/raw/$label.json" --meta "{\"phase\":\"outage\",\"target\":\"$t\",\"round\":$round,\"multiplex\":$(mux_of "$t" redis)}" >&2 &
            CLI_PID=$!
            STARTED_PIDS+=("$CLI_PID")
            for ((i = 0; i < 2400; i++)); do
                [[ -f $WORK/outage.ready ]] && break
                _alive "$CLI_PID" || break
                sleep 0.05
            done
            [[ -f $WORK/outage.ready ]] || log "WARNING: $label: the client never reported all clients in"
            log "$label: all clients in ($(cat "$WORK/outage.ready" 2>/dev/null))"
            sleep "$(python3 -c "print(max(0.0, $OUTAGE_MIN_S - ($EPOCHREALTIME - $t_down)))")"
            log "$label: restarting Redis on $R1"
            start_redis R1_PID "$R1" primary --maxclients 30000
            t_up=$EPOCHREALTIME
            python3 -c "import json; print(json.dumps({'redis_down_s': round($t_up - $t_down, 2)}))" >"$WORK/outage.go.tmp"
            mv "$WORK/outage.go.tmp" "$WORK/outage.go"
            wait "$CLI_PID" || log "WARNING: $label: client exited non-zero"
            for j in "${!STARTED_PIDS[@]}"; do [[ ${STARTED_PIDS[$j]} == "$CLI_PID" ]] && unset 'STARTED_PIDS[j]'; done
            stop_target "$t" "$label"
        done
    done
fi

# ---- report -----------------------------------------------------------------------------------
[[ -z ${PBD:-} ]] || cp "$PBD/pgbouncer.log" "$OUT/logs/pgbouncer.log" 2>/dev/null || true
[[ -z ${NGD:-} ]] || cp "$NGD/error.log" "$OUT/logs/nginx-error.log" 2>/dev/null || true
"${CM[@]}" report "$OUT" >/dev/null
cat "$OUT/report.md"
log "report: $OUT/report.md, $OUT/results.json"
