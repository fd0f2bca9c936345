#!/usr/bin/env python3
"""Bolt through continuity: queries per second and latency with the official
Python `neo4j` driver against a real Bolt server (ArcadeDB, as in the tests),
direct and through one or more continuity binaries, alternated in rounds.

    python3 benches/bolt_load.py --continuity-bin OLD,NEW [--rounds 3] [--queries 2000]
                                 [--scheme bolt|neo4j]

Each run: one driver, one session, `--queries` x `RETURN 1` one after the
other (what the relay adds per round trip), then the same with 8 threads each
with its own session (throughput), after one warm-up run against the server. Reports medians per target, and
continuity / direct ratios. The proxy's CPU per query is read from
/proc/PID/stat. Needs python3 with `neo4j` and `arcadedb_embedded`
(scripts/install-deps). Everything on 127.0.0.1 free ports; every process
started is stopped when the script ends.
"""
import argparse
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from neo4j import GraphDatabase

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PASSWORD = "continuity-bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.1)
    return False


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def run_queries(uri, n, threads):
    """n queries in total over `threads` sessions; returns (qps, p50 ms, p99 ms)."""
    lat = []
    lock = threading.Lock()
    with GraphDatabase.driver(uri, auth=("root", PASSWORD)) as d:
        d.verify_connectivity()

        errors = []

        def worker(k):
            mine = []
            try:
                with d.session() as s:
                    for _ in range(k):
                        t = time.perf_counter()
                        s.run("RETURN 1").consume()
                        mine.append(time.perf_counter() - t)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)
            with lock:
                lat.extend(mine)

        per = n // threads
        ts = [threading.Thread(target=worker, args=(per,)) for _ in range(threads)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        took = time.perf_counter() - t0
    if errors or not lat:
        raise RuntimeError(f"{uri}: {errors[:1]}")
    lat.sort()
    return (len(lat) / took, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--continuity-bin", required=True, help="comma-separated binaries")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--scheme", choices=["bolt", "neo4j"], default="bolt")
    a = ap.parse_args()
    bins = a.continuity_bin.split(",")
    work = tempfile.mkdtemp(prefix="continuity-bolt-load.")
    procs = []
    try:
        bolt, http = free_port(), free_port()
        arcade = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "scripts/arcadedb_server.py"),
             "--bolt-port", str(bolt), "--http-port", str(http), "--root-password", PASSWORD,
             "--database", "neo4j", "--data", os.path.join(work, "arcadedb")],
            stdout=open(os.path.join(work, "arcadedb.log"), "w"), stderr=subprocess.STDOUT)
        procs.append(arcade)
        if not wait_port(bolt, 90):
            sys.exit("ArcadeDB did not open its Bolt port; see " + work)
        # The port opens before the database exists: wait for a query.
        end = time.time() + 90
        while True:
            try:
                with GraphDatabase.driver(f"bolt://127.0.0.1:{bolt}", auth=("root", PASSWORD)) as d:
                    d.execute_query("RETURN 1")
                break
            except Exception as e:  # noqa: BLE001 - any failure: not ready yet
                if time.time() > end:
                    sys.exit(f"ArcadeDB answers no query: {e}")
                time.sleep(0.5)
        engines = []
        for i, b in enumerate(bins):
            listen, ctl = free_port(), free_port()
            cfg = os.path.join(work, f"engine-{i}.toml")
            with open(cfg, "w") as f:
                f.write(f"""data_dir = "{work}/data-{i}"
[control]
listen = "127.0.0.1:{ctl}"
[[control.token]]
name = "bench"
role = "viewer"
sha256 = "{secrets.token_hex(32)}"
[health]
check_interval_seconds = 1
[[service]]
name = "neo4j"
kind = "neo4j"
listen = "127.0.0.1:{listen}"
upstreams = [{{ name = "neo4j-primary", address = "127.0.0.1:{bolt}", role = "primary" }}]
""")
            p = subprocess.Popen([b, "run", "--config", cfg],
                                 stdout=open(cfg + ".log", "w"), stderr=subprocess.STDOUT)
            procs.append(p)
            if not wait_port(listen, 20):
                sys.exit(f"continuity {b} did not listen; see {cfg}.log")
            engines.append((f"continuity[{i}] {b}", listen, p.pid))
        # Warm the JVM up first, so that the first target is not the slow one.
        run_queries(f"bolt://127.0.0.1:{bolt}", a.queries, 8)
        targets = [("direct", bolt, None)] + engines
        rows = {name: {"serial": [], "parallel": [], "cpu_us": []} for name, _, _ in targets}
        tick = os.sysconf("SC_CLK_TCK")
        for r in range(a.rounds):
            order = targets if r % 2 == 0 else [targets[0]] + engines[::-1]
            for name, port, pid in order:
                uri = f"{a.scheme}://127.0.0.1:{port}"
                before = cpu_ticks(pid) if pid else 0
                serial = run_queries(uri, a.queries, 1)
                parallel = run_queries(uri, a.queries, 8)
                if pid:
                    rows[name]["cpu_us"].append(
                        (cpu_ticks(pid) - before) / tick * 1e6 / (2 * a.queries))
                rows[name]["serial"].append(serial)
                rows[name]["parallel"].append(parallel)
                print(f"round {r + 1} {name}: serial {serial[0]:.0f} q/s p50 {serial[1]:.3f} ms "
                      f"p99 {serial[2]:.3f} ms; 8 sessions {parallel[0]:.0f} q/s", file=sys.stderr)
        med = lambda xs: statistics.median(xs) if xs else None
        print(f"| target | serial q/s | serial p50 ms | serial p99 ms | 8 sessions q/s | proxy CPU us/query |")
        print("|---|---|---|---|---|---|")
        summary = {}
        for name, _, _ in targets:
            s = rows[name]
            summary[name] = {
                "serial_qps": med([x[0] for x in s["serial"]]),
                "serial_p50_ms": med([x[1] for x in s["serial"]]),
                "serial_p99_ms": med([x[2] for x in s["serial"]]),
                "parallel_qps": med([x[0] for x in s["parallel"]]),
                "cpu_us": med(s["cpu_us"]),
            }
            m = summary[name]
            cpu = "-" if m["cpu_us"] is None else f"{m['cpu_us']:.1f}"
            print(f"| {name} | {m['serial_qps']:.0f} | {m['serial_p50_ms']:.3f} | "
                  f"{m['serial_p99_ms']:.3f} | {m['parallel_qps']:.0f} | {cpu} |")
        print(json.dumps({"rounds": a.rounds, "queries": a.queries, "scheme": a.scheme,
                          "summary": summary}))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()
