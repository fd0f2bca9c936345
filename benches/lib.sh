# shellcheck shell=bash
# Shared helpers for benches/load.sh and benches/failover.sh: free ports, starting and
# stopping Redis, PostgreSQL, HAProxy and continuity, and an EXIT trap that stops
# everything this script started (by PID; never by name).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
BL=(python3 "$BENCH_DIR/benchlib.py")
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
HAPROXY=${HAPROXY:-/usr/sbin/haproxy}
CONT_BIN=${CONT_BIN:-$ROOT/target/release/continuity}

STARTED_PIDS=()   # every daemon we started, stopped in reverse order
PG_DATADIRS=()    # PostgreSQL clusters we started (stopped with pg_ctl)
USED_PORTS=()
WORK=""
KEEP_WORK=0

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# new_port VAR: a free 127.0.0.1 port not handed out before in this run.
new_port() {
    local p
    p=$("${BL[@]}" freeport "${USED_PORTS[@]}") || die "no free port"
    USED_PORTS+=("$p")
    printf -v "$1" '%s' "$p"
}

_alive() { # PID alive and not a zombie
    local st
    [[ -r /proc/$1/stat ]] || return 1
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z ]]
}

# stop_pid PID [GRACE_S]: SIGTERM, then SIGKILL after GRACE_S (default 5). Prints a
# warning if SIGKILL was needed.
stop_pid() {
    local pid=$1 grace=${2:-5} i
    [[ -n $pid ]] || return 0
    if _alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < grace * 20; i++)); do _alive "$pid" || break; sleep 0.05; done
        if _alive "$pid"; then
            log "WARNING: PID $pid ($(tr '\0' ' ' </proc/"$pid"/cmdline 2>/dev/null | cut -c1-80)) ignored SIGTERM for ${grace}s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
    fi
    wait "$pid" 2>/dev/null || true
    local j
    for j in "${!STARTED_PIDS[@]}"; do [[ ${STARTED_PIDS[$j]} == "$pid" ]] && unset 'STARTED_PIDS[j]'; done
    return 0
}

