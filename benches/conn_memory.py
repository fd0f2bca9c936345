#!/usr/bin/env python3
"""Client and report for benches/conn_memory.sh (Python 3 stdlib only, asyncio).

Subcommands:
  probe --proto P --port PORT [--timeout S]
        until one request through PORT gets the right reply (exit 0), or TIMEOUT_S (exit 1)
  hold --proto P --port PORT --pid PID --conns N --idle-kb KB --out JSON [--batch B]
       [--settle S] [--after-close S] [--interval S]
        open N connections in batches of B (default 500), each sends one request and reads
        its reply (verified); with all N open and idle, sample the proxy's VmRSS; close
        them all and sample VmRSS every INTERVAL (0.5) s for AFTER_CLOSE (12) s
  outage --port PORT --pid PID --conns N --idle-kb KB --ready FILE --go FILE --out JSON
         [--batch B] [--reply-timeout S] [--go-timeout S]
        (redis) with every upstream stopped: open N clients that each send PING (not waiting
        for the reply), sample VmRSS all along; write FILE READY when all are open, wait for
        the file GO (the caller restarts Redis in between), then wait up to REPLY_TIMEOUT s
        for every reply; count +PONG, error replies, EOF, resets, timeouts
  report DIR
        DIR/report.md and DIR/results.json from DIR/raw/*.json (medians over rounds)

Protocols (--proto) and their request:
  redis     PING -> +PONG
  postgres  StartupMessage (user --pg-user, database --pg-db) read up to ReadyForQuery, then
            a simple Query `SELECT 1` read up to ReadyForQuery (one DataRow, no ErrorResponse)
  http      GET --http-path HTTP/1.1 (keep-alive), full response read, 200 expected
"""
import argparse
import asyncio
import errno
import glob
import json
import os
import resource
import socket
import statistics
import struct
import sys
import time


# --------------------------------------------------------------------------- /proc
# VmRSS and VmHWM of PID in kB ({} if the process is gone): benchlib's.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import rss as rss_kb  # noqa: E402


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --------------------------------------------------------------------------- protocols
class ReplyError(Exception):
    """A reply that is not the expected one (the text says what came instead)."""


async def recv_some(loop, s):
    d = await loop.sock_recv(s, 65536)
    if not d:
        raise EOFError("EOF")
    return d


async def redis_request(loop, s, _a):
    await loop.sock_sendall(s, b"*1\r\n$4\r\nPING\r\n")
    buf = b""
    while b"\r\n" not in buf:
        buf += await recv_some(loop, s)
    line = buf.split(b"\r\n", 1)[0]
    if line != b"+PONG":
        raise ReplyError(line[:120].decode(errors="replace"))


