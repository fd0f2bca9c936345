#!/usr/bin/env python3
"""Issue #17 ([cluster]): failover time to the last engine, and the cost of [cluster]
on the request path (Python 3 stdlib only; run through benches/cluster_failover.sh).

Part `cluster` (--trials N, default 10): a 3-member etcd 3.4 cluster on loopback (one
for the whole run; --heartbeat-interval 50 --election-timeout 500, data dirs in the work
dir), and per trial a fresh Redis primary + replica (--save '' --appendonly no, replica
with --replicaof) and 3 fresh continuity engines (own control and proxy ports, one
`[cluster]` with a new cluster_name per trial, lease_ttl_seconds left at its default,
`on_failover = "promote"`, [health] check_interval_seconds 0.1, failure_threshold 2,
connect_timeout_ms 100, hold_down_seconds 1). Once every engine's GET /api/ops/cluster
shows connected, 3 members, a leader, the agreed route `serving` on r1 and every view
with both upstreams up, and the replica's master_link_status is up, one poller per
engine opens a new TCP connection to that engine's proxy every --interval s (5 ms),
sends `SET bench:probe N` + `INFO server` pipelined and reads `tcp_port:` (primary or
replica) and whether the write succeeded. After --warm s the primary is SIGKILLed
(t0 = right after os.kill; the script then waits until every thread of it has exited
and checks that its port refuses connections). Per engine: the first reply from the
replica's tcp_port (and the first with the write accepted, i.e. promoted). Trial
figure = max over engines - t0. Also: failed requests per engine, cmdstat_replicaof
on the replica (must be 1), the final epochs from /api/ops/cluster (must be equal).

Part `standalone` (--standalone-trials N, default 5): the same trial with one engine
and no `[cluster]`.

Parts `cluster-api` and `standalone-api` (--api-trials N, default 5): the same trials without
client traffic during the failover (client traffic gives every engine passive evidence within
a few ms of the death); each engine's GET /api/ops/failover/status is polled instead (one
keep-alive connection, every --interval s) and its time is the first `active_upstream = r2`;
then one SET + INFO through each engine checks that the promoted replica serves.

Part `cluster-leaderkill` (--leaderkill-trials N, default 5): as `cluster`, but the engine that
leads the service is SIGKILLed just before the primary; the figures are the two others' (the
new leader can only be elected when the dead one's lease expires).

Every trial also reads the engines' logs (first `new=Down`, `cluster: decided`, `switched
upstream`, `not connected to etcd`) and audit logs (the `cluster_decision` evidence: when each
view was written; `failover_activated` entries), and measures the machine's busy and foreign
CPU (CPU used by processes that are not this benchmark's). --wait-quiet S waits up to S s for
a quiet second before each trial and each redis-benchmark run; --repeat-noisy N repeats a
request-path round whose runs had >= --max-foreign % foreign CPU.

Part `requestpath` (--rounds N, default 3): one engine with `[cluster]` (connected,
alone in its cluster) and one without, same binary, same Redis primary (kept alive),
alternated (ABBA), plus direct to Redis:
`redis-benchmark -h 127.0.0.1 -p PORT -c 50 -n 100000 -t set,get -q --csv`.
Median req/s, the ratio cluster/standalone, the engines' CPU per request, loadavg.

Output in --out: report.md, failover.jsonl (one record per trial), requestpath.jsonl
(one per redis-benchmark run), params.json, machine.json, idle_cpu.json,
requestpath_cluster_sessions.json, trials/ (configs, engine logs and data dirs with their
audit logs, redis logs, per-request events) and etcd/ (member logs). `--report DIR` rebuilds DIR/report.md. Every process started is
stopped by PID at the end or on error; their PIDs (with start times) are also written
to WORK/pids so the shell wrapper's EXIT trap can stop them if this script dies hard.
"""
import argparse
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH_DIR)
sys.dont_write_bytecode = True  # no __pycache__ in benches/
sys.path.insert(0, BENCH_DIR)
import benchlib as bl  # noqa: E402

clk = time.perf_counter
SERVICE = "redis"
ENGINE_NAMES = ["engine-a", "engine-b", "engine-c"]


def log(msg):
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------- processes
def _starttime(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()[0]
        return st not in ("Z", "X")
    except OSError:
        return False


class Procs:
    """Every daemon this script starts; stopped by PID, newest first."""

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.procs = []  # [name, Popen, logfile handle]

    def start(self, name, argv, logpath, env=None):
        fh = open(logpath, "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                             env=env, start_new_session=True)
        self.procs.append([name, p, fh])
        with open(self.pidfile, "a") as f:
            f.write(f"{p.pid} {_starttime(p.pid) or '-'} {name}\n")
        return p

    def stop(self, p, grace=5.0, sig=signal.SIGTERM):
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"WARNING: PID {p.pid} ignored {signal.Signals(sig).name} for {grace}s; SIGKILL")
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        for e in list(self.procs):
            if e[1] is p:
                e[2].close()
                self.procs.remove(e)

    def stop_all(self):
        for name, p, fh in list(reversed(self.procs)):
            self.stop(p, grace=5.0)


# --------------------------------------------------------------------------- RESP / HTTP
def resp(*args):
    args = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in args)


class RespErr(str):
    pass


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
            raise EOFError()
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
            return RespErr(head[1:].decode(errors="replace"))
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
        raise ValueError("PROTO")


