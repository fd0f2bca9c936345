#!/usr/bin/env python3
"""Failover probe (adapted from the HAProxy reference probe; Python 3 stdlib only).

A client sends one Redis request every INTERVAL s through the proxy on PORT and
notes which server answered. At t=KILL_AT it SIGKILLs (--signal stop: SIGSTOPs, a
hung primary) the primary Redis (--pid) and
waits until every thread of it has exited before the next request (SIGKILL is
asynchronous; a connection accepted by a dying server is reset a moment later).
It prints one JSON line: the gap from the last good reply before the kill to the
first good reply from the backup, and the failed requests.

--mode persistent: one connection, reused; on any error (EOF, RST, refused,
    timeout, error reply) it is closed and re-opened on the next tick (as the
    reference probe does).
--mode newconn: every request opens a new connection (connect, send, read, close).

--identify whoami: `GET whoami`; the primary holds "primary", the backup "backup"
    (the backup must be an independent server, a replica would copy the value).
--identify port: `INFO server`, the answering server is told by its tcp_port
    (--primary-port / --backup-port); for a real replica that is promoted.
--write: each request is pipelined after `SET probe:seq N`; a request is good only
    if the write succeeded too (a read-only replica answers -READONLY: failed).

Optional pollers (recorded as transitions): --sock (HAProxy stats socket, every
5 ms) and --api/--token (continuity GET /api/ops/failover/status, every 20 ms).
--control-port: a direct PING baseline (to the backup) every 20 ms, to tell machine
stalls from proxy stalls.
"""
import argparse
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in benches/
from benchlib import all_threads_dead  # noqa: E402 - beside this script (stdlib only too)

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--duration", type=float, default=15.0)
ap.add_argument("--kill-at", type=float, default=5.0)
ap.add_argument("--interval", type=float, default=0.010)
ap.add_argument("--timeout", type=float, default=0.5, help="per-request deadline (connect+send+reply)")
ap.add_argument("--pid", type=int, default=0, help="PID of the primary redis-server to SIGKILL")
ap.add_argument("--signal", choices=["kill", "stop"], default="kill",
                help="kill: SIGKILL (the port refuses); stop: SIGSTOP (a hung primary: the kernel "
                     "still accepts connections, nothing answers; SIGCONT at the end)")
ap.add_argument("--pidfile", default=None)
ap.add_argument("--mode", choices=["persistent", "newconn"], default="persistent")
ap.add_argument("--identify", choices=["whoami", "port"], default="whoami")
ap.add_argument("--primary-port", type=int, default=0)
ap.add_argument("--backup-port", type=int, default=0)
ap.add_argument("--write", action="store_true")
ap.add_argument("--sock", default=None, help="HAProxy stats socket (optional)")
ap.add_argument("--api", default=None, help="continuity control URL, e.g. http://127.0.0.1:8000 (optional)")
ap.add_argument("--token", default=None, help="bearer token for --api")
ap.add_argument("--service", default="redis", help="continuity service name for --api")
ap.add_argument("--control-port", type=int, default=0,
                help="also PING this port directly (the backup) every 20 ms: a baseline that tells "
                     "machine-wide stalls from proxy stalls")
ap.add_argument("--label", default="")
ap.add_argument("--events-out", default=None)
a = ap.parse_args()

clk = time.perf_counter


def resp(*args):
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in args)


if a.identify == "whoami":
    READ = resp(b"GET", b"whoami")
else:
    READ = resp(b"INFO", b"server")
t0 = clk()
transitions = []  # (t, key, value)
stop = threading.Event()


class Fail(Exception):
    pass


# ---- pollers ----------------------------------------------------------------------
def haproxy_states(path):
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


def poll_haproxy():
    last = {}
    while not stop.is_set():
        try:
            st = haproxy_states(a.sock)
        except OSError as e:
            st = {"_err": type(e).__name__}
        t = clk() - t0
        for k, v in st.items():
            if k.startswith("be_redis/") or k == "_err":
                if last.get(k) != v:
                    transitions.append((round(t, 4), k, v))
                    last[k] = v
        time.sleep(0.005)