def pg_startup(user, db):
    body = struct.pack("!i", 196608)
    for k, v in (("user", user), ("database", db), ("application_name", "conn_memory")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


async def pg_read_until_ready(loop, s, buf):
    """Read backend messages up to ReadyForQuery; returns (types seen, rest of buffer)."""
    types = []
    while True:
        while len(buf) >= 5:
            t = buf[0:1]
            (n,) = struct.unpack("!i", buf[1:5])
            if len(buf) < 1 + n:
                break
            body, buf = buf[5:1 + n], buf[1 + n:]
            types.append(t)
            if t == b"E":
                fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
                raise ReplyError("ErrorResponse " + (fields.get(b"C", b"") + b" " + fields.get(b"M", b""))
                                 .decode(errors="replace")[:160])
            if t == b"R":
                (code,) = struct.unpack("!i", body[:4])
                if code != 0:
                    raise ReplyError(f"authentication request {code} (trust expected)")
            if t == b"Z":
                return types, buf
        buf += await recv_some(loop, s)


async def pg_request(loop, s, a):
    await loop.sock_sendall(s, pg_startup(a.pg_user, a.pg_db))
    types, buf = await pg_read_until_ready(loop, s, b"")
    if b"R" not in types:
        raise ReplyError(f"no AuthenticationOk before ReadyForQuery: {types}")
    q = b"SELECT 1\0"
    await loop.sock_sendall(s, b"Q" + struct.pack("!i", len(q) + 4) + q)
    types, buf = await pg_read_until_ready(loop, s, buf)
    if types.count(b"D") != 1:
        raise ReplyError(f"SELECT 1: {types.count(b'D')} DataRow(s), messages {types}")


async def http_request(loop, s, a):
    req = (f"GET {a.http_path} HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
           "User-Agent: conn_memory\r\nAccept: */*\r\n\r\n").encode()
    await loop.sock_sendall(s, req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += await recv_some(loop, s)
        if len(buf) > 65536:
            raise ReplyError("response head over 64 KiB")
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ")
    hdr = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdr[k.strip().lower()] = v.strip()
    if len(status) < 2 or status[1] != "200":
        raise ReplyError(lines[0][:120])
    if hdr.get("connection", "").lower() == "close":
        raise ReplyError("Connection: close in a keep-alive response")
    if "content-length" in hdr:
        n = int(hdr["content-length"])
        while len(body) < n:
            body += await recv_some(loop, s)
        body = body[:n]
    elif hdr.get("transfer-encoding", "").lower() == "chunked":
        out = b""
        while True:
            while b"\r\n" not in body:
                body += await recv_some(loop, s)
            size_line, body = body.split(b"\r\n", 1)
            n = int(size_line.split(b";")[0], 16)
            while len(body) < n + 2:
                body += await recv_some(loop, s)
            out, body = out + body[:n], body[n + 2:]
            if n == 0:
                break
        body = out
    else:
        raise ReplyError("no Content-Length and not chunked")
    if a.http_len is not None and len(body) != a.http_len:
        raise ReplyError(f"body {len(body)} bytes, {a.http_len} expected")


REQUESTS = {"redis": redis_request, "postgres": pg_request, "http": http_request}


def classify(e):
    if isinstance(e, ReplyError):
        return "bad_reply"
    if isinstance(e, EOFError):
        return "eof"
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE):
        return "client_fd_limit"
    if isinstance(e, OSError):
        return "oserror_" + (errno.errorcode.get(e.errno, str(e.errno)) if e.errno else "other")
    return type(e).__name__


async def connect(loop, port, timeout):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.wait_for(loop.sock_connect(s, ("127.0.0.1", port)), timeout)
    except BaseException:
        s.close()
        raise
    return s


class Failures:
    def __init__(self):
        self.kinds = {}
        self.examples = {}

    def add(self, kind, text):
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.examples.setdefault(kind, text[:200])

    @property
    def total(self):
        return sum(self.kinds.values())


# --------------------------------------------------------------------------- probe
async def probe(a):
    loop = asyncio.get_running_loop()
    end = time.monotonic() + a.timeout
    last = None
    while time.monotonic() < end:
        s = None
        try:
            s = await connect(loop, a.port, 2)
            await asyncio.wait_for(REQUESTS[a.proto](loop, s, a), 5)
            return 0
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = f"{classify(e)}: {e}"
        finally:
            if s is not None:
                s.close()
        await asyncio.sleep(0.2)
    print(f"{a.proto} on {a.port}: no good reply after {a.timeout}s; last: {last}", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------- hold
async def hold(a):
    loop = asyncio.get_running_loop()
    limit = raise_nofile()
    rec = {"proto": a.proto, "port": a.port, "pid": a.pid, "conns_requested": a.conns, "batch": a.batch,
           "client_nofile": limit, "idle_kb": a.idle_kb, **json.loads(a.meta)}
    rec["rss_before_open_kb"] = rss_kb(a.pid).get("VmRSS")
    socks = []
    fails = Failures()
    req = REQUESTS[a.proto]

    async def one():
        s = None
        try:
            s = await connect(loop, a.port, a.timeout)
            await asyncio.wait_for(req(loop, s, a), a.timeout)
            socks.append(s)
        except Exception as e:  # noqa: BLE001 - every failure is counted by kind
            fails.add(classify(e), f"{type(e).__name__}: {e}")
            if s is not None:
                s.close()

    t0 = time.monotonic()
    for i in range(0, a.conns, a.batch):
        await asyncio.gather(*(one() for _ in range(min(a.batch, a.conns - i))))
    rec["open_s"] = round(time.monotonic() - t0, 2)
    rec["conns_ok"] = len(socks)
    rec["failures"] = fails.total
    rec["failure_kinds"] = fails.kinds
    rec["failure_examples"] = fails.examples
    await asyncio.sleep(a.settle)
    samples = []
    for _ in range(5):
        samples.append(rss_kb(a.pid).get("VmRSS"))
        await asyncio.sleep(0.5)
    rec["rss_conns_samples_kb"] = samples
    good = [x for x in samples if x is not None]
    rec["rss_conns_kb"] = int(statistics.median(good)) if good else None
    rec["proxy_fds_with_conns"] = open_fds(a.pid)
    # A connection the proxy closed while idle: read EOF/reset on a non-blocking socket.
    closed_idle = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                closed_idle += 1
        except BlockingIOError:
            pass
        except OSError:
            closed_idle += 1
    rec["closed_by_proxy_while_idle"] = closed_idle
    if rec["rss_conns_kb"] is not None and a.idle_kb and socks:
        rec["kib_per_conn"] = round((rec["rss_conns_kb"] - a.idle_kb) / len(socks), 3)
    # close all, then sample every interval
    tc = time.monotonic()
    for s in socks:
        s.close()
    rec["close_s"] = round(time.monotonic() - tc, 3)
    series = []
    n = int(round(a.after_close / a.interval))
    for k in range(n + 1):
        target = tc + k * a.interval
        d = target - time.monotonic()
        if d > 0:
            await asyncio.sleep(d)
        series.append([round(k * a.interval, 1), rss_kb(a.pid).get("VmRSS")])
    rec["rss_after_close_kb"] = series
    lim = 1.2 * a.idle_kb if a.idle_kb else None
    rec["s_to_within_1_2x_idle"] = next((t for t, v in series if lim and v is not None and v <= lim), None)
    rec["rss_10s_after_close_kb"] = next((v for t, v in series if t == 10.0), None)
    rec["proxy_fds_after_close"] = open_fds(a.pid)
    rec["proxy_hwm_kb"] = rss_kb(a.pid).get("VmHWM")
    rec["proxy_alive_at_end"] = bool(rss_kb(a.pid))
    with open(a.out, "w") as f:
        json.dump(rec, f, indent=1)
    print(json.dumps({k: rec.get(k) for k in ("proto", "conns_ok", "failures", "failure_kinds", "open_s",
                                               "rss_conns_kb", "kib_per_conn", "rss_10s_after_close_kb",
                                               "s_to_within_1_2x_idle")}))
    return 0


# --------------------------------------------------------------------------- outage
async def outage(a):
    loop = asyncio.get_running_loop()
    limit = raise_nofile()
    rec = {"proto": "redis", "port": a.port, "pid": a.pid, "conns_requested": a.conns, "batch": a.batch,
           "client_nofile": limit, "idle_kb": a.idle_kb, **json.loads(a.meta)}
    outcomes = {}
    examples = {}
    pong_at = []
    state = {"go": None}
    peak = {"rss": 0, "t": None}
    t0 = time.monotonic()
    done = asyncio.Event()
    socks = []

    async def sampler():
        while not done.is_set():
            v = rss_kb(a.pid).get("VmRSS")
            if v and v > peak["rss"]:
                peak["rss"], peak["t"] = v, round(time.monotonic() - t0, 2)
            try:
                await asyncio.wait_for(done.wait(), 0.25)
            except asyncio.TimeoutError:
                pass

    def note(kind, text=""):
        outcomes[kind] = outcomes.get(kind, 0) + 1
        if text:
            examples.setdefault(kind, text[:200])

    async def reader(s):
        buf = b""
        try:
            while b"\r\n" not in buf:
                buf += await recv_some(loop, s)
            line = buf.split(b"\r\n", 1)[0]
            if line == b"+PONG":
                note("pong_before_restart" if state["go"] is None else "pong")
                if state["go"] is not None:
                    pong_at.append(time.monotonic() - state["go"])
            else:
                note("error_reply", line.decode(errors="replace"))
        except asyncio.CancelledError:
            note("timeout")
        except Exception as e:  # noqa: BLE001 - counted by kind
            note(classify(e) + ("_before_restart" if state["go"] is None else ""), f"{type(e).__name__}: {e}")
        finally:
            s.close()

    async def one():
        s = None
        try:
            s = await connect(loop, a.port, 10)
            await loop.sock_sendall(s, b"*1\r\n$4\r\nPING\r\n")
        except Exception as e:  # noqa: BLE001
            note("connect_or_send_" + classify(e), f"{type(e).__name__}: {e}")
            if s is not None:
                s.close()
            return None
        return asyncio.ensure_future(reader(s))

    samp = asyncio.ensure_future(sampler())
    readers = []
    for i in range(0, a.conns, a.batch):
        rs = await asyncio.gather(*(one() for _ in range(min(a.batch, a.conns - i))))
        readers += [r for r in rs if r is not None]
    rec["open_s"] = round(time.monotonic() - t0, 2)
    rec["clients_sent_ping"] = len(readers)
    await asyncio.sleep(a.settle)
    rec["pending_at_ready"] = sum(1 for r in readers if not r.done())
    rec["outcomes_at_ready"] = dict(outcomes)
    rec["rss_held_kb"] = rss_kb(a.pid).get("VmRSS")
    rec["proxy_fds_held"] = open_fds(a.pid)
    with open(a.ready + ".tmp", "w") as f:
        json.dump({"pending": rec["pending_at_ready"], "rss_held_kb": rec["rss_held_kb"]}, f)
    os.rename(a.ready + ".tmp", a.ready)
    gend = time.monotonic() + a.go_timeout
    while not os.path.exists(a.go) and time.monotonic() < gend:
        await asyncio.sleep(0.05)
    state["go"] = time.monotonic()
    rec["go_seen"] = os.path.exists(a.go)
    try:
        rec.update(json.load(open(a.go)))
    except (OSError, ValueError):
        pass
    pending = [r for r in readers if not r.done()]
    if pending:
        _, late = await asyncio.wait(pending, timeout=a.reply_timeout)
        for r in late:
            r.cancel()
        if late:
            await asyncio.wait(late)
    done.set()
    await samp
    rec["outcomes"] = outcomes
    rec["examples"] = examples
    rec["pong"] = outcomes.get("pong", 0) + outcomes.get("pong_before_restart", 0)
    rec["not_served"] = a.conns - rec["pong"]
    rec["rss_peak_kb"] = peak["rss"]
    rec["rss_peak_at_s"] = peak["t"]
    rec["proxy_hwm_kb"] = rss_kb(a.pid).get("VmHWM")
    if a.idle_kb and rec["clients_sent_ping"]:
        rec["kib_per_held_client"] = round((peak["rss"] - a.idle_kb) / rec["clients_sent_ping"], 3)
    if pong_at:
        pong_at.sort()
        rec["first_pong_after_restart_s"] = round(pong_at[0], 3)
        rec["last_pong_after_restart_s"] = round(pong_at[-1], 3)
    rec["rss_after_kb"] = rss_kb(a.pid).get("VmRSS")
    rec["proxy_alive_at_end"] = bool(rss_kb(a.pid))
    with open(a.out, "w") as f:
        json.dump(rec, f, indent=1)
    print(json.dumps({k: rec.get(k) for k in ("clients_sent_ping", "pong", "outcomes", "rss_held_kb",
                                               "rss_peak_kb", "kib_per_held_client", "last_pong_after_restart_s")}))
    return 0


# --------------------------------------------------------------------------- report
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    return "-" if x is None else f"{x:,.{nd}f}"


def mb(kb, nd=1):
    return None if kb is None else round(kb / 1024, nd)


def cellr(xs, nd=1, scale=1.0):
    """median [min-max] over rounds"""
    xs = [x * scale for x in xs if x is not None]
    if not xs:
        return "-"
    m = statistics.median(xs)
    if len(xs) == 1 or min(xs) == max(xs):
        return fmt(m, nd)
    return f"{fmt(m, nd)} [{fmt(min(xs), nd)}-{fmt(max(xs), nd)}]"


PROTO_REQ = {"redis": "PING -> +PONG",
             "postgres": "StartupMessage to ReadyForQuery, then Query `SELECT 1` to ReadyForQuery (through pgbouncer)",
             "http": "`GET /` HTTP/1.1 keep-alive, 1 KiB body read whole (nginx upstream)"}
TARGET_ORDER = ("continuity", "haproxy")
KIB_TARGET = 4.0
# continuity's service with `multiplex = true` (--redis-multiplex, --pg-multiplex): what it means here
MUX_TEXT = {"redis": "its clients share one upstream connection to Redis",
            "postgres": "continuity answers each client's startup itself and the clients' statements share "
                        "its `multiplex_connections` (default 4) connections to pgbouncer"}


def cont_mux(params, proto):
    """Was continuity's PROTO service multiplexed in this run? params.json says so since
    --pg-multiplex; older runs only had --redis-multiplex, seen in the command."""
    m = params.get("continuity_multiplex")
    if m is not None:
        return bool(m.get(proto))
    return proto == "redis" and "--redis-multiplex" in (params.get("command") or "")


def mode_text(params, proto):
    if proto not in MUX_TEXT:
        return None
    if cont_mux(params, proto):
        return f"continuity's {proto} service has `multiplex = true` (docs/multiplex.md): {MUX_TEXT[proto]}."
    return f"continuity's {proto} service relays (no `multiplex`): one upstream connection per client, as with HAProxy."


def tlabel(params, t, proto):
    return "continuity (multiplex)" if t == "continuity" and cont_mux(params, proto) else t


def report(d):
    params = json.load(open(os.path.join(d, "params.json")))
    machine = {}
    if os.path.exists(os.path.join(d, "machine.json")):
        machine = json.load(open(os.path.join(d, "machine.json")))
    runs = []
    for fn in sorted(glob.glob(os.path.join(d, "raw", "*.json"))):
        r = json.load(open(fn))
        if "phase" in r:
            runs.append(r)
    out = ["# Per-connection memory: continuity vs HAProxy", ""]
    if machine:
        out.append(f"Machine: {machine.get('cpu')}, nproc {machine.get('nproc')}, kernel {machine.get('kernel')}; "
                   f"{machine.get('haproxy')}; {machine.get('redis_server', '')}; started {machine.get('date_utc')}, "
                   f"loadavg at start {machine.get('loadavg')}.")
        if machine.get("continuity_bin"):
            out.append(f"continuity: {machine.get('continuity_bin')}, built {machine.get('continuity_bin_mtime')} "
                       f"(sha256 {machine.get('continuity_sha256', '?')}...), git HEAD {machine.get('git_head')}.")
        out.append("")
    n = params["conns"]
    out.append(f"Command: `{params.get('command')}`")
    out.append("")
    out.append(f"Connections per run: **{n}**" +
               (f" (asked for {params['conns_requested']}: cut to what the fd limit "
                f"`ulimit -n` = {params['nofile']} allows, a proxied connection costing the proxy two fds)"
                if params.get("conns_requested") != n else "") +
               f"; opened {params.get('batch')} at a time; rounds {params.get('rounds')} (median [min-max] when > 1). "
               "RSS = VmRSS of the proxy process (continuity: one process; HAProxy: one process, nbthread 2). "
               "Idle RSS = 3 s after start, also the level the after-close figures compare with. "
               "KiB/conn = (RSS with the connections open, idle - idle RSS) / connections that got their reply.")
    out.append("")
    summary = {"params": params, "protocols": {}, "outage": {}}
    for proto in params["protocols"]:
        rs = [r for r in runs if r["phase"] == "hold" and r["proto"] == proto]
        if not rs:
            continue
        out.append(f"## {proto}: {PROTO_REQ[proto]}")
        out.append("")
        if mode_text(params, proto):
            out.append("Mode: " + mode_text(params, proto))
            out.append("")
        out.append("| target | idle RSS MB | RSS with N idle conns MB | KiB per conn | RSS 10 s after close MB | "
                   "s to within 1.2x idle | failures | closed by proxy while idle |")
        out.append("|---|---|---|---|---|---|---|---|")
        summary["protocols"][proto] = {}
        for t in TARGET_ORDER:
            tr = [r for r in rs if r["target"] == t]
            if not tr:
                continue
            never = sum(1 for r in tr if r.get("s_to_within_1_2x_idle") is None)
            fk = {}
            for r in tr:
                for k, v in (r.get("failure_kinds") or {}).items():
                    fk[k] = fk.get(k, 0) + v
            fails = sum(r.get("failures", 0) for r in tr)
            out.append(
                f"| {tlabel(params, t, proto)} | {cellr([r.get('idle_kb') for r in tr], 1, 1 / 1024)} | "
                f"{cellr([r.get('rss_conns_kb') for r in tr], 1, 1 / 1024)} | "
                f"{cellr([r.get('kib_per_conn') for r in tr], 2)} | "
                f"{cellr([r.get('rss_10s_after_close_kb') for r in tr], 1, 1 / 1024)} | "
                f"{cellr([r.get('s_to_within_1_2x_idle') for r in tr], 1)}"
                f"{f' (not within 12 s in {never} run(s))' if never else ''} | "
                f"{fails}{' ' + json.dumps(fk) if fk else ''} | "
                f"{sum(r.get('closed_by_proxy_while_idle', 0) for r in tr)} |")
            summary["protocols"][proto][t] = {
                "runs": len(tr), "multiplex": t == "continuity" and cont_mux(params, proto),
                "idle_kb": med([r.get("idle_kb") for r in tr]),
                "rss_conns_kb": med([r.get("rss_conns_kb") for r in tr]),
                "kib_per_conn": med([r.get("kib_per_conn") for r in tr]),
                "rss_10s_after_close_kb": med([r.get("rss_10s_after_close_kb") for r in tr]),
                "s_to_within_1_2x_idle": med([r.get("s_to_within_1_2x_idle") for r in tr]),
                "runs_not_within_1_2x_in_12s": never,
                "failures": fails, "failure_kinds": fk,
                "conns_ok": [r.get("conns_ok") for r in tr],
            }
        out.append("")
        for r in sorted(rs, key=lambda r: (TARGET_ORDER.index(r["target"]), r["round"])):
            ser = " ".join(fmt(mb(v), 1) for _, v in r.get("rss_after_close_kb", []))
            out.append(f"- {r['target']} r{r['round']}: RSS (MB) every 0.5 s from close to 12 s: {ser}"
                       f" (1.2x idle = {fmt(mb(1.2 * r['idle_kb']), 1)}; {r.get('conns_ok')} conns open in "
                       f"{r.get('open_s')} s; peak VmHWM {fmt(mb(r.get('proxy_hwm_kb')), 1)} MB)")
        c = summary["protocols"][proto].get("continuity")
        if c:
            ok_kib = c["kib_per_conn"] is not None and c["kib_per_conn"] <= KIB_TARGET
            ok_back = c["s_to_within_1_2x_idle"] is not None and c["s_to_within_1_2x_idle"] <= 10 and not \
                c["runs_not_within_1_2x_in_12s"]
            out.append("")
            out.append(f"Issue targets (continuity, {proto}{', multiplex' if cont_mux(params, proto) else ''}): <= {KIB_TARGET:g} KiB per idle connection: "
                       f"{'**met**' if ok_kib else '**NOT met**'} ({fmt(c['kib_per_conn'], 2)}); RSS within 1.2x "
                       f"idle within 10 s of close: {'**met**' if ok_back else '**NOT met**'}; failures "
                       f"{c['failures']}.")
            c["kib_target_met"], c["back_within_10s_met"] = ok_kib, ok_back
        out.append("")
    orr = [r for r in runs if r["phase"] == "outage"]
    if orr:
        out.append(f"## Outage: every Redis upstream stopped, {n} clients each send PING, Redis restarted on "
                   "the same port")
        out.append("")
        out.append("continuity: redis service " + ("with `multiplex = true`, " if cont_mux(params, "redis") else "")
                   + "with no `fallback` (memory fallback off), "
                   f"`buffer_timeout_ms = {params.get('buffer_timeout_ms')}`: it holds the clients and serves "
                   "them once the upstream is back. HAProxy: what its clients got (same backend, "
                   "`check inter 2s fall 3 rise 2`, retries 3). Peak RSS sampled every 0.25 s from the first "
                   "client to the last reply; KiB per held client = (peak - idle) / clients.")
        out.append("")
        out.append("| target | idle RSS MB | RSS all clients in MB | peak RSS MB | KiB per held client | clients | "
                   "Redis down s | +PONG | error replies | EOF | resets | timeouts | other | "
                   "last +PONG s after restart |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for t in TARGET_ORDER:
            tr = [r for r in orr if r["target"] == t]
            if not tr:
                continue
            oc = {}
            for r in tr:
                for k, v in r.get("outcomes", {}).items():
                    oc[k] = oc.get(k, 0) + v
            def cnt(*keys):
                return sum(v for k, v in oc.items() if any(k.startswith(x) for x in keys))
            known = ("pong", "error_reply", "eof", "reset", "timeout")
            other = {k: v for k, v in oc.items() if not k.startswith(known)}
            cs = [r.get("clients_sent_ping") for r in tr]
            out.append(
                f"| {tlabel(params, t, 'redis')} | {cellr([r.get('idle_kb') for r in tr], 1, 1 / 1024)} | "
                f"{cellr([r.get('rss_held_kb') for r in tr], 1, 1 / 1024)} | "
                f"{cellr([r.get('rss_peak_kb') for r in tr], 1, 1 / 1024)} | "
                f"{cellr([r.get('kib_per_held_client') for r in tr], 2)} | {cellr(cs, 0)} | "
                f"{cellr([r.get('redis_down_s') for r in tr], 1)} | {cnt('pong')} | {cnt('error_reply')} | {cnt('eof')} | {cnt('reset')} | {cnt('timeout')} | "
                f"{sum(other.values())}{' ' + json.dumps(other) if other else ''} | "
                f"{cellr([r.get('last_pong_after_restart_s') for r in tr], 2)} |")
            summary["outage"][t] = {"runs": len(tr), "outcomes": oc,
                                    "multiplex": t == "continuity" and cont_mux(params, "redis"),
                                    "idle_kb": med([r.get("idle_kb") for r in tr]),
                                    "rss_held_kb": med([r.get("rss_held_kb") for r in tr]),
                                    "rss_peak_kb": med([r.get("rss_peak_kb") for r in tr]),
                                    "kib_per_held_client": med([r.get("kib_per_held_client") for r in tr]),
                                    "pong": cnt("pong"), "clients": sum(x or 0 for x in cs),
                                    "last_pong_after_restart_s": med([r.get("last_pong_after_restart_s")
                                                                      for r in tr])}
        out.append("")
        for r in orr:
            ex = r.get("examples") or {}
            if ex:
                out.append(f"- {r['target']} r{r['round']}: outcomes {json.dumps(r.get('outcomes'))}; examples "
                           + "; ".join(f"{k}: `{v}`" for k, v in ex.items()))
        c = summary["outage"].get("continuity")
        if c:
            all_served = c["pong"] == n * c["runs"]
            in_bound = c["kib_per_held_client"] is not None and c["kib_per_held_client"] <= KIB_TARGET
            out.append("")
            out.append(f"Issue targets (continuity, outage{', multiplex' if cont_mux(params, 'redis') else ''}): all {n} held clients served on recovery: "
                       f"{'**met**' if all_served else '**NOT met**'} ({c['pong']} +PONG over {c['runs']} run(s)); "
                       f"within {KIB_TARGET:g} KiB per held client: {'**met**' if in_bound else '**NOT met**'} "
                       f"({fmt(c['kib_per_held_client'], 2)}).")
            c["all_served"], c["kib_target_met"] = all_served, in_bound
        out.append("")
    notes = params.get("notes") or []
    if notes:
        out.append("Notes:")
        out += [f"- {x}" for x in notes]
        out.append("")
    summary["machine"] = machine
    summary["runs"] = runs
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    text = "\n".join(out)
    with open(os.path.join(d, "report.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    return 0


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p):
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--pg-user", default="postgres")
        p.add_argument("--pg-db", default="bench")
        p.add_argument("--http-path", default="/")
        p.add_argument("--http-len", type=int, default=None, help="expected body length (default: any)")
        p.add_argument("--meta", default="{}", help="JSON merged into the record (phase, target, round)")

    p = sub.add_parser("probe")
    common(p)
    p.add_argument("--proto", choices=REQUESTS, required=True)
    p.add_argument("--timeout", type=float, default=20)
    p = sub.add_parser("hold")
    common(p)
    p.add_argument("--proto", choices=REQUESTS, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--conns", type=int, required=True)
    p.add_argument("--idle-kb", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--timeout", type=float, default=15, help="per connection: connect, and request to reply")
    p.add_argument("--settle", type=float, default=2)
    p.add_argument("--after-close", type=float, default=12)
    p.add_argument("--interval", type=float, default=0.5)
    p = sub.add_parser("outage")
    common(p)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--conns", type=int, required=True)
    p.add_argument("--idle-kb", type=int, required=True)
    p.add_argument("--ready", required=True)
    p.add_argument("--go", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--settle", type=float, default=1)
    p.add_argument("--go-timeout", type=float, default=60)
    p.add_argument("--reply-timeout", type=float, default=40)
    p = sub.add_parser("report")
    p.add_argument("dir")
    a = ap.parse_args()
    if a.cmd == "report":
        return report(a.dir)
    return asyncio.run({"probe": probe, "hold": hold, "outage": outage}[a.cmd](a))


if __name__ == "__main__":
    sys.exit(main())