def redis_info(port, section, timeout=2.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(resp("INFO", section))
        return Reader(s, clk() + timeout).reply() or ""
    finally:
        s.close()


def http_json(url, token, timeout=2.0):
    rq = urllib.request.Request(url, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(rq, timeout=timeout) as r:
        return json.load(r)


PORT_RE = re.compile(r"^tcp_port:(\d+)", re.M)


def probe_once(port, seq, timeout, write):
    """One request on a new connection: (outcome, tcp_port or None, write_ok or None)."""
    deadline = clk() + timeout
    s = None
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = (resp("SET", "bench:probe", seq) if write else b"") + resp("INFO", "server")
        s.settimeout(max(0.001, deadline - clk()))
        s.sendall(req)
        rd = Reader(s, deadline)
        wrote = None
        if write:
            w = rd.reply()
            wrote = (w == "OK")
        info = rd.reply()
        if isinstance(info, RespErr):
            return "ERR " + info.split(" ")[0], None, wrote
        m = PORT_RE.search(info or "")
        if not m:
            return "PROTO", None, wrote
        return "ok", int(m.group(1)), wrote
    except socket.timeout:
        return "timeout", None, None
    except EOFError:
        return "EOF", None, None
    except OSError as e:
        return type(e).__name__, None, None
    except ValueError:
        return "PROTO", None, None
    finally:
        if s is not None:
            try:
                s.close()
            except OSError:
                pass


def api_poller(api, token, interval, stop, events, t_base):
    """(ts, te, "ok"|error, active_upstream, epoch) from GET /api/ops/failover/status, on one
    keep-alive HTTP connection (re-opened after an error): cheap enough not to load the machine."""
    import http.client
    host, port = api.split("//", 1)[1].split(":")
    conn = None
    hdr = {"Authorization": "Bearer " + token}
    nxt = clk()
    while not stop.is_set():
        ts = clk()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, int(port), timeout=2)
            conn.request("GET", "/api/ops/failover/status", headers=hdr)
            r = conn.getresponse()
            body = json.loads(r.read())
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
            s = next((x for x in body.get("services", []) if x.get("name") == SERVICE), {})
            ev = ("ok", s.get("active_upstream"), s.get("epoch"))
        except Exception as e:  # noqa: BLE001 - record, keep polling
            ev = (type(e).__name__, None, None)
            if conn is not None:
                conn.close()
            conn = None
        te = clk()
        events.append((ts - t_base, te - t_base) + ev)
        nxt += interval
        now = clk()
        if nxt < now:
            nxt = now
        time.sleep(max(0.0, nxt - now))


def poller(port, interval, timeout, write, stop, events, t_base):
    nxt = clk()
    seq = 0
    while not stop.is_set():
        seq += 1
        ts = clk()
        outcome, p, wrote = probe_once(port, seq, timeout, write)
        te = clk()
        events.append((ts - t_base, te - t_base, outcome, p, wrote))
        nxt += interval
        now = clk()
        if nxt < now:
            nxt = now
        time.sleep(max(0.0, nxt - now))


# --------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, a):
        self.a = a
        self.out = a.out
        self.work = a.work
        self.procs = Procs(os.path.join(self.work, "pids"))
        self.used = set()
        self.etcd_endpoints = []
        self.bin = os.path.join(self.work, "continuity-bin")
        shutil.copy2(a.continuity_bin, self.bin)
        tok = subprocess.run([self.bin, "token", "new"], capture_output=True, text=True, check=True).stdout
        lines = tok.strip().splitlines()
        if len(lines) < 2 or not re.match(r'^sha256 = "[0-9a-fA-F]{64}"$', lines[1]):
            raise BenchError(f"unexpected output of 'continuity token new': {tok!r}")
        self.token, self.token_sha_line = lines[0].strip(), lines[1].strip()

    def own_ticks(self):
        """utime+stime (ticks) of every process of this benchmark that is alive, and of this script."""
        out = {p.pid: bl.proc_ticks(p.pid, children=False) for _, p, _ in self.procs.procs if p.poll() is None}
        out[os.getpid()] = bl.proc_ticks(os.getpid(), children=False)
        return {k: v for k, v in out.items() if v is not None}

    def port(self):
        p = bl.freeport(self.used)
        self.used.add(p)
        return p

    # ---- etcd
    def start_etcd(self):
        n = 3
        members = [(f"etcd{i + 1}", self.port(), self.port()) for i in range(n)]
        init = ",".join(f"{nm}=http://127.0.0.1:{pp}" for nm, _, pp in members)
        token = "bench-cluster17-%d" % os.getpid()
        ld = os.path.join(self.out, "etcd")
        os.makedirs(ld, exist_ok=True)
        for nm, cp, pp in members:
            dd = os.path.join(self.work, "etcd", nm)
            os.makedirs(dd, exist_ok=True)
            argv = [self.a.etcd, "--name", nm, "--data-dir", dd,
                    f"--listen-client-urls=http://127.0.0.1:{cp}", f"--advertise-client-urls=http://127.0.0.1:{cp}",
                    f"--listen-peer-urls=http://127.0.0.1:{pp}", f"--initial-advertise-peer-urls=http://127.0.0.1:{pp}",
                    f"--initial-cluster={init}", "--initial-cluster-state=new", f"--initial-cluster-token={token}",
                    f"--heartbeat-interval={self.a.etcd_heartbeat_ms}", f"--election-timeout={self.a.etcd_election_ms}",
                    "--logger=zap", "--log-outputs=stderr"]
            self.procs.start(f"etcd-{nm}", argv, os.path.join(ld, f"{nm}.log"))
        self.etcd_argv_example = " ".join(shlex.quote(x) for x in argv)
        self.etcd_endpoints = [f"127.0.0.1:{cp}" for _, cp, _ in members]
        end = time.time() + 30
        for ep in self.etcd_endpoints:
            while True:
                try:
                    with urllib.request.urlopen(f"http://{ep}/health", timeout=1) as r:
                        if json.load(r).get("health") == "true":
                            break
                except Exception:  # noqa: BLE001 - not yet
                    pass
                if time.time() > end:
                    raise BenchError(f"etcd {ep} not healthy after 30 s (logs in {ld})")
                time.sleep(0.1)
        log(f"etcd: 3 members healthy on {', '.join(self.etcd_endpoints)}")

    # ---- redis
    def start_redis(self, td, name, port, *extra):
        d = os.path.join(td, f"redis-{name}")
        os.makedirs(d, exist_ok=True)
        argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", d, "--daemonize", "no", "--logfile", os.path.join(d, "redis.log"),
                "--repl-diskless-sync-delay", "0", *extra]
        p = self.procs.start(f"redis-{name}", argv, os.path.join(d, "stdout.log"))
        if bl.redis_ping(port, 10) != 0:
            raise BenchError(f"redis {name} on {port} did not start (see {d}/redis.log)")
        return p

    def redis_pair(self, td):
        rp, rr = self.port(), self.port()
        prim = self.start_redis(td, "primary", rp)
        repl = self.start_redis(td, "replica", rr, "--replicaof", "127.0.0.1", str(rp))
        end = time.time() + 15
        while "master_link_status:up" not in redis_info(rr, "replication"):
            if time.time() > end:
                raise BenchError(f"replica on {rr} did not link up")
            time.sleep(0.05)
        return prim, rp, repl, rr

    # ---- engines
    def write_config(self, path, data_dir, cp, lp, rp, rr, cluster_name=None, node_id=None):
        cl = ""
        if cluster_name:
            eps = ", ".join(f'"{e}"' for e in self.etcd_endpoints)
            lease = ("" if self.a.lease_ttl is None else f"lease_ttl_seconds = {self.a.lease_ttl}\n")
            cl = (f"[cluster]\netcd_endpoints = [{eps}]\ncluster_name = \"{cluster_name}\"\n"
                  f"node_id = \"{node_id}\"\n" + (lease or "# lease_ttl_seconds: default (5)\n") + "\n")
        text = f"""# generated by benches/cluster_failover.py
data_dir = "{data_dir}"

[control]
listen = "127.0.0.1:{cp}"

[[control.token]]
name = "bench"
role = "operator"
{self.token_sha_line}

[health]
check_interval_seconds = {self.a.check_interval}
failure_threshold = {self.a.failure_threshold}
connect_timeout_ms = {self.a.connect_timeout_ms}
hold_down_seconds = {self.a.hold_down}

{cl}[[service]]
name = "{SERVICE}"
kind = "redis"
listen = "127.0.0.1:{lp}"
on_failover = "promote"
upstreams = [ {{ name = "r1", address = "127.0.0.1:{rp}", role = "primary" }}, {{ name = "r2", address = "127.0.0.1:{rr}", role = "secondary" }} ]
"""
        with open(path, "w") as f:
            f.write(text)

    def start_engine(self, td, name, rp, rr, cluster_name=None):
        cp, lp = self.port(), self.port()
        data = os.path.join(td, f"data-{name}")
        os.makedirs(data, exist_ok=True)
        cfg = os.path.join(td, f"{name}.toml")
        self.write_config(cfg, data, cp, lp, rp, rr, cluster_name, name)
        p = self.procs.start(name, [self.bin, "run", "--config", cfg], os.path.join(td, f"{name}.log"))
        return {"name": name, "proc": p, "cp": cp, "lp": lp, "cfg": cfg, "log": os.path.join(td, f"{name}.log"),
                "api": f"http://127.0.0.1:{cp}"}

    def cluster(self, e):
        return http_json(e["api"] + "/api/ops/cluster", self.token)

    def failover_status(self, e):
        body = http_json(e["api"] + "/api/ops/failover/status", self.token)
        for s in body.get("services", []):
            if s.get("name") == SERVICE:
                return s
        return {}

    @staticmethod
    def cluster_ready(c, n):
        if not (c.get("enabled") and c.get("connected") and len(c.get("members") or []) == n):
            return False, f"connected={c.get('connected')} members={len(c.get('members') or [])}"
        svc = next((s for s in c.get("services") or [] if s.get("service") == SERVICE), None)
        if not svc:
            return False, "no service"
        r = svc.get("route") or {}
        if not (svc.get("leader") and r.get("active") == "r1" and r.get("phase") == "serving"
                and svc.get("agrees") and svc.get("local_active") == "r1"):
            return False, (f"leader={svc.get('leader')} route={r.get('active')}/{r.get('phase')} "
                           f"agrees={svc.get('agrees')} local={svc.get('local_active')}")
        views = svc.get("views") or []
        if len(views) != n or not all(u.get("health") == "up" for v in views for u in v.get("upstreams") or []):
            return False, f"views={len(views)} " + ";".join(
                f"{v.get('node_id')}:" + ",".join(f"{u.get('name')}={u.get('health')}" for u in v.get("upstreams") or [])
                for v in views)
        return True, "ready"

    def wait_ready(self, engines, clustered, timeout):
        t = clk()
        end = time.time() + timeout
        last = {}
        while time.time() < end:
            ok = True
            for e in engines:
                if e["proc"].poll() is not None:
                    raise BenchError(f"{e['name']} exited ({e['proc'].returncode}): {tail(e['log'])}")
                try:
                    if clustered:
                        r, why = self.cluster_ready(self.cluster(e), len(engines))
                    else:
                        s = self.failover_status(e)
                        r = s.get("active_upstream") == "r1"
                        why = f"active={s.get('active_upstream')}"
                        if r:
                            h = http_json(e["api"] + "/api/ops/health", self.token)
                            st = next((x.get("status") for x in h.get("services", []) if x.get("name") == SERVICE), None)
                            r, why = st == "healthy", f"health={st}"
                except Exception as ex:  # noqa: BLE001 - not yet
                    r, why = False, repr(ex)[:200]
                last[e["name"]] = why
                ok = ok and r
            if ok:
                return clk() - t
            time.sleep(0.1)
        raise BenchError(f"engines not ready after {timeout} s: {last}")

    # ---- one failover trial
    def trial(self, mode, idx):
        a = self.a
        tag = f"{mode}-{idx:02d}"
        td = os.path.join(self.work, tag)
        os.makedirs(td)
        keep = os.path.join(self.out, "trials", tag)
        os.makedirs(keep, exist_ok=True)
        la_before = bl.loadavg()
        prim, rp, repl, rr = self.redis_pair(td)
        clustered = mode.startswith("cluster")
        api_mode = mode.endswith("-api")
        leaderkill = mode == "cluster-leaderkill"
        cname = f"bench-{os.getpid()}-{mode}-{idx}" if clustered else None
        names = ENGINE_NAMES if clustered else ["engine-solo"]
        engines = [self.start_engine(td, nm, rp, rr, cname) for nm in names]
        rec = {"mode": mode, "trial": idx, "cluster_name": cname, "engines": names,
               "primary_port": rp, "replica_port": rr, "loadavg_before": la_before}
        try:
            rec["ready_s"] = round(self.wait_ready(engines, clustered, a.ready_timeout), 3)
            if "master_link_status:up" not in redis_info(rr, "replication"):
                raise BenchError("replica link down before the kill")
            rec["replicaof_calls_before"] = cmdstat(rr)
            # pollers: client traffic (a new connection per request), or (mode *-api) no client
            # traffic at all, only GET /api/ops/failover/status (detection by health checks alone)
            stop = threading.Event()
            evs = {e["name"]: [] for e in engines}
            t_base = clk()
            if api_mode:
                ths = [threading.Thread(target=api_poller, daemon=True,
                                        args=(e["api"], self.token, a.interval, stop, evs[e["name"]], t_base))
                       for e in engines]
            else:
                ths = [threading.Thread(target=poller, daemon=True,
                                        args=(e["lp"], a.interval, a.timeout, not a.no_write, stop, evs[e["name"]],
                                              t_base))
                       for e in engines]
            for th in ths:
                th.start()
            # random phase of the kill against the engines' health-check schedules
            rec["kill_jitter_ms"] = round(random.uniform(0, a.jitter) * 1000, 1)
            time.sleep(a.warm + rec["kill_jitter_ms"] / 1000)
            own0 = self.own_ticks()
            busy0 = bl.machine_ticks()
            rec["loadavg_at_kill"] = bl.loadavg()
            victim = None
            if leaderkill:  # the leader engine dies with the primary (SIGKILL, just before it)
                c = self.cluster(engines[0])
                leader = next((x.get("leader") for x in c.get("services") or [] if x.get("service") == SERVICE), None)
                victim = next(e for e in engines if e["name"] == leader)
                os.kill(victim["proc"].pid, signal.SIGKILL)
                rec["killed_engine"] = leader
            os.kill(prim.pid, signal.SIGKILL)
            t0 = clk() - t_base
            t0_wall = time.time()
            live = [e for e in engines if e is not victim]
            names = [e["name"] for e in live]
            t_dead = None
            while clk() - t_base - t0 < 0.5:
                if bl.all_threads_dead(prim.pid):
                    t_dead = clk() - t_base
                    break
                time.sleep(0.0002)
            rec["dead_after_kill_ms"] = None if t_dead is None else round((t_dead - t0) * 1000, 2)
            try:
                socket.create_connection(("127.0.0.1", rp), timeout=0.5).close()
                rec["primary_port_after_kill"] = "accepted"
            except ConnectionRefusedError:
                rec["primary_port_after_kill"] = "refused"
            except OSError as e:
                rec["primary_port_after_kill"] = type(e).__name__
            if rec["primary_port_after_kill"] != "refused":  # when does it refuse, then?
                while clk() - t_base - t0 < 0.5:
                    try:
                        socket.create_connection(("127.0.0.1", rp), timeout=0.1).close()
                    except ConnectionRefusedError:
                        rec["primary_refused_after_ms"] = round((clk() - t_base - t0) * 1000, 2)
                        break
                    except OSError:
                        pass
                    time.sleep(0.0005)
            # until every engine answered from the replica (or the deadline), then a tail
            end = clk() + a.switch_timeout
            want = "r2" if api_mode else rr
            while clk() < end:
                if all(any(ev[2] == "ok" and ev[3] == want and ev[1] > t0 for ev in list(evs[n])) for n in names):
                    break
                time.sleep(0.01)
            time.sleep(a.tail)
            stop.set()
            for th in ths:
                th.join(a.timeout + 1)
            busy1 = bl.machine_ticks()
            own1 = self.own_ticks()
            rec["machine_busy_pct_trial"] = round(100.0 * (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]), 1)
            # CPU used by processes that are not this benchmark's (other work on the machine)
            own = sum(own1.get(k, 0) - v for k, v in own0.items() if k in own1)
            # (/proc/stat and /proc/PID/stat count the same ticks; % of the whole machine, all CPUs)
            rec["foreign_cpu_pct_trial"] = round(
                max(0.0, 100.0 * (busy1[0] - busy0[0] - own) / max(1, busy1[1] - busy0[1])), 1)
            rec["t_kill_s"] = round(t0, 4)
            per = {}
            for n in names:
                per[n] = summarize(evs[n], t0, "r1", "r2") if api_mode else summarize(evs[n], t0, rp, rr)
            if api_mode:  # one request through each engine now: it must be served by the promoted replica
                rec["after_check"] = {}
                for e in live:
                    o, p, w = probe_once(e["lp"], 0, a.timeout, True)
                    rec["after_check"][e["name"]] = {"outcome": o, "replica": p == rr, "write_ok": w}
            rec["per_engine"] = per
            sw = [per[n]["first_replica_ms"] for n in names]
            rec["never_switched"] = [n for n in names if per[n]["first_replica_ms"] is None]
            rec["to_last_engine_ms"] = None if rec["never_switched"] else max(sw)
            if t_dead is not None and rec["to_last_engine_ms"] is not None:
                rec["to_last_engine_from_dead_ms"] = round(rec["to_last_engine_ms"] - rec["dead_after_kill_ms"], 1)
            rec["to_first_engine_ms"] = min((x for x in sw if x is not None), default=None)
            wok = [per[n]["first_write_ok_replica_ms"] for n in names]
            rec["write_ok_to_last_engine_ms"] = None if (None in wok or api_mode) else max(wok)
            rec["failed_per_engine"] = {n: per[n]["failed_after_kill"] for n in names}
            # the epochs, then the replica (after the engines settled: a late second promotion would count)
            rec["final"] = self.final_state(live, clustered)
            rec["replicaof_calls"] = cmdstat(rr)
            try:
                rec["replica_role"] = re.search(r"^role:(\w+)", redis_info(rr, "replication"), re.M).group(1)
            except Exception as e:  # noqa: BLE001
                rec["replica_role"] = repr(e)
            eps = [f.get("local_epoch") for f in rec["final"].values()]
            rec["final_epochs"] = eps
            rec["epochs_equal"] = len(set(eps)) == 1 and None not in eps
            rec["engines_alive"] = {e["name"]: e["proc"].poll() is None for e in live}
            rec["loadavg_after"] = bl.loadavg()
            with open(os.path.join(keep, "events.json"), "w") as f:
                json.dump({"t_kill": t0, "events": evs}, f)
        finally:
            for e in engines:
                self.procs.stop(e["proc"])
            self.procs.stop(repl)
            self.procs.stop(prim, grace=1)
            for e in engines:
                shutil.copy(e["cfg"], keep)
                if os.path.exists(e["log"]):
                    shutil.copy(e["log"], keep)
                dd = os.path.join(td, f"data-{e['name']}")
                if os.path.isdir(dd):  # the audit log (cluster_decision evidence: every view with its time)
                    shutil.copytree(dd, os.path.join(keep, f"data-{e['name']}"), dirs_exist_ok=True)
            for nm in ("primary", "replica"):
                lp = os.path.join(td, f"redis-{nm}", "redis.log")
                if os.path.exists(lp):
                    shutil.copy(lp, os.path.join(keep, f"redis-{nm}.log"))
        rec["log_notes"] = {e["name"]: scan_log(os.path.join(keep, os.path.basename(e["log"]))) for e in engines}
        if "t_kill_s" in rec:
            rec["audit"] = audit_summary(keep, t0_wall)
            rec["log_timeline"] = {e["name"]: log_timeline(os.path.join(keep, os.path.basename(e["log"])), t0_wall)
                                   for e in engines}
            sw = [v.get("switched_ms") for n, v in rec["log_timeline"].items() if n != rec.get("killed_engine")]
            rec["log_last_switch_ms"] = None if None in sw else max(sw)
            rec["log_decisions"] = sum(v.get("decisions", 0) for v in rec["log_timeline"].values())
            rec["log_switches"] = sum(v.get("switches", 0) for v in rec["log_timeline"].values())
        shutil.rmtree(td, ignore_errors=True)
        return rec

    def final_state(self, engines, clustered):
        """Per engine, after the failover: its epoch and (cluster) the agreed route. Waits up
        to 5 s for the route to be `serving` and the epochs to agree."""
        end = time.time() + 5
        while True:
            out = {}
            for e in engines:
                try:
                    fs = self.failover_status(e)
                    d = {"active_upstream": fs.get("active_upstream"), "epoch": fs.get("epoch")}
                    if clustered:
                        c = self.cluster(e)
                        svc = next((s for s in c.get("services") or [] if s.get("service") == SERVICE), {})
                        r = svc.get("route") or {}
                        d.update(local_epoch=svc.get("local_epoch"), local_active=svc.get("local_active"),
                                 route_active=r.get("active"), route_epoch=r.get("epoch"), phase=r.get("phase"),
                                 decided_by=r.get("decided_by"), trigger=r.get("trigger"), fenced=r.get("fenced"),
                                 leader=svc.get("leader"), agrees=svc.get("agrees"), connected=c.get("connected"),
                                 members=len(c.get("members") or []), revision=c.get("revision"),
                                 route_revision=svc.get("route_revision"))
                    else:
                        d["local_epoch"] = fs.get("epoch")
                        d["local_active"] = fs.get("active_upstream")
                    out[e["name"]] = d
                except Exception as ex:  # noqa: BLE001
                    out[e["name"]] = {"error": repr(ex)[:200]}
            eps = {d.get("local_epoch") for d in out.values()}
            settled = len(eps) == 1 and all(d.get("local_active") == "r2" for d in out.values()) and \
                (not clustered or all(d.get("phase") == "serving" for d in out.values()))
            if settled or time.time() > end:
                return out
            time.sleep(0.1)

    # ---- request path
    def requestpath(self):
        a = self.a
        td = os.path.join(self.work, "requestpath")
        os.makedirs(td)
        keep = os.path.join(self.out, "trials", "requestpath")
        os.makedirs(keep, exist_ok=True)
        prim, rp, repl, rr = self.redis_pair(td)
        ec = self.start_engine(td, "engine-cluster", rp, rr, f"bench-{os.getpid()}-rp")
        es = self.start_engine(td, "engine-standalone", rp, rr, None)
        targets = {"cluster": ec, "standalone": es}
        recs = []
        try:
            self.wait_ready([ec], True, a.ready_timeout)
            self.wait_ready([es], False, a.ready_timeout)
            # idle CPU of both engines (health checks; the cluster one also keeps its etcd session)
            t_idle = {k: bl.proc_ticks(e["proc"].pid, children=False) for k, e in targets.items()}
            time.sleep(a.idle_seconds)
            idle = {k: round((bl.proc_ticks(e["proc"].pid, children=False) - t_idle[k]) / bl.CLK_TCK / a.idle_seconds * 100, 2)
                    for k, e in targets.items()}
            log(f"idle CPU % over {a.idle_seconds} s: {idle}")
            with open(os.path.join(self.out, "idle_cpu.json"), "w") as f:
                json.dump({"seconds": a.idle_seconds, "cpu_pct": idle}, f)
            for k, e in targets.items():  # warm-up
                subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(e["lp"]), "-c", "50", "-n", "20000",
                                "-t", "set,get", "-q", "--csv"], capture_output=True, timeout=120)
            for r in range(1, a.rounds + 1):
                order = ["cluster", "standalone"] if r % 2 else ["standalone", "cluster"]
                if not a.no_direct:
                    order.append("direct")
                for attempt in range(1, a.repeat_noisy + 2):
                    first = len(recs)
                    for tgt in order:
                        port = rp if tgt == "direct" else targets[tgt]["lp"]
                        pid = None if tgt == "direct" else targets[tgt]["proc"].pid
                        argv = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(a.clients),
                                "-n", str(a.requests), "-t", "set,get", "-q", "--csv"]
                        wait_quiet(a.wait_quiet)
                        la = bl.loadavg()
                        own0 = self.own_ticks()
                        ch0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                        m0 = bl.machine_ticks()
                        c0 = bl.proc_ticks(pid, children=False) if pid else None
                        t = time.time()
                        cp = subprocess.run(argv, capture_output=True, text=True, timeout=600)
                        wall = time.time() - t
                        c1 = bl.proc_ticks(pid, children=False) if pid else None
                        m1 = bl.machine_ticks()
                        ch1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                        own1 = self.own_ticks()
                        own = sum(own1.get(k, 0) - v for k, v in own0.items() if k in own1) + bl.CLK_TCK * (
                            ch1.ru_utime + ch1.ru_stime - ch0.ru_utime - ch0.ru_stime)  # + redis-benchmark (reaped)
                        res = bl.parse_redis_csv(cp.stdout)
                        rec = {"round": r, "attempt": attempt, "target": tgt, "port": port, "cmd": " ".join(argv),
                               "exit": cp.returncode,
                               "wall_s": round(wall, 2), "results": res, "loadavg_before": la, "loadavg_after": bl.loadavg(),
                               "machine_busy_pct": round(100.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]), 1),
                               "foreign_cpu_pct": round(max(0.0, 100.0 * (m1[0] - m0[0] - own) / max(1, m1[1] - m0[1])), 1)}
                        if pid:
                            rec["proxy_cpu_s"] = round((c1 - c0) / bl.CLK_TCK, 2)
                            rec["proxy_cpu_us_per_op"] = round((c1 - c0) / bl.CLK_TCK * 1e6 / (2 * a.requests), 2)
                        with open(os.path.join(keep, f"r{r}-a{attempt}-{tgt}.csv"), "w") as f:
                            f.write(cp.stdout + cp.stderr)
                        if cp.returncode != 0 or not res:
                            log(f"WARNING: redis-benchmark on {tgt} failed: {cp.stderr[-500:]}")
                        log(f"requestpath r{r} {tgt}: " + ", ".join(f"{k} {v['rps']:.0f} req/s" for k, v in res.items())
                            + f" (loadavg {la[0]}, foreign CPU {rec['foreign_cpu_pct']} %)")
                        recs.append(rec)
                    noisy = [x for x in recs[first:] if x["foreign_cpu_pct"] >= a.max_foreign]
                    if not noisy or attempt > a.repeat_noisy:
                        break
                    for x in recs[first:]:
                        x["superseded"] = True
                    log(f"requestpath r{r}: foreign CPU >= {a.max_foreign} % in {len(noisy)} run(s); round repeated")
            c = self.cluster(ec)
            with open(os.path.join(keep, "cluster_engine_state.json"), "w") as f:
                json.dump(c, f, indent=1)
            if not c.get("connected"):
                log("WARNING: the cluster engine is not connected at the end of the request-path part")
            for rec in recs:
                rec["cluster_engine_connected_at_end"] = c.get("connected")
        finally:
            for e in (ec, es):
                self.procs.stop(e["proc"])
                shutil.copy(e["cfg"], keep)
                if os.path.exists(e["log"]):
                    shutil.copy(e["log"], keep)
            self.procs.stop(repl)
            self.procs.stop(prim)
        txt = ANSI.sub("", open(os.path.join(keep, os.path.basename(ec["log"])), errors="replace").read())
        lost = [ln[:300] for ln in txt.splitlines() if "not connected to etcd" in ln]
        with open(os.path.join(self.out, "requestpath_cluster_sessions.json"), "w") as f:
            json.dump({"session_losses": len(lost), "lines": lost[:20]}, f, indent=1)
        if lost:
            log(f"NOTE: the cluster engine lost its etcd session {len(lost)} time(s) during the request-path part")
        for e in (ec, es):
            notes = scan_log(os.path.join(keep, os.path.basename(e["log"])))
            if notes["error_lines"] or notes["panics"]:
                log(f"NOTE: {e['name']} log: {notes}")
        shutil.rmtree(td, ignore_errors=True)
        return recs


