#!/usr/bin/env python3
"""Helpers for benches/load.sh and benches/failover.sh (Python 3 stdlib only).

Subcommands:
  freeport [USED...]                  print a free TCP port on 127.0.0.1 (20000-32000)
  waitport PORT [TIMEOUT_S]           wait until 127.0.0.1:PORT accepts a connection
  redis-ping PORT [TIMEOUT_S]         wait until a Redis PING through PORT answers +PONG
  redis-get PORT KEY                  print the value of KEY (one RESP GET), '' if nil
  hactl-wait SOCK [TIMEOUT_S]         wait until every server of every be_* is UP (stats socket)
  ctl-wait-healthy URL SERVICE [T]    wait until GET URL/api/ops/health shows SERVICE healthy
  haproxy-cfg TEMPLATE OUT redis_primary=P redis_backup=P redis_listen=P [pg=P pg_listen=P] [sock=PATH]
                                      generate an HAProxy config from a reference config
  supersede RUNS.jsonl FROM_LINE MAX_FOREIGN
                                      mark runs after FROM_LINE superseded if one was noisy (exit 0)
  rss PID                             print VmRSS and VmHWM in kB (JSON)
  run --out-json F --stdout F --daemons name=pid,... [--proxy PID] [--label L] -- CMD...
                                      run CMD and record CPU, machine load and parsed results
  machine                             print machine/version facts (JSON)
  report-load DIR                     markdown tables from DIR/runs.jsonl (load.sh)
  report-failover DIR                 markdown tables from DIR/failover.jsonl (failover.sh)
  http-wait URL [TIMEOUT_S] [LEN]     wait until GET URL answers 200 (with a LEN-byte body)
  report-http DIR [SUMMARY.json]      markdown tables from DIR/runs.jsonl (http_load.sh),
                                      and the medians as JSON
"""
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- /proc
def _stat(pid):
    """The fields of /proc/PID/stat after the command name (index 0 = field 3, state), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    return s[s.rindex(")") + 2:].split()


def live_children(pid):
    """PIDs of PID's live (or zombie, not yet reaped) direct children."""
    try:  # every thread's children file (CONFIG_PROC_CHILDREN): a child belongs to the thread that forked it
        return [int(c) for t in os.listdir(f"/proc/{pid}/task")
                for c in open(f"/proc/{pid}/task/{t}/children").read().split()]
    except FileNotFoundError:  # no such files in this kernel (or PID is gone): scan every process's ppid
        return [int(d) for d in os.listdir("/proc") if d.isdigit() and (_stat(d) or [0, 0])[1] == str(pid)]
    except OSError:
        return []


def proc_ticks(pid, children=True):
    """utime+stime in ticks; with CHILDREN also its children's: the reaped ones' (cutime+cstime,
    e.g. postgres backends that exited) and the live ones' (utime+stime+cutime+cstime, e.g.
    backends a pooling proxy keeps open across the run, whose CPU is not in cutime yet).
    Take the delta of two samples: a child alive at the first and reaped before the second
    moves its ticks from the live sum into cutime (the kernel adds exactly the child's
    utime+stime+cutime+cstime there), so it is counted once, for what it did in between."""
    for _ in range(3):
        f = _stat(pid)
        if f is None:
            return None
        ut, st, cut, cst = (int(x) for x in f[11:15])  # fields 14-17
        if not children:
            return ut + st
        live = sum(sum(int(x) for x in cf[11:15]) for cf in map(_stat, live_children(pid)) if cf)
        # a child reaped while we read it would be counted twice or not at all: read again
        f2 = _stat(pid)
        if f2 is None or f2[13:15] == f[13:15]:
            break
    return ut + st + cut + cst + live


def proc_user_sys(pid):
    """(utime, stime) in ticks of PID itself (all its threads), or None."""
    f = _stat(pid)
    return None if f is None else (int(f[11]), int(f[12]))


# What `run --perf` counts on the proxy: every system call it enters, and every time one of
# its threads is switched out (mostly: it went to sleep in epoll_wait or a futex, so each
# one is a wake-up to come).
PERF_EVENTS = ("raw_syscalls:sys_enter", "context-switches")


def perf_start(pid, path):
    """`perf stat` counting PERF_EVENTS on PID's threads into PATH, or None without perf."""
    try:
        return subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(PERF_EVENTS),
                                 "-p", str(pid), "-o", path],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return None


def perf_stop(p, path):
    """Stops a perf_start and returns {event: count} (empty if perf failed)."""
    if p is None:
        return {}
    p.send_signal(signal.SIGINT)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    got = {}
    try:
        for line in open(path):
            f = line.strip().split(",")
            if len(f) >= 3 and f[2] in PERF_EVENTS and f[0].replace(".", "", 1).isdigit():
                got[f[2]] = float(f[0])
    except OSError:
        pass
    return got