stop_pg() {
    local d=$1 j
    [[ -f $d/postmaster.pid ]] && (cd / && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d" -m fast -w -t 30 stop >/dev/null 2>&1)
    for j in "${!PG_DATADIRS[@]}"; do [[ ${PG_DATADIRS[$j]} == "$d" ]] && unset 'PG_DATADIRS[j]'; done
    return 0
}

cleanup() {
    local rc=$? i pids
    set +e
    trap - EXIT INT TERM
    pids=("${STARTED_PIDS[@]}")
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop_pid "${pids[$i]}"; done
    for d in "${PG_DATADIRS[@]}"; do stop_pg "$d"; done
    if [[ -n $WORK && -d $WORK && $KEEP_WORK == 0 ]]; then
        rm -rf "$WORK"
    elif [[ -n $WORK ]]; then
        log "work dir kept: $WORK"
    fi
    exit "$rc"
}

# bench_init: the temp work dir (traversable by the postgres user) and the trap.
bench_init() {
    WORK=$(mktemp -d /tmp/continuity-bench.XXXXXX)
    chmod 755 "$WORK"
    trap cleanup EXIT
    trap 'log "interrupted"; exit 130' INT TERM
}

# start_redis PIDVAR PORT NAME [redis-server args...]
start_redis() {
    local __v=$1 port=$2 name=$3; shift 3
    local dir="$WORK/redis-$name-$port"
    mkdir -p "$dir"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
        --daemonize no --logfile "$dir/redis.log" "$@" &
    local pid=$!
    STARTED_PIDS+=("$pid")
    "${BL[@]}" redis-ping "$port" 10 || die "redis $name on $port did not start (see $dir/redis.log)"
    printf -v "$__v" '%s' "$pid"
}

# wait_replica_synced PORT: until INFO replication says master_link_status:up
wait_replica_synced() {
    local port=$1 i
    for ((i = 0; i < 200; i++)); do
        redis-cli -p "$port" INFO replication 2>/dev/null | grep -q '^master_link_status:up' && return 0
        sleep 0.05
    done
    die "replica on $port did not sync"
}

# start_pg PIDVAR PORT: a fresh cluster (trust auth) as the postgres user.
start_pg() {
    local __v=$1 port=$2
    local d="$WORK/pg-$port"
    mkdir -p "$d" && chown postgres:postgres "$d" && chmod 700 "$d"
    (cd / && runuser -u postgres -- "$PGBIN/initdb" -D "$d" -U postgres --auth=trust -E UTF8 --no-locale \
        >"$WORK/initdb-$port.log" 2>&1) || die "initdb failed (see $WORK/initdb-$port.log)"
    PG_DATADIRS+=("$d")
    (cd / && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$d" -l "$d/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$d -c fsync=off -c max_connections=200" \
        start >/dev/null) || die "postgres did not start (see $d/server.log)"
    printf -v "$__v" '%s' "$(head -1 "$d/postmaster.pid")"
}

# start_haproxy PIDVAR CFG
start_haproxy() {
    local __v=$1 cfg=$2
    "$HAPROXY" -c -f "$cfg" >"$cfg.check.log" 2>&1 || die "bad haproxy config $cfg: $(cat "$cfg.check.log")"
    "$HAPROXY" -f "$cfg" -db >"$cfg.log" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    printf -v "$__v" '%s' "$pid"
}

# ensure_continuity: build the release binary if it is missing.
ensure_continuity() {
    if [[ ! -x $CONT_BIN ]]; then
        log "building continuity (cargo build --release)"
        (cd "$ROOT" && cargo build --release) >&2 || die "cargo build --release failed"
    fi
    [[ -x $CONT_BIN ]] || die "no continuity binary at $CONT_BIN"
    # Run a private copy: others may rebuild target/release while the benchmark runs.
    cp "$CONT_BIN" "$WORK/continuity-bin"
    log "continuity: $CONT_BIN (built $(date -u -r "$CONT_BIN" +%FT%TZ), sha256 $(sha256sum "$WORK/continuity-bin" | cut -c1-16))"
    CONT_BIN_ORIG=$CONT_BIN
    CONT_BIN="$WORK/continuity-bin"
}

# start_continuity PIDVAR CONFIG
start_continuity() {
    local __v=$1 cfg=$2
    "$CONT_BIN" run --config "$cfg" >"$cfg.log" 2>&1 &
    local pid=$!
    STARTED_PIDS+=("$pid")
    sleep 0.1
    _alive "$pid" || die "continuity exited at start: $(tail -20 "$cfg.log")"
    printf -v "$__v" '%s' "$pid"
}

# check_log FILE LABEL: report panics and ERROR-level lines found in a proxy log
# (continuity: tracing level ERROR; HAProxy: [ALERT]).
check_log() {
    local f=$1 label=$2 n
    [[ -f $f ]] || return 0
    n=$(sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -cE 'panicked|^[^ ]+ +ERROR |\[ALERT\]' || true)
    if [[ $n -gt 0 ]]; then
        log "NOTE: $label log has $n panic/ERROR/ALERT line(s); first ones:"
        # `|| true`: head closes the pipe early, and under pipefail the
        # writers' SIGPIPE must not end the calling script.
        { sed 's/\x1b\[[0-9;]*m//g' "$f" | grep -E 'panicked|^[^ ]+ +ERROR |\[ALERT\]' | head -5 | cut -c1-300 >&2; } || true
    fi
    return 0
}

loadavg1() { cut -d' ' -f1 /proc/loadavg; }

# wait_quiet MAX_S: wait (up to MAX_S) for a second with < 15% machine CPU busy.
wait_quiet() {
    local max=$1 t0=$SECONDS a b
    ((max > 0)) || return 0
    while ((SECONDS - t0 < max)); do
        read -r _ a1 a2 a3 a4 a5 a6 a7 a8 _ </proc/stat; a=$((a1 + a2 + a3 + a6 + a7 + a8)); b=$((a + a4 + a5))
        sleep 1
        read -r _ c1 c2 c3 c4 c5 c6 c7 c8 _ </proc/stat
        local busy=$((c1 + c2 + c3 + c6 + c7 + c8 - a)) tot=$((c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 - b))
        ((tot > 0 && busy * 100 / tot < 15)) && return 0
    done
    log "machine still busy after ${max}s (loadavg $(cat /proc/loadavg)); running anyway"
}

# For the throughput scripts (load.sh, http_load.sh), which set CONT_PID,
# HAP_PID, DAEMONS (other processes to account, "name=pid,..."), OUT and BL
# (the benchlib.py command): the PID of a target, every process to measure,
# and an RSS snapshot of both proxies under $OUT/rss.
pid_of() {
    case $1 in
        continuity | continuity-mux) echo "$CONT_PID" ;; continuity-nolog) echo "${CONTN_PID:-0}" ;;
        haproxy) echo "$HAP_PID" ;; haproxy-log) echo "${HAPL_PID:-0}" ;;
        pingora) echo "${PING_PID:-0}" ;; *) echo 0 ;;
    esac
}
all_daemons() {
    local d=$DAEMONS
    [[ -n $CONT_PID ]] && d+=",continuity=$CONT_PID"
    [[ -n $HAP_PID ]] && d+=",haproxy=$HAP_PID"
    [[ -n ${CONTN_PID:-} ]] && d+=",continuity-nolog=$CONTN_PID"
    [[ -n ${HAPL_PID:-} ]] && d+=",haproxy-log=$HAPL_PID"
    echo "$d"
}
snap_rss() { # PHASE
    [[ -n $CONT_PID ]] && "${BL[@]}" rss "$CONT_PID" >"$OUT/rss/continuity_$1.json"
    [[ -n $HAP_PID ]] && "${BL[@]}" rss "$HAP_PID" >"$OUT/rss/haproxy_$1.json"
    [[ -n ${CONTN_PID:-} ]] && "${BL[@]}" rss "$CONTN_PID" >"$OUT/rss/continuity-nolog_$1.json"
    [[ -n ${HAPL_PID:-} ]] && "${BL[@]}" rss "$HAPL_PID" >"$OUT/rss/haproxy-log_$1.json"
    return 0
}