def poll_continuity():
    last = {}
    req_hdr = {"Authorization": "Bearer " + a.token} if a.token else {}
    while not stop.is_set():
        st = {}
        try:
            rq = urllib.request.Request(a.api.rstrip("/") + "/api/ops/failover/status", headers=req_hdr)
            with urllib.request.urlopen(rq, timeout=1) as r:
                body = json.load(r)
            for s in body.get("services", []):
                if s.get("name") == a.service:
                    st["active"] = s.get("active_upstream")
                    st["epoch"] = s.get("epoch")
                    st["held"] = s.get("held_connections")
        except Exception as e:  # noqa: BLE001 - record, keep polling
            st = {"_err": type(e).__name__ + ":" + str(getattr(e, "code", ""))}
        t = clk() - t0
        for k, v in st.items():
            if last.get(k) != v:
                transitions.append((round(t, 4), k, v))
                last[k] = v
        time.sleep(0.02)


control = []  # (t_start, latency_s or None)


def control_loop():
    c = None
    while not stop.is_set():
        ts = clk()
        try:
            if c is None:
                c = socket.create_connection(("127.0.0.1", a.control_port), timeout=a.timeout)
            c.settimeout(a.timeout)
            c.sendall(b"*1\r\n$4\r\nPING\r\n")
            if not c.recv(64):
                raise OSError("EOF")
            control.append((ts - t0, clk() - ts))
        except OSError:
            control.append((ts - t0, None))
            try:
                c.close()
            except (OSError, AttributeError):
                pass
            c = None
        time.sleep(0.02)


# ---- RESP --------------------------------------------------------------------------
class Reader:
    def __init__(self, s, deadline):
        self.s, self.deadline, self.buf = s, deadline, b""

    def _more(self):
        rem = self.deadline - clk()
        if rem <= 0:
            raise socket.timeout()
        self.s.settimeout(rem)
        d = self.s.recv(65536)
        if not d:
            raise Fail("EOF")
        self.buf += d

    def _line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def reply(self):
        head = self._line()
        t = head[:1]
        if t == b"+":
            return head[1:].decode()
        if t == b"-":
            raise Fail("ERR " + head[1:].decode(errors="replace").split(" ")[0])
        if t == b":":
            return int(head[1:])
        if t == b"$":
            n = int(head[1:])
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self._more()
            v, self.buf = self.buf[:n], self.buf[n + 2:]
            return v.decode(errors="replace")
        if t == b"*":
            n = int(head[1:])
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise Fail("PROTO")


PORT_RE = re.compile(r"^tcp_port:(\d+)", re.M)


def identify(v):
    if a.identify == "whoami":
        return "nil" if v is None else v
    m = PORT_RE.search(v or "")
    if not m:
        raise Fail("PROTO")
    p = int(m.group(1))
    return {a.primary_port: "primary", a.backup_port: "backup"}.get(p, f"port {p}")


# ---- main loop -------------------------------------------------------------------------
if a.sock:
    threading.Thread(target=poll_haproxy, daemon=True).start()
if a.api:
    threading.Thread(target=poll_continuity, daemon=True).start()
if a.control_port:
    threading.Thread(target=control_loop, daemon=True).start()