def wait_quiet(max_s, busy_pct=15.0):
    """Wait (up to max_s) for a second with the machine < busy_pct % busy (as lib.sh wait_quiet)."""
    t = time.time()
    while time.time() - t < max_s:
        m0 = bl.machine_ticks()
        time.sleep(1)
        m1 = bl.machine_ticks()
        if 100.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) < busy_pct:
            return True
    if max_s > 0:
        log(f"machine still busy after {max_s:g} s (loadavg {bl.loadavg()}); running anyway")
    return False


def cmdstat(port):
    try:
        txt = redis_info(port, "commandstats")
    except OSError as e:
        return repr(e)
    m = re.search(r"^cmdstat_replicaof:calls=(\d+)", txt, re.M)
    s = re.search(r"^cmdstat_slaveof:calls=(\d+)", txt, re.M)
    n = (int(m.group(1)) if m else 0) + (int(s.group(1)) if s else 0)
    return n


def summarize(events, t0, rp, rr):
    after = [e for e in events if e[1] > t0]
    before = [e for e in events if e[1] <= t0]
    first_rep = next((e for e in after if e[2] == "ok" and e[3] == rr), None)
    first_wok = next((e for e in after if e[2] == "ok" and e[3] == rr and e[4] is not False), None)
    fails = [e for e in after if e[2] != "ok"]
    kinds = {}
    for e in fails:
        kinds[e[2]] = kinds.get(e[2], 0) + 1
    ok_after = [e for e in after if e[2] == "ok"]

    def ms(t):
        return None if t is None else round((t - t0) * 1000, 1)
    return {
        "requests_before_kill": len(before),
        "ok_primary_before_kill": sum(1 for e in before if e[2] == "ok" and e[3] == rp),
        "failed_before_kill": sum(1 for e in before if e[2] != "ok"),
        "last_ok_before_kill_ms": ms(max((e[1] for e in before if e[2] == "ok"), default=None)),
        "first_replica_ms": ms(first_rep[1]) if first_rep else None,
        "first_replica_req_sent_ms": ms(first_rep[0]) if first_rep else None,
        "first_replica_req_latency_ms": round((first_rep[1] - first_rep[0]) * 1000, 1) if first_rep else None,
        "first_write_ok_replica_ms": ms(first_wok[1]) if first_wok else None,
        "replica_answers_write_refused": sum(1 for e in ok_after if e[3] == rr and e[4] is False),
        "requests_after_kill": len(after),
        "failed_after_kill": len(fails),
        "failed_kinds": kinds,
        "first_fail_ms": ms(fails[0][0]) if fails else None,
        "last_fail_end_ms": ms(fails[-1][1]) if fails else None,
        "ok_primary_sent_after_kill": sum(1 for e in ok_after if e[3] == rp and e[0] > t0),
        "ok_primary_after_first_replica": 0 if not first_rep else
        sum(1 for e in ok_after if e[3] == rp and e[0] > first_rep[0]),
        "failed_after_first_replica": 0 if not first_rep else sum(1 for e in fails if e[0] > first_rep[1]),
        "max_ok_latency_after_kill_ms": round(max((e[1] - e[0] for e in ok_after), default=0) * 1000, 1),
    }


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def scan_log(path):
    res = {"panics": 0, "error_lines": 0, "warn_lines": 0, "first_errors": [], "first_warns": []}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = ANSI.sub("", line).rstrip()
                if "panicked" in line:
                    res["panics"] += 1
                    res["first_errors"].append(line[:300])
                elif re.match(r"^\S+\s+ERROR ", line):
                    res["error_lines"] += 1
                    if len(res["first_errors"]) < 5:
                        res["first_errors"].append(line[:300])
                elif re.match(r"^\S+\s+WARN ", line):
                    res["warn_lines"] += 1
                    if len(res["first_warns"]) < 5:
                        res["first_warns"].append(line[:300])
    except OSError:
        pass
    return res


LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z\s+(\w+)\s+(\S+): (.*)$")


def log_timeline(path, t0_wall):
    """From an engine log (UTC timestamps, same clock): ms after the kill of the first
    `r1 ... new=Down` (and whether passive), `cluster: decided`, `switched upstream ... to=r2`,
    `cluster: applied the agreed route`; and how many decisions / switches it logged after
    the kill (one decision per failover is expected across the engines)."""
    import calendar
    res = {"decisions": 0, "switches": 0}
    try:
        lines = open(path, errors="replace").read().splitlines()
    except OSError:
        return res
    for line in lines:
        m = LOG_TS.match(ANSI.sub("", line))
        if not m:
            continue
        ts, msg = m.group(1), m.group(4)
        whole, _, frac = ts.partition(".")
        t = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))
        ms = round((t - t0_wall) * 1000, 1)
        if "not connected to etcd" in msg:  # counted over the engine's whole life
            res["session_losses"] = res.get("session_losses", 0) + 1
        if ms < -50:
            continue
        if "upstream health changed" in msg and "upstream=r1" in msg and "new=Down" in msg and "down_ms" not in res:
            res["down_ms"] = ms
            res["down_passive"] = "passive=true" in msg
        elif "cluster: decided" in msg:
            res["decisions"] += 1
            res.setdefault("decided_ms", ms)
        elif "switched upstream" in msg:
            res["switches"] += 1
            if "to=r2" in msg:
                res.setdefault("switched_ms", ms)
        elif "applied the agreed route" in msg and "active=r2" in msg:
            res.setdefault("applied_ms", ms)
        if "not connected to etcd" in msg:
            res.setdefault("session_lost_ms", []).append(ms)
    return res