def machine_ticks():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:9]
    v = [int(x) for x in parts]
    user, nice, system, idle, iowait, irq, softirq, steal = v
    busy = user + nice + system + irq + softirq + steal
    return busy, sum(v)


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def rss(pid):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    k, v = line.split(":")
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------- parsing
def all_threads_dead(pid):
    """Whether every thread of `pid` has exited (gone or zombie). SIGKILL is
    asynchronous; a process's sockets are released with its last thread."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if st not in ("Z", "X"):
            return False
    return True


def parse_redis_csv(text):
    """redis-benchmark --csv -> {TEST: {rps, avg, p50, p95, p99, max}}"""
    res = {}
    for line in text.splitlines():
        f = [x.strip('"') for x in line.strip().split(",")]
        if len(f) >= 8 and f[0] != "test":
            try:
                res[f[0]] = {"rps": float(f[1]), "avg_ms": float(f[2]), "p50_ms": float(f[4]),
                             "p95_ms": float(f[5]), "p99_ms": float(f[6]), "max_ms": float(f[7])}
            except ValueError:
                pass
    return res


def parse_pgbench(text):
    res = {}
    m = re.search(r"number of transactions actually processed: (\d+)", text)
    if m: res["txns"] = int(m.group(1))
    m = re.search(r"number of failed transactions: (\d+)", text)
    if m: res["failed"] = int(m.group(1))
    m = re.search(r"latency average = ([\d.]+) ms", text)
    if m: res["lat_avg_ms"] = float(m.group(1))
    m = re.search(r"latency stddev = ([\d.]+) ms", text)
    if m: res["lat_stddev_ms"] = float(m.group(1))
    m = re.search(r"initial connection time = ([\d.]+) ms", text)
    if m: res["conn_ms"] = float(m.group(1))
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", text)
    if m: res["tps"] = float(m.group(1))
    return res


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def _wrk_ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", v)
    return float(m.group(1)) * _WRK_UNITS[m.group(2)] if m else None


def parse_wrk(text):
    """wrk --latency output -> {rps, requests, avg_ms, max_ms, p50_ms.., non2xx, socket_errors}"""
    res = {}
    m = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    if m: res["rps"] = float(m.group(1))
    m = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", text, re.M)
    if m:
        res["requests"] = int(m.group(1))
        res["duration_s"] = round(_wrk_ms(m.group(2) + m.group(3)) / 1000.0, 3)
    m = re.search(r"^\s*Latency\s+(\S+)\s+(\S+)\s+(\S+)\s+", text, re.M)
    if m:
        res["avg_ms"], res["stdev_ms"], res["max_ms"] = (_wrk_ms(x) for x in m.groups())
    for pct, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", text, re.M):
        res[f"p{pct}_ms"] = _wrk_ms(v)
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    res["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), (int(x) for x in m.groups()))) \
        if m else {}
    return res


# --------------------------------------------------------------------------- run
def cmd_run(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="benchlib.py run")
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--stdout", required=True)
    ap.add_argument("--daemons", default="", help="name=pid,... every process of this benchmark")
    ap.add_argument("--proxy", type=int, default=0, help="PID of the proxy under test (0: direct)")
    ap.add_argument("--meta", default="{}", help="JSON merged into the record")
    ap.add_argument("--perf", default="", help="with --proxy: `perf stat` the proxy into this file")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    daemons = {}
    for kv in filter(None, a.daemons.split(",")):
        k, v = kv.split("=")
        daemons[k] = int(v)
    rec = json.loads(a.meta)
    rec["cmd"] = " ".join(cmd)
    rec["loadavg_before"] = loadavg()
    d0 = {k: proc_ticks(p) for k, p in daemons.items()}
    px0 = proc_ticks(a.proxy, children=False) if a.proxy else None
    us0 = proc_user_sys(a.proxy) if a.proxy else None
    perf = perf_start(a.proxy, a.perf) if a.proxy and a.perf else None
    m0 = machine_ticks()
    t0 = time.monotonic()
    with open(a.stdout, "wb") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    time.sleep(0.2)  # let the postmaster reap its backends (counted either way: proc_ticks)
    m1 = machine_ticks()
    d1 = {k: proc_ticks(p) for k, p in daemons.items()}
    px1 = proc_ticks(a.proxy, children=False) if a.proxy else None
    us1 = proc_user_sys(a.proxy) if a.proxy else None
    counts = perf_stop(perf, a.perf) if perf else {}
    rec["loadavg_after"] = loadavg()
    rec["exit"] = os.waitstatus_to_exitcode(status)
    rec["wall_s"] = round(wall, 3)
    client_ticks = (ru.ru_utime + ru.ru_stime) * CLK_TCK
    ours = client_ticks + sum((d1[k] or 0) - (d0[k] or 0) for k in daemons if d0[k] is not None)
    busy = m1[0] - m0[0]
    total = max(1, m1[1] - m0[1])
    rec["machine_busy_pct"] = round(100.0 * busy / total, 1)
    rec["foreign_cpu_pct"] = round(max(0.0, 100.0 * (busy - ours) / total), 1)
    rec["client_cpu_s"] = round(ru.ru_utime + ru.ru_stime, 3)
    if a.proxy and px0 is not None and px1 is not None:
        rec["proxy_cpu_s"] = round((px1 - px0) / CLK_TCK, 3)
    with open(a.stdout, errors="replace") as f:
        text = f.read()
    name = os.path.basename(cmd[0])
    if "redis-benchmark" in name:
        rec["redis"] = parse_redis_csv(text)
        rec["ops"] = len(rec["redis"]) * int(cmd[cmd.index("-n") + 1])
    elif "pgbench" in name:
        rec["pgbench"] = parse_pgbench(text)
        rec["ops"] = rec["pgbench"].get("txns", 0)
    elif name == "wrk":
        rec["wrk"] = parse_wrk(text)
        rec["ops"] = rec["wrk"].get("requests", 0)
    if rec.get("proxy_cpu_s") is not None and rec.get("ops"):
        rec["proxy_cpu_us_per_op"] = round(rec["proxy_cpu_s"] * 1e6 / rec["ops"], 2)
    if us0 and us1 and rec.get("ops"):
        rec["proxy_user_us_per_op"] = round((us1[0] - us0[0]) / CLK_TCK * 1e6 / rec["ops"], 2)
        rec["proxy_sys_us_per_op"] = round((us1[1] - us0[1]) / CLK_TCK * 1e6 / rec["ops"], 2)
    if counts and rec.get("ops"):
        # perf attaches and stops a few ms off the command's start and end: the counts are
        # off by a few hundred calls at most, nothing next to 10^5 operations.
        rec["proxy_syscalls_per_op"] = round(counts.get("raw_syscalls:sys_enter", 0) / rec["ops"], 3)
        rec["proxy_cswitch_per_op"] = round(counts.get("context-switches", 0) / rec["ops"], 3)
    with open(a.out_json, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print(json.dumps({k: rec.get(k) for k in ("target", "bench", "round", "exit", "wall_s",
                                               "proxy_cpu_us_per_op", "machine_busy_pct",
                                               "foreign_cpu_pct", "loadavg_before")}))
    if rec["exit"] != 0:
        sys.stderr.write(text[-2000:])
    return 0 if rec["exit"] == 0 else 1


# --------------------------------------------------------------------------- small tools
def freeport(used):
    used = {int(u) for u in used}
    for _ in range(10000):
        p = random.randint(20000, 32000)
        if p in used:
            continue
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
            s.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            s.close()
    raise SystemExit("no free port")


def waitport(port, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return 0
        except OSError:
            time.sleep(0.05)
    return 1


def resp_cmd(port, *args, timeout=1.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        req = b"*%d\r\n" % len(args) + b"".join(
            b"$%d\r\n%s\r\n" % (len(x), x) for x in (a.encode() for a in args))
        s.sendall(req)
        buf = b""
        while True:
            d = s.recv(65536)
            if not d:
                raise OSError("EOF")
            buf += d
            if b"\r\n" in buf:
                head = buf.split(b"\r\n", 1)[0]
                if head[:1] in (b"+", b"-", b":"):
                    return head.decode()
                if head[:1] == b"$":
                    n = int(head[1:])
                    if n < 0:
                        return ""
                    if len(buf) >= len(head) + 2 + n + 2:
                        return buf[len(head) + 2:len(head) + 2 + n].decode()
    finally:
        s.close()


def redis_ping(port, timeout):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            r = resp_cmd(port, "PING")
            if r == "+PONG":
                return 0
            last = r
        except OSError as e:
            last = repr(e)
        time.sleep(0.1)
    print(f"no PONG on {port}: {last}", file=sys.stderr)
    return 1


def hactl_states(path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(2)
    s.connect(path)
    s.sendall(b"show stat\n")
    buf = b""
    while True:
        d = s.recv(65536)
        if not d:
            break
        buf += d
    s.close()
    lines = buf.decode().splitlines()
    hdr = lines[0].lstrip("# ").split(",")
    out = {}
    for l in lines[1:]:
        if not l:
            continue
        f = dict(zip(hdr, l.split(",")))
        if f["svname"] not in ("FRONTEND", "BACKEND"):
            out[f["pxname"] + "/" + f["svname"]] = f["status"]
    return out


def hactl_wait(path, timeout):
    end = time.time() + timeout
    st = None
    while time.time() < end:
        try:
            st = hactl_states(path)
            if st and all(v == "UP" for v in st.values()):
                return 0
        except OSError:
            pass
        time.sleep(0.05)
    print("timeout waiting for UP:", st, file=sys.stderr)
    return 1


def ctl_wait_healthy(url, service, timeout):
    end = time.time() + timeout
    last = None
    while time.time() < end:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/api/ops/health", timeout=1) as r:
                body = json.load(r)
            for s in body.get("services", []):
                if s.get("name") == service:
                    last = s.get("status")
                    if last == "healthy":
                        return 0
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = repr(e)
        time.sleep(0.1)
    print(f"{service} not healthy after {timeout}s: {last}", file=sys.stderr)
    return 1


def http_wait(url, timeout, length=None):
    """Until GET URL answers 200 (with a body of LENGTH bytes); prints the last failure."""
    end = time.time() + timeout
    last = None
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body = r.read()
                if r.status == 200 and (length is None or len(body) == length):
                    return 0
                last = f"HTTP {r.status}, {len(body)}-byte body"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}: {e.read()[:200]!r}"
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = repr(e)
        if time.time() >= end:
            break
        time.sleep(0.2)
    print(f"GET {url}: no 200{f' with {length} bytes' if length else ''} after {timeout}s; last: {last}",
          file=sys.stderr)
    return 1


def supersede(path, from_line, max_foreign):
    """If a run recorded after line FROM_LINE had foreign CPU >= MAX_FOREIGN, mark those
    runs superseded (kept in the file, left out of the medians) and exit 0; else exit 1."""
    lines = [l for l in open(path) if l.strip()]
    recs = [json.loads(l) for l in lines[from_line:]]
    if not any((r.get("foreign_cpu_pct") or 0) >= max_foreign for r in recs):
        return 1
    with open(path, "w") as f:
        f.writelines(lines[:from_line])
        for r in recs:
            r["superseded"] = True
            f.write(json.dumps(r) + "\n")
    return 0


def haproxy_cfg(template, out, redis_primary, redis_backup, redis_listen, pg=None, pg_listen=None, sock=None):
    """The reference config with its example ports replaced; the HTTP section (no nginx here)
    is dropped, and the PostgreSQL section too when no PostgreSQL port is given."""
    text = open(template).read()
    sections = re.split(r"\n(?=(?:frontend|backend|defaults|global)\b)", text)
    keep = []
    for sec in sections:
        first = sec.strip().split("\n", 1)[0]
        if first.startswith(("frontend fe_http", "backend be_http")):
            continue
        if pg is None and first.startswith(("frontend fe_pg", "backend be_pg")):
            continue
        keep.append(sec.rstrip("\n"))
    text = "\n\n".join(keep) + "\n"
    subst = {"127.0.0.1:26379": f"127.0.0.1:{redis_listen}",
             "127.0.0.1:16379": f"127.0.0.1:{redis_primary}",
             "127.0.0.1:16380": f"127.0.0.1:{redis_backup}"}
    if pg is not None:
        subst["127.0.0.1:15432"] = f"127.0.0.1:{pg}"
        subst["127.0.0.1:25432"] = f"127.0.0.1:{pg_listen}"
    for k, v in subst.items():
        text = text.replace(k, v)
    if sock:
        text = text.replace("stats socket ./haproxy.sock", f"stats socket {sock}")
    with open(out, "w") as f:
        f.write(f"# generated from {os.path.basename(template)} by benches/benchlib.py\n" + text)


def machine(cont_bin=None):
    def sh(c):
        try:
            return subprocess.run(c, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:  # noqa: BLE001
            return ""
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "kernel": os.uname().release,
        "os": sh(". /etc/os-release; echo $PRETTY_NAME"),
        "haproxy": sh("/usr/sbin/haproxy -v | head -1"),
        "redis_server": sh("redis-server --version"),
        "redis_benchmark": sh("redis-benchmark --version"),
        "postgres": sh("/usr/lib/postgresql/15/bin/postgres --version"),
        "pgbench": sh("/usr/lib/postgresql/15/bin/pgbench --version"),
        "python3": sh("python3 --version"),
        "loadavg": loadavg(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"continuity_bin": cont_bin,
            "continuity_bin_mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(cont_bin))),
            "continuity_version": sh(f"{cont_bin} --version"),
            "continuity_sha256": sh(f"sha256sum {cont_bin} | cut -c1-16"),
            "git_head": sh(f"git -C {os.path.dirname(os.path.abspath(__file__))} log -1 --format='%h %s'"),
            "git_dirty_files": sh(f"git -C {os.path.dirname(os.path.abspath(__file__))} status --porcelain | wc -l")}
           if cont_bin and os.path.exists(cont_bin) else {}),
    }


# --------------------------------------------------------------------------- reports
def med(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, None
    return statistics.median(xs), min(xs), max(xs)


def fmt(x, nd=None):
    if x is None:
        return "-"
    if nd is None:
        nd = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else 3)
    return f"{x:,.{nd}f}"


def cell(xs, nd=None):
    m, lo, hi = med(xs)
    if m is None:
        return "-"
    if lo == hi:
        return fmt(m, nd)
    return f"{fmt(m, nd)} [{fmt(lo, nd)}-{fmt(hi, nd)}]"


def ratio(a, b):
    ma, mb = med(a)[0], med(b)[0]
    if ma is None or mb is None or mb == 0:
        return "-"
    return f"{ma / mb:.3f}"


LOAD_BENCHES = [
    ("redis_np", "redis-benchmark -t set,get -n 200000 -c 50"),
    ("redis_p16", "redis-benchmark -t set,get -n 2000000 -c 50 -P 16"),
    ("redis_c1", "redis-benchmark -t set,get -n 50000 -c 1"),
    ("pg_S", "pgbench -S -c 16 -j 2 -T 15"),
    ("pg_tpcb", "pgbench -c 8 -j 2 -T 15 (TPC-B)"),
]


def machine_header(d):
    out = []
    mp = os.path.join(d, "machine.json")
    if os.path.exists(mp):
        m = json.load(open(mp))
        out.append(f"Machine: {m.get('cpu')}, nproc {m.get('nproc')}, kernel {m.get('kernel')}, {m.get('os')}; "
                   f"{m.get('haproxy')}; {m.get('redis_server')}; {m.get('postgres')}; "
                   f"started {m.get('date_utc')}, loadavg at start {m.get('loadavg')}.\n")
        if m.get("continuity_bin"):
            out.append(f"continuity: {m.get('continuity_version')}, binary built {m.get('continuity_bin_mtime')} "
                       f"(sha256 {m.get('continuity_sha256', '?')}...), "
                       f"git HEAD {m.get('git_head')} ({m.get('git_dirty_files')} uncommitted files).\n")
    return out


def report_load(d):
    allrecs = [json.loads(l) for l in open(os.path.join(d, "runs.jsonl")) if l.strip()]
    recs = [r for r in allrecs if not r.get("superseded")]
    n_sup = len(allrecs) - len(recs)
    meta = {"rss": {}}
    rd = os.path.join(d, "rss")
    if os.path.isdir(rd):
        for fn in sorted(os.listdir(rd)):
            proc, _, phase = fn[:-5].partition("_")
            try:
                meta["rss"].setdefault(proc, {})[phase] = json.load(open(os.path.join(rd, fn)))
            except ValueError:
                pass
    targets = [t for t in ("direct", "continuity", "continuity-mux", "haproxy")
               if any(r["target"] == t for r in recs)]
    out = machine_header(d)
    for bench, desc in LOAD_BENCHES:
        rs = [r for r in recs if r["bench"] == bench]
        if not rs:
            continue
        out.append(f"### {bench}: `{desc}`\n")
        here = [t for t in targets if any(r["target"] == t for r in rs)]
        n = {t: sum(1 for r in rs if r["target"] == t) for t in here}
        bad = [r for r in rs if r.get("exit") != 0]
        sup = sum(1 for r in allrecs if r["bench"] == bench and r.get("superseded"))
        out.append("Runs per target: " + ", ".join(f"{t} {n[t]}" for t in here)
                   + (f" (plus {sup} noisy run(s) repeated and left out)" if sup else "")
                   + (f"; **{len(bad)} run(s) exited non-zero**" if bad else "") + ".\n")
        if bench.startswith("redis"):
            metrics = [("SET req/s", lambda r: r.get("redis", {}).get("SET", {}).get("rps")),
                       ("GET req/s", lambda r: r.get("redis", {}).get("GET", {}).get("rps")),
                       ("SET p50 ms", lambda r: r.get("redis", {}).get("SET", {}).get("p50_ms")),
                       ("GET p50 ms", lambda r: r.get("redis", {}).get("GET", {}).get("p50_ms")),
                       ("SET p99 ms", lambda r: r.get("redis", {}).get("SET", {}).get("p99_ms")),
                       ("GET p99 ms", lambda r: r.get("redis", {}).get("GET", {}).get("p99_ms"))]
        else:
            metrics = [("tps", lambda r: r.get("pgbench", {}).get("tps")),
                       ("lat avg ms", lambda r: r.get("pgbench", {}).get("lat_avg_ms")),
                       ("failed txns", lambda r: r.get("pgbench", {}).get("failed"))]
        metrics += [("proxy CPU us/op", lambda r: r.get("proxy_cpu_us_per_op")),
                    ("proxy user us/op", lambda r: r.get("proxy_user_us_per_op")),
                    ("proxy kernel us/op", lambda r: r.get("proxy_sys_us_per_op")),
                    ("proxy syscalls/op", lambda r: r.get("proxy_syscalls_per_op")),
                    ("proxy context switches/op", lambda r: r.get("proxy_cswitch_per_op")),
                    ("machine busy %", lambda r: r.get("machine_busy_pct")),
                    ("foreign CPU %", lambda r: r.get("foreign_cpu_pct")),
                    ("loadavg(1m) before", lambda r: (r.get("loadavg_before") or [None])[0])]
        hdr = "| metric | " + " | ".join(here) + " |"
        ratios = []
        if "direct" in here and "continuity" in here: ratios.append(("continuity", "direct", "C/D"))
        if "direct" in here and "haproxy" in here: ratios.append(("haproxy", "direct", "H/D"))
        if "continuity" in here and "haproxy" in here: ratios.append(("continuity", "haproxy", "C/H"))
        if "continuity-mux" in here and "haproxy" in here:
            ratios.append(("continuity-mux", "haproxy", "M/H"))
        hdr += "".join(f" {lbl} |" for _, _, lbl in ratios)
        out.append(hdr)
        out.append("|---" * (1 + len(targets) + len(ratios)) + "|")
        for name, fn in metrics:
            vals = {t: [fn(r) for r in rs if r["target"] == t] for t in here}
            nd = 0 if name.startswith("failed") else (2 if name.startswith("loadavg") else
                                                      (1 if name.startswith(("machine", "foreign")) else None))
            row = f"| {name} | " + " | ".join(cell(vals[t], nd) for t in here) + " |"
            if name.startswith(("machine", "foreign", "loadavg", "failed")):
                row += " |" * len(ratios)
            else:
                row += "".join(f" {ratio(vals[a], vals[b])} |" for a, b, _ in ratios)
            out.append(row)
        out.append("")
        if bench.startswith("redis") and "direct" in here and len(here) > 1:
            # What each proxy adds to the median p50 of the direct runs.
            added = []
            for op in ("SET", "GET"):
                d = med([r.get("redis", {}).get(op, {}).get("p50_ms") for r in rs if r["target"] == "direct"])[0]
                got = {}
                for t in here:
                    if t == "direct" or d is None:
                        continue
                    m = med([r.get("redis", {}).get(op, {}).get("p50_ms") for r in rs if r["target"] == t])[0]
                    if m is not None:
                        got[t] = (m - d) * 1000
                parts = [f"{t} +{v:.0f} us" for t, v in got.items()]
                if "continuity" in got and "haproxy" in got and got["haproxy"] > 0:
                    parts.append(f"C/H {got['continuity'] / got['haproxy']:.2f}")
                if "continuity-mux" in got and "haproxy" in got and got["haproxy"] > 0:
                    parts.append(f"M/H {got['continuity-mux'] / got['haproxy']:.2f}")
                if parts:
                    added.append(f"{op} " + ", ".join(parts))
            if added:
                out.append("p50 added over direct (medians): " + "; ".join(added) + ".\n")
        # per-round raw line
        line = []
        for r in sorted(rs, key=lambda r: (r["round"], here.index(r["target"]))):
            if bench.startswith("redis"):
                v = r.get("redis", {})
                s = f"SET {fmt(v.get('SET', {}).get('rps'))} GET {fmt(v.get('GET', {}).get('rps'))}"
            else:
                s = f"tps {fmt(r.get('pgbench', {}).get('tps'))}"
            line.append(f"r{r['round']} {r['target']}: {s} (foreign {r.get('foreign_cpu_pct')}%)")
        out.append("All runs: " + "; ".join(line) + "\n")
    if meta.get("rss"):
        out.append("### Resident memory (VmRSS, kB)\n")
        out.append("| process | after start, idle | after load, idle | peak (VmHWM) |")
        out.append("|---|---|---|---|")
        for proc, v in meta["rss"].items():
            out.append(f"| {proc} | {v.get('idle_start', {}).get('VmRSS', '-')} | "
                       f"{v.get('idle_end', {}).get('VmRSS', '-')} | {v.get('idle_end', {}).get('VmHWM', '-')} |")
        out.append("")
    fl = [r.get("foreign_cpu_pct") or 0 for r in recs]
    la = [(r.get("loadavg_before") or [0])[0] for r in recs]
    if fl:
        noisy = sum(1 for x in fl if x >= 5)
        out.append(f"Machine load during the runs: foreign CPU median {fmt(statistics.median(fl), 1)}% "
                   f"(max {fmt(max(fl), 1)}%), {noisy}/{len(fl)} runs with foreign CPU >= 5%; "
                   f"1-min loadavg before runs median {fmt(statistics.median(la), 2)} (max {fmt(max(la), 2)}).")
        if n_sup:
            out.append(f"{n_sup} run(s) with foreign CPU over the limit were repeated; the medians leave them out.")
        if noisy:
            out.append("**Contaminated: other processes used the CPU during some runs; re-measure on a quiet machine.**")
    return "\n".join(out)


def report_failover(d):
    recs = [json.loads(l) for l in open(os.path.join(d, "failover.jsonl")) if l.strip()]
    out = machine_header(d)
    out.append("| target | mode | timeout s | trials | gap last-ok to first-backup ms | failed before backup | "
               "failed total | first backup reply ms | switch seen ms | fail kinds | "
               "max loadavg 1m |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    keys = []
    for r in recs:
        k = (r["target"], r["mode"], r["timeout_s"])
        if k not in keys:
            keys.append(k)
    for k in keys:
        rs = [r for r in recs if (r["target"], r["mode"], r["timeout_s"]) == k]
        kinds = {}
        for r in rs:
            for kk, v in (r.get("failed_kinds") or {}).items():
                kinds[kk] = kinds.get(kk, 0) + v
        nob = sum(1 for r in rs if r.get("first_backup_reply_ms") is None)
        out.append(
            f"| {k[0]} | {k[1]} | {k[2]} | {len(rs)}{' (' + str(nob) + ' never reached backup)' if nob else ''} | "
            f"{cell([r.get('gap_last_ok_to_first_backup_ms') for r in rs], 1)} | "
            f"{cell([r.get('failed_before_backup') for r in rs], 0)} | "
            f"{cell([r.get('failed_requests_total') for r in rs], 0)} | "
            f"{cell([r.get('first_backup_reply_ms') for r in rs], 1)} | "
            f"{cell([r.get('switch_seen_ms') for r in rs], 1)} | {kinds or '-'} | "
            f"{fmt(max((r.get('loadavg') or [0])[0] for r in rs), 2)} |")
    out.append("")
    out.append("Per trial:\n")
    out.append("| target | mode | rep | gap ms | failed before backup | failed total | kinds | "
               "first fail ms | first backup ms | switch seen ms | primary dead after kill ms | "
               "max OK latency after kill ms | direct control max ms | loadavg |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in recs:
        out.append(f"| {r['target']} | {r['mode']} | {r.get('rep')} | {fmt(r.get('gap_last_ok_to_first_backup_ms'), 1)} | "
                   f"{r.get('failed_before_backup')} | {r.get('failed_requests_total')} | {r.get('failed_kinds') or '-'} | "
                   f"{fmt(r.get('first_fail_ms'), 1)} | {fmt(r.get('first_backup_reply_ms'), 1)} | "
                   f"{fmt(r.get('switch_seen_ms'), 1)} | {fmt(r.get('dead_after_kill_ms'), 2)} | "
                   f"{fmt(r.get('max_ok_latency_after_kill_ms'), 1)} | {fmt(r.get('control_max_latency_ms'), 1)} | "
                   f"{(r.get('loadavg') or ['-'])[0]} |")
    return "\n".join(out)


# --------------------------------------------------------------------------- http_load.sh
HTTP_TARGETS = ("direct", "continuity", "continuity-nolog", "haproxy", "haproxy-log", "pingora")
# (a, b, label, what the pair compares); the targets are judged for the last three
HTTP_PAIRS = (
    ("continuity", "direct", "C/D", None),
    ("haproxy", "direct", "H/D", None),
    ("continuity", "haproxy", "C/H", "as shipped: continuity writes its access log, HAProxy's reference config logs no traffic"),
    ("continuity-nolog", "haproxy", "Cn/H", "like for like, neither writes a traffic log"),
    ("continuity", "haproxy-log", "C/Hl", "like for like, both write one log line per request to a file"),
)
HTTP_METRICS = [  # (label, key in rec["wrk"] or a function, ratio?)
    ("req/s", "rps", True),
    ("p50 ms", "p50_ms", True),
    ("p90 ms", "p90_ms", True),
    ("p99 ms", "p99_ms", True),
    ("avg ms", "avg_ms", True),
    ("max ms", "max_ms", True),
    ("proxy CPU us/req", lambda r: r.get("proxy_cpu_us_per_op"), True),
    ("proxy user us/req", lambda r: r.get("proxy_user_us_per_op"), True),
    ("proxy kernel us/req", lambda r: r.get("proxy_sys_us_per_op"), True),
    ("proxy syscalls/req", lambda r: r.get("proxy_syscalls_per_op"), True),
    ("proxy context switches/req", lambda r: r.get("proxy_cswitch_per_op"), True),
    ("non-2xx/3xx", lambda r: r.get("wrk", {}).get("non2xx"), False),
    ("socket errors", lambda r: sum((r.get("wrk", {}).get("socket_errors") or {}).values()), False),
    ("machine busy %", lambda r: r.get("machine_busy_pct"), False),
    ("foreign CPU %", lambda r: r.get("foreign_cpu_pct"), False),
    ("loadavg(1m) before", lambda r: (r.get("loadavg_before") or [None])[0], False),
]


_ERR_ROWS = ("non-2xx/3xx", "socket errors")  # counted over every run, failed ones included


def http_failed(r):
    """A run that does not count: wrk failed, served nothing, got an error status, or had
    socket errors on more than 0.1% of its requests."""
    w = r.get("wrk") or {}
    n = w.get("requests") or 0
    errs = sum((w.get("socket_errors") or {}).values())
    return r.get("exit") != 0 or not w.get("rps") or n == 0 or (w.get("non2xx") or 0) > 0 or errs > n / 1000


def _http_val(rec, key):
    return key(rec) if callable(key) else rec.get("wrk", {}).get(key)


def summary_http(d):
    """Medians [min, max] per (mode, target, metric), ratios, and the issue's targets."""
    allrecs = [json.loads(l) for l in open(os.path.join(d, "runs.jsonl")) if l.strip()]
    recs = [r for r in allrecs if not r.get("superseded")]
    params = {}
    pp = os.path.join(d, "params.json")
    if os.path.exists(pp):
        params = json.load(open(pp))
    out = {"params": params, "modes": {}, "superseded_runs": len(allrecs) - len(recs),
           "failed_runs": sum(1 for r in recs if http_failed(r))}
    mp = os.path.join(d, "machine.json")
    if os.path.exists(mp):
        out["machine"] = json.load(open(mp))
    modes = []
    for r in recs:
        if r["mode"] not in modes:
            modes.append(r["mode"])
    for mode in modes:
        rs = [r for r in recs if r["mode"] == mode]
        targets = [t for t in HTTP_TARGETS if any(r["target"] == t for r in rs)]
        m = {"cmd": next((r["cmd"] for r in rs), None), "targets": {}, "ratios": {}, "issue_targets": {}}
        vals = {}
        for t in targets:
            tr = [r for r in rs if r["target"] == t]
            m["targets"][t] = {"runs": len(tr), "failed_runs": sum(1 for r in tr if http_failed(r))}
            for label, key, _ in HTTP_METRICS:
                xs = [x for x in (_http_val(r, key) for r in tr if label in _ERR_ROWS or not http_failed(r))
                      if x is not None]
                vals[(t, label)] = xs
                md, lo, hi = med(xs)
                m["targets"][t][label] = None if md is None else {"median": md, "min": lo, "max": hi, "n": len(xs)}
        for a, b, lbl, what in HTTP_PAIRS:
            if a in targets and b in targets:
                m["ratios"][lbl] = {}
                for label, _, has_ratio in HTTP_METRICS:
                    if has_ratio:
                        ma, mb = med(vals[(a, label)])[0], med(vals[(b, label)])[0]
                        m["ratios"][lbl][label] = round(ma / mb, 3) if ma is not None and mb else None
                if what:
                    c_rps, h_rps = med(vals[(a, "req/s")])[0], med(vals[(b, "req/s")])[0]
                    c_p99, h_p99 = med(vals[(a, "p99 ms")])[0], med(vals[(b, "p99 ms")])[0]
                    m["issue_targets"][lbl] = {
                        "what": what, "a": a, "b": b,
                        "rps_at_least_haproxy": None if c_rps is None or h_rps is None else c_rps >= h_rps,
                        "p99_no_worse_than_haproxy": None if c_p99 is None or h_p99 is None else c_p99 <= h_p99,
                    }
        out["modes"][mode] = m
    return out, recs, allrecs