time.sleep(0.05)
pid = a.pid or int(open(a.pidfile).read().strip())
events = []  # (t_start, t_end, outcome, server)
sock = None
killed = False
t_kill = None
t_dead = None
nxt = clk()
seq = 0
while True:
    now = clk()
    if now - t0 >= a.duration:
        break
    if not killed and now - t0 >= a.kill_at:
        os.kill(pid, signal.SIGSTOP if a.signal == "stop" else signal.SIGKILL)
        t_kill = clk() - t0
        killed = True
        # SIGKILL is asynchronous: wait (<= 0.5 s) until every thread of the process has
        # exited (gone or zombie: the fd table, with its sockets, is released with the last
        # thread), so that the next request meets a dead primary, not one being torn down.
        # SIGSTOP takes effect at once for this purpose: nothing is torn down.
        t_dead = t_kill if a.signal == "stop" else None
        while a.signal == "kill" and clk() - t0 - t_kill < 0.5:
            if all_threads_dead(pid):
                t_dead = clk() - t0
                break
            time.sleep(0.0002)
    ts = clk()
    deadline = ts + a.timeout
    server = None
    seq += 1
    try:
        if sock is None:
            sock = socket.create_connection(("127.0.0.1", a.port), timeout=a.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(max(0.001, deadline - clk()))
        req = (resp(b"SET", b"probe:seq", str(seq).encode()) if a.write else b"") + READ
        sock.sendall(req)
        rd = Reader(sock, deadline)
        if a.write:
            w = rd.reply()
            if w != "OK":
                raise Fail("PROTO")
        server = identify(rd.reply())
        outcome = "ok"
    except socket.timeout:
        outcome = "timeout"
    except Fail as e:
        outcome = str(e)
    except OSError as e:
        outcome = type(e).__name__
    if sock is not None and (outcome != "ok" or a.mode == "newconn"):
        try:
            sock.close()
        except OSError:
            pass
        sock = None
    te = clk()
    events.append((round(ts - t0, 5), round(te - t0, 5), outcome, server))
    nxt += a.interval
    now = clk()
    if nxt < now:
        nxt = now  # no burst catch-up after a stall
    time.sleep(max(0.0, nxt - now))
stop.set()
time.sleep(0.05)


# ---- summary ---------------------------------------------------------------------------
before = [e for e in events if e[1] <= t_kill and e[2] == "ok"]
after = [e for e in events if e[0] >= t_kill - 1e-9 or e[1] > t_kill]
last_ok_before = before[-1][1] if before else None
first_backup = next((e for e in after if e[2] == "ok" and e[3] == "backup"), None)
fails = [e for e in after if e[2] != "ok"]
fails_before_backup = [e for e in fails if first_backup is None or e[0] < first_backup[0]]
ok_after = [e for e in after if e[2] == "ok"]
fails_before_kill = [e for e in events if e[1] <= t_kill and e[2] != "ok"]


def first_transition(pred):
    return next((t for t, k, v in transitions if t >= t_kill and pred(k, v)), None)


mark_down = first_check_fail = switch = None
if a.sock:
    mark_down = first_transition(lambda k, v: k == "be_redis/primary" and str(v).startswith("DOWN"))
    first_check_fail = first_transition(lambda k, v: k == "be_redis/primary" and v != "UP")
    switch = mark_down
if a.api:
    initial = next((v for t, k, v in transitions if k == "active"), None)
    switch = first_transition(lambda k, v: k == "active" and v != initial)
kinds = {}
for e in fails:
    kinds[e[2]] = kinds.get(e[2], 0) + 1


def ms(t):
    return None if t is None else round((t - t_kill) * 1000, 1)


res = {
    "label": a.label, "mode": a.mode, "signal": a.signal, "identify": a.identify, "write": a.write,
    "timeout_s": a.timeout, "interval_s": a.interval,
    "t_kill_s": round(t_kill, 4),
    "dead_after_kill_ms": ms(t_dead),
    "check_fail_first_seen_ms": ms(first_check_fail),
    "marked_down_ms": ms(mark_down),
    "switch_seen_ms": ms(switch),
    "first_backup_reply_ms": None if first_backup is None else ms(first_backup[1]),
    "first_backup_req_sent_ms": None if first_backup is None else ms(first_backup[0]),
    "first_backup_req_latency_ms": None if first_backup is None else round((first_backup[1] - first_backup[0]) * 1000, 1),
    "gap_last_ok_to_first_backup_ms": None if (first_backup is None or last_ok_before is None)
    else round((first_backup[1] - last_ok_before) * 1000, 1),
    "failed_requests_total": len(fails),
    "failed_before_backup": len(fails_before_backup),
    "failed_before_kill": len(fails_before_kill),
    "failed_kinds": kinds,
    "first_fail_ms": None if not fails else ms(fails[0][0]),
    "last_fail_end_ms": None if not fails else ms(fails[-1][1]),
    "ok_after_kill_primary": sum(1 for e in ok_after if e[3] == "primary"),
    "ok_after_kill_backup": sum(1 for e in ok_after if e[3] == "backup"),
    "ok_after_kill_other": sum(1 for e in ok_after if e[3] not in ("primary", "backup")),
    "ok_after_backup_from_primary": 0 if first_backup is None else
    sum(1 for e in ok_after if e[3] == "primary" and e[0] > first_backup[0]),
    "requests_total": len(events),
    "max_ok_latency_after_kill_ms": round(max((e[1] - e[0] for e in ok_after), default=0) * 1000, 1),
    "slow_ok_after_kill_100ms": sum(1 for e in ok_after if e[1] - e[0] > 0.1),
    "control_max_latency_ms": None if not control else
    round(max((l for t, l in control if l is not None), default=0) * 1000, 1),
    "control_slow_100ms": sum(1 for t, l in control if l is None or l > 0.1),
    "transitions": [(ms(t), k, v) for t, k, v in transitions if t >= t_kill - 0.01],
}
if a.events_out:
    with open(a.events_out, "w") as f:
        json.dump({"t_kill": t_kill, "events": events, "transitions": transitions}, f)
if a.signal == "stop":
    try:
        os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        pass
print(json.dumps(res))
sys.exit(0)