def _ts_ms(ts, t0_wall):
    import calendar
    ts = ts.rstrip("Z")
    whole, _, frac = ts.partition(".")
    t = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))
    return round((t - t0_wall) * 1000, 1)


def audit_summary(keep, t0_wall):
    """From each engine's audit log (data-*/audit/*.jsonl): the cluster_decision entries (time,
    node, revision, epoch, and every view of the evidence: its time and its health of r1),
    and every failover_activated entry after the kill with its `promoted` flag."""
    import glob
    res = {"decisions": [], "activated": []}
    for seg in sorted(glob.glob(os.path.join(keep, "data-*", "audit", "*.jsonl"))):
        node = seg.split(os.sep)[-3][len("data-"):]
        for line in open(seg, errors="replace"):
            try:
                d = json.loads(line)
            except ValueError:
                continue
            det = d.get("details") or {}
            ms = _ts_ms(d["timestamp"], t0_wall)
            if ms < -50:
                continue
            if d.get("action") == "diagnostic_event" and det.get("event") == "cluster_decision":
                ev = det.get("evidence") or {}
                views = []
                for v in ev.get("views") or []:
                    h = next((u.get("health") for u in v.get("upstreams") or [] if u.get("name") == det.get("from")), None)
                    views.append({"node": v.get("node_id"), "at_ms": _ts_ms(v["at"][:26] + "Z", t0_wall), det.get("from"): h})
                res["decisions"].append({"engine": node, "at_ms": ms, "from": det.get("from"), "to": det.get("to"),
                                         "epoch": det.get("epoch"), "revision": det.get("revision"),
                                         "quorum": ev.get("quorum"), "voters": ev.get("voters"), "views": views})
            elif d.get("action") in ("failover_activated", "failover_recovered"):
                res["activated"].append({"engine": node, "at_ms": ms, "action": d["action"], "to": det.get("to"),
                                         "new_epoch": det.get("new_epoch"), "promoted": det.get("promoted"),
                                         "actor": d.get("actor")})
    return res


def tail(path, n=20):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- report
def load_jsonl(p):
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []


def report(d):
    params = json.load(open(os.path.join(d, "params.json"))) if os.path.exists(os.path.join(d, "params.json")) else {}
    trials = load_jsonl(os.path.join(d, "failover.jsonl"))
    runs = load_jsonl(os.path.join(d, "requestpath.jsonl"))
    cell = bl.cell
    out = ["# Issue #17 `[cluster]`: failover to the last engine, and the request-path cost\n"]
    out += bl.machine_header(d)
    if params:
        out.append(f"Command: `{params.get('command')}`\n")
        if params.get("note"):
            out.append(f"Note: {params['note']}\n")
        out.append(
            f"Settings: etcd {params.get('etcd_version', '?').replace('etcd Version: ', '')}, 3 members on loopback "
            f"(`--heartbeat-interval {params.get('etcd_heartbeat_ms')} --election-timeout {params.get('etcd_election_ms')}`, "
            f"data dirs on {params.get('work_fs', 'disk')}); engines: `[health] check_interval_seconds = "
            f"{params.get('check_interval')}`, `failure_threshold = {params.get('failure_threshold')}`, "
            f"`connect_timeout_ms = {params.get('connect_timeout_ms')}`, `hold_down_seconds = {params.get('hold_down')}`, "
            f"`on_failover = \"promote\"`, `lease_ttl_seconds` "
            f"{'default (5)' if params.get('lease_ttl') is None else params.get('lease_ttl')}, quorum default (majority). "
            f"Poller: per engine a new connection every {float(params.get('interval', 0)) * 1000:g} ms, "
            f"{'`SET bench:probe N` + ' if not params.get('no_write') else ''}`INFO server` pipelined, "
            f"per-request deadline {params.get('timeout')} s; primary SIGKILLed {params.get('warm')} s + a random "
            f"0-{float(params.get('jitter', 0)) * 1000:g} ms after the pollers start (random phase against the health checks). "
            f"Before each trial (and each redis-benchmark run) the script waited up to {params.get('wait_quiet')} s "
            f"for a second with the machine < 15 % busy.\n")
        out.append("etcd member N of 3 (one cluster for the whole run; each engine lists the 3 client URLs): "
                   f"`{params.get('etcd')} --name etcdN --data-dir WORK/etcd/etcdN "
                   "--listen-client-urls=http://127.0.0.1:CN --advertise-client-urls=http://127.0.0.1:CN "
                   "--listen-peer-urls=http://127.0.0.1:PN --initial-advertise-peer-urls=http://127.0.0.1:PN "
                   "--initial-cluster=etcd1=http://127.0.0.1:P1,etcd2=http://127.0.0.1:P2,etcd3=http://127.0.0.1:P3 "
                   "--initial-cluster-state=new --initial-cluster-token=bench-cluster17-PID "
                   f"--heartbeat-interval={params.get('etcd_heartbeat_ms')} --election-timeout={params.get('etcd_election_ms')} "
                   "--logger=zap --log-outputs=stderr`. Redis: `redis-server --port P --bind 127.0.0.1 --save '' "
                   "--appendonly no --repl-diskless-sync-delay 0 [--replicaof 127.0.0.1 PRIMARY]`, a fresh pair per trial. "
                   "Engines: `continuity run --config F`, configs in `trials/*/engine-*.toml` of the --out dir.\n")
    out.append("Time = from right after `os.kill(primary, SIGKILL)` to the end of the first request through an engine "
               "answered with the replica's `tcp_port` (\"serving from the secondary\"); *write OK* = the first such "
               "reply whose pipelined SET was accepted too (promotion done). Trial figure = the last engine. "
               "With client traffic every engine also gets passive evidence (its connects to the dead primary are "
               "refused) within a few ms of the death. The `-api` rows send no client traffic during the failover: "
               "each engine's `GET /api/ops/failover/status` is polled at the same interval and the time is the first "
               "answer with `active_upstream = r2`, so detection there rests on the health checks alone "
               "(then one SET + INFO through each engine checks the promoted replica serves).\n")
    out.append("## Failover\n")
    out.append("| setup | trials | to last engine ms | to first engine ms | write OK, last engine ms | "
               "last switch in the engine logs ms | failed requests per engine | cmdstat_replicaof per trial | "
               "epochs equal | never switched | loadavg 1m at kill |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, label in (("cluster", "3 engines, `[cluster]`, client traffic"),
                        ("standalone", "1 engine, no `[cluster]`, client traffic"),
                        ("cluster-api", "3 engines, `[cluster]`, no client traffic (API)"),
                        ("standalone-api", "1 engine, no `[cluster]`, no client traffic (API)"),
                        ("cluster-leaderkill", "3 engines, `[cluster]`, client traffic, the leader engine killed "
                                               "with the primary (the 2 others)")):
        rs = [r for r in trials if r.get("mode") == mode and "error" not in r]
        if not rs:
            continue
        fails = [v for r in rs for v in (r.get("failed_per_engine") or {}).values()]
        never = sum(len(r.get("never_switched") or []) for r in rs)
        out.append(
            f"| {label} | {len(rs)} | {cell([r.get('to_last_engine_ms') for r in rs], 1)} | "
            f"{cell([r.get('to_first_engine_ms') for r in rs], 1)} | {cell([r.get('write_ok_to_last_engine_ms') for r in rs], 1)} | "
            f"{cell([r.get('log_last_switch_ms') for r in rs], 1)} | {cell(fails, 0)} | {', '.join(str(r.get('replicaof_calls')) for r in rs)} | "
            f"{sum(1 for r in rs if r.get('epochs_equal'))}/{len(rs)} | {never} | "
            f"{cell([(r.get('loadavg_at_kill') or [None])[0] for r in rs], 2)} |")
    errs = [r for r in trials if "error" in r]
    if errs:
        out.append("")
        out.append(f"**{len(errs)} trial(s) failed before a figure:** " +
                   "; ".join(f"{r['mode']} #{r['trial']}: {r['error'][:200]}" for r in errs))
    for mode, what in (("cluster", "with client traffic"), ("cluster-api", "without client traffic"),
                       ("cluster-leaderkill", "the leader engine dead too")):
        m = bl.med([r.get("to_last_engine_ms") for r in trials if r.get("mode") == mode and "error" not in r])[0]
        if m is not None:
            out.append("")
            out.append(f"Issue target (median time to the last engine <= 500 ms with the default lease), {what}: "
                       f"**{'met' if m <= 500 else 'NOT met'}** ({m:.1f} ms).")
    out.append("\nPer trial:\n")
    out.append("| setup | # | to last ms | per engine ms (first replica reply) | write OK ms | failed per engine (kinds) | "
               "max held ms | replicaof calls | final epochs | decided by | ready s | primary dead ms / port | "
               "busy % / foreign CPU % | loadavg at kill |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in trials:
        if "error" in r:
            out.append(f"| {r['mode']} | {r['trial']} | error: {r['error'][:120]} |" + " |" * 11)
            continue
        per = r.get("per_engine") or {}
        fin = r.get("final") or {}
        dec = sorted({str(f.get("decided_by")) for f in fin.values() if f.get("decided_by")})
        out.append(
            f"| {r['mode']} | {r['trial']} | {bl.fmt(r.get('to_last_engine_ms'), 1)} | "
            + ", ".join(f"{n[-1] if n.startswith('engine-') and len(n) == 8 else n} {bl.fmt(p.get('first_replica_ms'), 1)}"
                        for n, p in per.items()) + " | "
            + ("-" if r["mode"].endswith("-api") else
               ", ".join(bl.fmt(p.get("first_write_ok_replica_ms"), 1) for p in per.values())) + " | "
            + ", ".join(f"{p.get('failed_after_kill')}" + (f" {p.get('failed_kinds')}" if p.get("failed_kinds") else "")
                        for p in per.values()) + " | "
            + ("-" if r["mode"].endswith("-api") else
               ", ".join(bl.fmt(p.get("max_ok_latency_after_kill_ms"), 1) for p in per.values())) + " | "
            + f"{r.get('replicaof_calls')} | {r.get('final_epochs')} | {', '.join(dec) or '-'} | {r.get('ready_s')} | "
            f"{r.get('dead_after_kill_ms')} / {r.get('primary_port_after_kill')}"
            f"{' (refused at ' + str(r['primary_refused_after_ms']) + ' ms)' if r.get('primary_refused_after_ms') else ''} | {r.get('machine_busy_pct_trial')} / "
            f"{r.get('foreign_cpu_pct_trial', '-')} | "
            f"{(r.get('loadavg_at_kill') or ['-'])[0]} |")
    out.append("\nEngine logs, ms after the kill (log timestamps, same clock): first `r1 ... new=Down` "
               "(p = passive evidence, a refused client connect; h = health check), `cluster: decided` (the deciding "
               "engine), `switched upstream ... to=r2`; decisions and switches logged after the kill over all engines "
               "(1 and one per engine expected):\n")
    out.append("The last column is from the audit logs: the deciding engine's `cluster_decision` entry (its time, and "
               "for each view in its evidence the time that view was written and its health of r1; `*` = the "
               "deciding engine's own view), then the `promoted` flag of every `failover_activated` entry.\n")
    out.append("| setup | # | per engine: down / decided / switched | decisions | switches | "
               "audit: decision ms [views: node at ms health] ; promoted flags |")
    out.append("|---|---|---|---|---|---|")
    for r in trials:
        tl = r.get("log_timeline")
        if not tl:
            continue
        parts = []
        for n, v in tl.items():
            dn = bl.fmt(v.get("down_ms"), 1) + ("p" if v.get("down_passive") else "h" if "down_ms" in v else "")
            parts.append(f"{n.replace('engine-', '')}: {dn} / {bl.fmt(v.get('decided_ms'), 1)} / {bl.fmt(v.get('switched_ms'), 1)}")
        au = r.get("audit") or {}
        ad = []
        for dd in au.get("decisions") or []:
            vs = ", ".join(f"{v['node'].replace('engine-', '')}{'*' if v['node'] == dd['engine'] else ''} "
                           f"{bl.fmt(v['at_ms'], 1)} {v.get(dd.get('from'))}" for v in dd.get("views") or [])
            ad.append(f"{dd['engine'].replace('engine-', '')} {bl.fmt(dd['at_ms'], 1)} [{vs}]")
        pf = ", ".join(f"{x['engine'].replace('engine-', '')}={x['promoted']}" for x in au.get("activated") or [])
        out.append(f"| {r['mode']} | {r['trial']} | {'; '.join(parts)} | {r.get('log_decisions')} | {r.get('log_switches')} | "
                   f"{'; '.join(ad) or '-'} ; {pf or '-'} |")
    out.append("\n(busy % / foreign CPU %: the whole machine's busy CPU from the kill to the end of the trial, and the "
               "part of it not used by this benchmark's processes, i.e. other work on the machine; % of both CPUs.)")
    notes = anomalies(trials)
    if notes:
        out.append("\nAnomalies:\n")
        out += [f"- {n}" for n in notes]
    if runs:
        out.append("\n## Request path: one engine with `[cluster]` (connected) vs one without\n")
        idle = os.path.join(d, "idle_cpu.json")
        if os.path.exists(idle):
            ic = json.load(open(idle))
            out.append(f"Idle CPU of the engines over {ic['seconds']} s (health checks; plus the etcd session for the "
                       f"cluster one): cluster {ic['cpu_pct'].get('cluster')} %, standalone {ic['cpu_pct'].get('standalone')} %.\n")
        cmd = runs[0]["cmd"].replace(f"-p {runs[0]['port']}", "-p PORT")
        out.append(f"Command: `{cmd}`, {max(r['round'] for r in runs)} rounds, order alternated "
                   "(cluster, standalone / standalone, cluster), direct last in each round.\n")
        out.append("| target | test | runs | req/s | p50 ms | p99 ms | engine CPU us/op | loadavg 1m before | machine busy % | "
                   "foreign CPU % |")
        out.append("|---|---|---|---|---|---|---|---|---|---|")
        tests = sorted({t for r in runs for t in (r.get("results") or {})})
        ok = [r for r in runs if r.get("exit") == 0 and r.get("results") and not r.get("superseded")]
        sup = [r for r in runs if r.get("superseded")]
        for tgt in ("cluster", "standalone", "direct"):
            for t in tests:
                rs = [r for r in ok if r["target"] == tgt and t in r["results"]]
                if not rs:
                    continue
                out.append(f"| {tgt} | {t} | {len(rs)} | {cell([r['results'][t]['rps'] for r in rs], 0)} | "
                           f"{cell([r['results'][t]['p50_ms'] for r in rs], 3)} | {cell([r['results'][t]['p99_ms'] for r in rs], 3)} | "
                           f"{cell([r.get('proxy_cpu_us_per_op') for r in rs], 2)} | "
                           f"{cell([r['loadavg_before'][0] for r in rs], 2)} | {cell([r.get('machine_busy_pct') for r in rs], 1)} | "
                           f"{cell([r.get('foreign_cpu_pct') for r in rs], 1)} |")
        out.append("")
        out.append("| test | cluster / standalone req/s (medians) | per-round ratios | standalone / direct | "
                   "cluster / standalone engine CPU us/op |")
        out.append("|---|---|---|---|---|")
        for t in tests:
            c = [r["results"][t]["rps"] for r in ok if r["target"] == "cluster" and t in r["results"]]
            s = [r["results"][t]["rps"] for r in ok if r["target"] == "standalone" and t in r["results"]]
            dd = [r["results"][t]["rps"] for r in ok if r["target"] == "direct" and t in r["results"]]
            per_round = []
            for rd in sorted({r["round"] for r in ok}):
                rc = [r["results"][t]["rps"] for r in ok if r["round"] == rd and r["target"] == "cluster" and t in r["results"]]
                rsd = [r["results"][t]["rps"] for r in ok if r["round"] == rd and r["target"] == "standalone" and t in r["results"]]
                if rc and rsd:
                    per_round.append(f"{rc[0] / rsd[0]:.3f}")
            cc = [r.get("proxy_cpu_us_per_op") for r in ok if r["target"] == "cluster"]
            sc = [r.get("proxy_cpu_us_per_op") for r in ok if r["target"] == "standalone"]
            out.append(f"| {t} | {bl.ratio(c, s)} | {', '.join(per_round)} | {bl.ratio(s, dd)} | {bl.ratio(cc, sc)} |")
        if sup:
            out.append(f"{len(sup)} run(s) superseded (their round repeated: one of its runs had foreign CPU >= "
                       f"{params.get('max_foreign')} %), left out of the medians: "
                       + ", ".join(f"r{r['round']}/{r['target']} {r.get('foreign_cpu_pct')} %" for r in sup) + ".")
        noisy = [r for r in ok if (r.get("foreign_cpu_pct") or 0) >= float(params.get("max_foreign", 5))]
        if noisy:
            out.append("**Runs still noisy after the repeats (in the medians):** "
                       + ", ".join(f"r{r['round']}/{r['target']} {r.get('foreign_cpu_pct')} %" for r in noisy) + ".")
        out.append("\n(Engine CPU us/op: the engine's utime+stime over the run / (2 x -n), SET and GET together. "
                   "Foreign CPU %: the machine's busy CPU not used by this benchmark's processes (engines, Redis, etcd, "
                   "redis-benchmark, this script), in % of both CPUs; a run with more than a few % was disturbed by "
                   "other work.)")
        sp = os.path.join(d, "requestpath_cluster_sessions.json")
        if os.path.exists(sp):
            n = json.load(open(sp))["session_losses"]
            out.append(f"\nThe cluster engine lost its etcd session {n} time(s) during this part (its log: "
                       "`not connected to etcd`).")
        if any(r.get("cluster_engine_connected_at_end") is False for r in runs):
            out.append("\n**The cluster engine was not connected to etcd at the end of this part.**")
    return "\n".join(out) + "\n"


def anomalies(trials):
    notes = []
    for r in trials:
        if "error" in r:
            continue
        t = f"{r['mode']} #{r['trial']}"
        if r.get("never_switched"):
            notes.append(f"{t}: never answered from the replica within the deadline: {r['never_switched']}")
        if r.get("replicaof_calls") != 1:
            notes.append(f"{t}: cmdstat_replicaof = {r.get('replicaof_calls')} (expected 1)")
        if not r.get("epochs_equal"):
            notes.append(f"{t}: final epochs differ: {r.get('final_epochs')}")
        if r.get("primary_port_after_kill") != "refused":
            notes.append(f"{t}: primary port after the kill: {r.get('primary_port_after_kill')}")
        for n, p in (r.get("per_engine") or {}).items():
            if r["mode"].endswith("-api"):
                if p.get("ok_primary_after_first_replica"):
                    notes.append(f"{t} {n}: active_upstream back to r1 after r2 ({p['ok_primary_after_first_replica']} polls)")
                ac = (r.get("after_check") or {}).get(n) or {}
                if not (ac.get("outcome") == "ok" and ac.get("replica") and ac.get("write_ok")):
                    notes.append(f"{t} {n}: request after the switch: {ac}")
            elif p.get("ok_primary_after_first_replica") or p.get("ok_primary_sent_after_kill"):
                notes.append(f"{t} {n}: answers from the primary after the kill: {p.get('ok_primary_sent_after_kill')}")
            if p.get("failed_after_first_replica"):
                notes.append(f"{t} {n}: {p['failed_after_first_replica']} failed request(s) after its first replica reply")
            if p.get("failed_before_kill"):
                notes.append(f"{t} {n}: {p['failed_before_kill']} failed request(s) before the kill")
        for n, f in (r.get("final") or {}).items():
            if f.get("error") or f.get("local_active") != "r2" or (r["mode"] == "cluster" and f.get("phase") != "serving"):
                notes.append(f"{t} {n}: final state {f}")
        for n, ln in (r.get("log_notes") or {}).items():
            if ln.get("panics") or ln.get("error_lines"):
                notes.append(f"{t} {n}: log has {ln['panics']} panic(s), {ln['error_lines']} ERROR line(s): "
                             f"{ln['first_errors'][:2]}")
        n_live = len(r.get("engines") or []) - (1 if r.get("killed_engine") else 0)
        if r["mode"].startswith("cluster") and r.get("log_timeline") and (
                r.get("log_decisions") != 1 or r.get("log_switches") != n_live):
            notes.append(f"{t}: the engine logs show {r.get('log_decisions')} decision(s) and "
                         f"{r.get('log_switches')} switch(es) after the kill")
        au = r.get("audit")
        if au is not None and r["mode"].startswith("cluster") and len(au.get("decisions") or []) != 1:
            notes.append(f"{t}: {len(au.get('decisions') or [])} cluster_decision audit entries (expected 1)")
        if au is not None and len(au.get("activated") or []) != n_live:
            notes.append(f"{t}: {len(au.get('activated') or [])} failover_activated audit entries for "
                         f"{n_live} live engine(s)")
        for n, v in (r.get("log_timeline") or {}).items():
            if v.get("session_losses"):
                notes.append(f"{t} {n}: lost its etcd session {v['session_losses']} time(s) (ms after the kill, "
                             f"negative = before: {v.get('session_lost_ms') or 'before -50'})")
        if r.get("engines_alive") and not all(r["engines_alive"].values()):
            notes.append(f"{t}: engine(s) died: {r['engines_alive']}")
    return notes


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--continuity-bin", default=os.path.join(ROOT, "target/release/continuity"))
    ap.add_argument("--parts", default="cluster,standalone,cluster-api,standalone-api,cluster-leaderkill,requestpath",
                    help="cluster, standalone: client traffic through every engine during the failover; "
                         "cluster-api, standalone-api: no client traffic, the switch seen in "
                         "GET /api/ops/failover/status (detection by health checks alone); "
                         "cluster-leaderkill: as cluster, but the leader engine is SIGKILLed together with the "
                         "primary (times of the two others: the new leader waits for the dead one's lease); "
                         "requestpath: redis-benchmark through an engine with and without [cluster]")
    ap.add_argument("--api-trials", type=int, default=5, help="trials of cluster-api and standalone-api")
    ap.add_argument("--leaderkill-trials", type=int, default=5, help="trials of cluster-leaderkill")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--standalone-trials", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3, help="request-path rounds")
    ap.add_argument("--requests", type=int, default=100000, help="redis-benchmark -n")
    ap.add_argument("--clients", type=int, default=50, help="redis-benchmark -c")
    ap.add_argument("--no-direct", action="store_true", help="request path: skip the direct-to-Redis runs")
    ap.add_argument("--idle-seconds", type=float, default=10)
    ap.add_argument("--max-foreign", type=float, default=5.0,
                    help="request path: a run with this much foreign CPU (%% of the machine) or more is noisy")
    ap.add_argument("--repeat-noisy", type=int, default=2,
                    help="request path: repeat a round (all its runs) up to N times when one of its runs was noisy; "
                         "the noisy runs stay in requestpath.jsonl marked superseded, out of the medians")
    ap.add_argument("--interval", type=float, default=0.005, help="poller: seconds between requests, per engine")
    ap.add_argument("--timeout", type=float, default=6.0, help="poller: per-request deadline (s)")
    ap.add_argument("--no-write", action="store_true", help="poller: INFO server only, no pipelined SET")
    ap.add_argument("--warm", type=float, default=1.5, help="seconds of polling before the kill")
    ap.add_argument("--jitter", type=float, default=0.2,
                    help="plus a random 0..JITTER s, so that the kill falls at a random phase of the health checks")
    ap.add_argument("--switch-timeout", type=float, default=20.0)
    ap.add_argument("--tail", type=float, default=2.0,
                    help="seconds of polling after the last engine switched (longer than hold_down_seconds, so that "
                         "a second, unwanted move would show)")
    ap.add_argument("--ready-timeout", type=float, default=60.0)
    ap.add_argument("--lease-ttl", type=int, default=None, help="lease_ttl_seconds (default: not set, i.e. 5)")
    ap.add_argument("--check-interval", type=float, default=0.1)
    ap.add_argument("--failure-threshold", type=int, default=2)
    ap.add_argument("--connect-timeout-ms", type=int, default=100)
    ap.add_argument("--hold-down", type=float, default=1)
    ap.add_argument("--etcd", default="/usr/bin/etcd")
    ap.add_argument("--etcd-heartbeat-ms", type=int, default=50)
    ap.add_argument("--etcd-election-ms", type=int, default=500)
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between trials")
    ap.add_argument("--wait-quiet", type=float, default=0,
                    help="before each trial, wait up to S s for a second with the machine < 15%% busy")
    ap.add_argument("--out", default=None)
    ap.add_argument("--work", default=None, help="work dir (data dirs; the shell wrapper passes it)")
    ap.add_argument("--results-dir", default=None, help="also copy report.md and the jsonl files here")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--command", default=None, help="the command line to quote in the report")
    ap.add_argument("--note", default=None, help="a line for the report, e.g. how the binary was built")
    ap.add_argument("--report", metavar="DIR", default=None, help="only rebuild DIR/report.md")
    a = ap.parse_args()
    if a.report:
        txt = report(a.report)
        open(os.path.join(a.report, "report.md"), "w").write(txt)
        print(txt)
        return 0

    a.out = a.out or tempfile.mkdtemp(prefix="continuity-cluster17.")
    os.makedirs(os.path.join(a.out, "trials"), exist_ok=True)
    a.out = os.path.abspath(a.out)
    own_work = a.work is None
    a.work = a.work or tempfile.mkdtemp(prefix="continuity-cluster17-work.")
    os.makedirs(a.work, exist_ok=True)
    a.continuity_bin = os.path.abspath(a.continuity_bin)
    if not os.access(a.continuity_bin, os.X_OK):
        raise SystemExit(f"no continuity binary at {a.continuity_bin}")
    parts = a.parts.split(",")

    def on_signal(sig, frm):
        raise KeyboardInterrupt(f"signal {sig}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    b = None
    rc = 0
    try:
        with open(os.path.join(a.out, "machine.json"), "w") as f:
            json.dump(bl.machine(a.continuity_bin), f)
        params = {k: v for k, v in vars(a).items()}
        params["command"] = a.command or " ".join(shlex.quote(x) for x in sys.argv)
        params["etcd_version"] = subprocess.run([a.etcd, "--version"], capture_output=True, text=True).stdout.split("\n")[0]
        fs = subprocess.run(["df", "--output=fstype", a.work], capture_output=True, text=True).stdout.split()
        params["work_fs"] = f"{fs[-1] if fs else '?'} ({a.work})"
        with open(os.path.join(a.out, "params.json"), "w") as f:
            json.dump(params, f, indent=1)
        log(f"results: {a.out}   work: {a.work}   loadavg {bl.loadavg()}")
        b = Bench(a)
        log(f"continuity: {a.continuity_bin} (sha256 {bl.machine(a.continuity_bin).get('continuity_sha256')})")
        fj = os.path.join(a.out, "failover.jsonl")
        open(fj, "w").close()
        if any(p.startswith("cluster") for p in parts) or "requestpath" in parts:
            b.start_etcd()
        plan = []
        if "cluster" in parts:
            plan += [("cluster", i) for i in range(1, a.trials + 1)]
        if "standalone" in parts:
            plan += [("standalone", i) for i in range(1, a.standalone_trials + 1)]
        if "cluster-api" in parts:
            plan += [("cluster-api", i) for i in range(1, a.api_trials + 1)]
        if "cluster-leaderkill" in parts:
            plan += [("cluster-leaderkill", i) for i in range(1, a.leaderkill_trials + 1)]
        if "standalone-api" in parts:
            plan += [("standalone-api", i) for i in range(1, a.api_trials + 1)]
        for mode, i in plan:
            wait_quiet(a.wait_quiet)
            log(f"trial {mode} #{i} (loadavg {bl.loadavg()})")
            try:
                rec = b.trial(mode, i)
            except BenchError as e:
                log(f"ERROR in {mode} #{i}: {e}")
                rec = {"mode": mode, "trial": i, "error": str(e), "loadavg_before": bl.loadavg()}
                rc = 1
            with open(fj, "a") as f:
                f.write(json.dumps(rec) + "\n")
            if "error" not in rec:
                per = rec["per_engine"]
                log(f"   to last engine {rec['to_last_engine_ms']} ms; per engine "
                    + ", ".join(f"{n} {p['first_replica_ms']} (failed {p['failed_after_kill']})" for n, p in per.items())
                    + f"; replicaof calls {rec['replicaof_calls']}; epochs {rec['final_epochs']}; "
                    f"ready {rec['ready_s']} s")
                for n in anomalies([rec]):
                    log("   NOTE: " + n)
            time.sleep(a.pause)
        if "requestpath" in parts:
            log("request path: cluster vs standalone engine")
            recs = b.requestpath()
            with open(os.path.join(a.out, "requestpath.jsonl"), "w") as f:
                for r in recs:
                    f.write(json.dumps(r) + "\n")
    except KeyboardInterrupt as e:
        log(f"interrupted ({e})")
        rc = 130
    finally:
        if b is not None:
            b.procs.stop_all()
        if own_work and not a.keep:
            shutil.rmtree(a.work, ignore_errors=True)
    txt = report(a.out)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(txt)
    print(txt)
    if a.results_dir:
        os.makedirs(a.results_dir, exist_ok=True)
        for fn in ("report.md", "failover.jsonl", "requestpath.jsonl", "params.json", "machine.json", "idle_cpu.json",
                   "requestpath_cluster_sessions.json"):
            if os.path.exists(os.path.join(a.out, fn)):
                shutil.copy(os.path.join(a.out, fn), a.results_dir)
        log(f"copied the report and raw records to {a.results_dir}")
    log(f"raw results and report: {a.out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