def report_http(d, summary_path=None):
    summ, recs, allrecs = summary_http(d)
    if summary_path:
        with open(summary_path, "w") as f:
            json.dump(summ, f, indent=1)
    out = []
    mc = summ.get("machine") or {}
    if mc:
        out.append(f"Machine: {mc.get('cpu')}, nproc {mc.get('nproc')}, kernel {mc.get('kernel')}, {mc.get('os')}; "
                   f"{mc.get('haproxy')}; {mc.get('nginx', '')}; {mc.get('wrk', '')}; "
                   f"started {mc.get('date_utc')}, loadavg at start {mc.get('loadavg')}.\n")
        if mc.get("continuity_bin"):
            out.append(f"continuity: {mc.get('continuity_version')}, binary built {mc.get('continuity_bin_mtime')} "
                       f"(sha256 {mc.get('continuity_sha256', '?')}...), "
                       f"git HEAD {mc.get('git_head')} ({mc.get('git_dirty_files')} uncommitted files).\n")
    pr = summ.get("params") or {}
    if pr:
        out.append("Setup: " + ", ".join(f"{k} {v}" for k, v in pr.items() if not isinstance(v, (dict, list))) + ".\n")
    for mode, m in summ["modes"].items():
        rs = [r for r in recs if r["mode"] == mode]
        targets = list(m["targets"])
        out.append(f"### {mode}: `{m['cmd']}`\n")
        sup = sum(1 for r in allrecs if r["mode"] == mode and r.get("superseded"))
        bad = sum(v["failed_runs"] for v in m["targets"].values())
        out.append("Runs per target: " + ", ".join(f"{t} {m['targets'][t]['runs']}" for t in targets)
                   + (f" (plus {sup} noisy run(s) repeated and left out)" if sup else "")
                   + (f"; **{bad} failed run(s) (exit != 0, no requests, or errors), left out of the medians**"
                      if bad else "") + ".\n")
        ratios = list(m["ratios"])
        out.append("| metric | " + " | ".join(targets) + " |" + "".join(f" {l} |" for l in ratios))
        out.append("|---" * (1 + len(targets) + len(ratios)) + "|")
        for label, key, has_ratio in HTTP_METRICS:
            nd = (0 if label.startswith(("non-2xx", "socket", "req/s")) else
                  2 if label.startswith("loadavg") else 1 if label.endswith("%") else None)
            row = f"| {label} | " + " | ".join(
                cell([_http_val(r, key) for r in rs
                      if r["target"] == t and (label in _ERR_ROWS or not http_failed(r))], nd)
                for t in targets) + " |"
            if has_ratio:
                row += "".join(f" {fmt(m['ratios'][l].get(label), 3)} |" for l in ratios)
            else:
                row += " |" * len(ratios)
            out.append(row)
        out.append("")
        yn = {True: "**met**", False: "**NOT met**", None: "-"}
        for lbl, it in (m.get("issue_targets") or {}).items():
            r = m["ratios"][lbl]
            out.append(f"Issue targets, {lbl} = {it['a']} / {it['b']} ({it['what']}): "
                       f"req/s at least HAProxy's: {yn[it['rps_at_least_haproxy']]} ({fmt(r.get('req/s'), 3)}); "
                       f"p99 no worse than HAProxy's: {yn[it['p99_no_worse_than_haproxy']]} "
                       f"({fmt(r.get('p99 ms'), 3)}).\n")
        line = []
        for r in sorted(rs, key=lambda r: (r["round"], HTTP_TARGETS.index(r["target"]))):
            w = r.get("wrk", {})
            line.append(f"r{r['round']} {r['target']}: {fmt(w.get('rps'), 0)} req/s p99 {fmt(w.get('p99_ms'))} ms"
                        + (" FAILED" if http_failed(r) else "") + f" (foreign {r.get('foreign_cpu_pct')}%)")
        out.append("All runs: " + "; ".join(line) + "\n")
    rd = os.path.join(d, "rss")
    if os.path.isdir(rd) and os.listdir(rd):
        out.append("### Resident memory (VmRSS, kB)\n")
        out.append("| process | after start, idle | after load, idle | peak (VmHWM) |")
        out.append("|---|---|---|---|")
        rss_v = {}
        for fn in sorted(os.listdir(rd)):
            proc, _, phase = fn[:-5].partition("_")
            try:
                rss_v.setdefault(proc, {})[phase] = json.load(open(os.path.join(rd, fn)))
            except ValueError:
                pass
        for proc, v in rss_v.items():
            out.append(f"| {proc} | {v.get('idle_start', {}).get('VmRSS', '-')} | "
                       f"{v.get('idle_end', {}).get('VmRSS', '-')} | {v.get('idle_end', {}).get('VmHWM', '-')} |")
        out.append("")
    fl = [r.get("foreign_cpu_pct") or 0 for r in recs]
    if fl:
        noisy = sum(1 for x in fl if x >= 5)
        la = [(r.get("loadavg_before") or [0])[0] for r in recs]
        out.append(f"Machine load during the runs: foreign CPU median {fmt(statistics.median(fl), 1)}% "
                   f"(max {fmt(max(fl), 1)}%), {noisy}/{len(fl)} runs with foreign CPU >= 5%; "
                   f"1-min loadavg before runs median {fmt(statistics.median(la), 2)} (max {fmt(max(la), 2)}).")
        if noisy:
            out.append("**Contaminated: other processes used the CPU during some runs; re-measure on a quiet machine.**")
    return "\n".join(out)


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    c, args = sys.argv[1], sys.argv[2:]
    if c == "freeport":
        print(freeport(args)); return 0
    if c == "waitport":
        return waitport(int(args[0]), float(args[1]) if len(args) > 1 else 10)
    if c == "redis-ping":
        return redis_ping(int(args[0]), float(args[1]) if len(args) > 1 else 10)
    if c == "redis-get":
        print(resp_cmd(int(args[0]), "GET", args[1])); return 0
    if c == "hactl-wait":
        return hactl_wait(args[0], float(args[1]) if len(args) > 1 else 30)
    if c == "ctl-wait-healthy":
        return ctl_wait_healthy(args[0], args[1], float(args[2]) if len(args) > 2 else 15)
    if c == "supersede":
        return supersede(args[0], int(args[1]), float(args[2]))
    if c == "haproxy-cfg":
        kw = dict(a.split("=", 1) for a in args[2:])
        haproxy_cfg(args[0], args[1], **kw); return 0
    if c == "rss":
        print(json.dumps(rss(int(args[0])))); return 0
    if c == "run":
        return cmd_run(args)
    if c == "machine":
        print(json.dumps(machine(args[0] if args else None))); return 0
    if c == "report-load":
        print(report_load(args[0])); return 0
    if c == "report-failover":
        print(report_failover(args[0])); return 0
    if c == "http-wait":
        return http_wait(args[0], float(args[1]) if len(args) > 1 else 10, int(args[2]) if len(args) > 2 else None)
    if c == "report-http":
        print(report_http(args[0], args[1] if len(args) > 1 else None)); return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
