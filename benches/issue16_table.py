#!/usr/bin/env python3
"""Issue #16's table from one benches/issue16.sh run: DIR/table.md.

    python3 benches/issue16_table.py DIR

Reads DIR/load/runs.jsonl, DIR/http/runs.jsonl, DIR/connmem{,-mux}/results.json,
DIR/demo/rss.txt and DIR/failover/failover.jsonl. Every figure is a ratio of medians over
the rounds (noisy runs that were repeated are left out, as in the scripts' own reports):
C = continuity's default relay, M = `multiplex = true`, H = HAProxy, D = direct. A row is
met when the shipped default (C) or the opt-in multiplexing (M) meets it; the table says
which.
"""
import json
import os
import statistics
import sys


def runs(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    return [r for r in recs if not r.get("superseded") and r.get("exit", 0) == 0]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def f3(x):
    return "-" if x is None else f"{x:.3f}"


class Table:
    def __init__(self):
        self.rows = []

    def add(self, load, target, values, ok):
        """values: [(label, ratio)], ok(ratio) -> bool; met if any labelled value is ok."""
        cells = [f"{label} {f3(v)}" for label, v in values]
        met = [label for label, v in values if v is not None and ok(v)]
        known = any(v is not None for _, v in values)
        verdict = ("**yes** (" + ", ".join(met) + ")") if met else ("no" if known else "not measured")
        self.rows.append((load, target, " · ".join(cells), verdict))

    def md(self):
        out = ["| load | target | measured | met |", "|---|---|---|---|"]
        out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows]
        return out


def load_rows(t, d):
    recs = runs(os.path.join(d, "load", "runs.jsonl"))

    def val(bench, target, get):
        return med([get(r) for r in recs if r["bench"] == bench and r["target"] == target])

    def redis(bench, target, op, key):
        return val(bench, target, lambda r: (r.get("redis") or {}).get(op, {}).get(key))

    def pg(bench, target, key):
        return val(bench, target, lambda r: (r.get("pgbench") or {}).get(key))

    def cpu(bench, target):
        return val(bench, target, lambda r: r.get("proxy_cpu_us_per_op"))

    def vs_h(get):
        return [(lab, ratio(get(tg), get("haproxy"))) for lab, tg in
                (("C/H", "continuity"), ("M/H", "continuity-mux"))]

    at_least = lambda x: lambda v: v >= x  # noqa: E731
    at_most = lambda x: lambda v: v <= x  # noqa: E731
    for op in ("SET", "GET"):
        t.add(f"redis -c 50 {op}", ">= 1.2x req/s",
              vs_h(lambda tg: redis("redis_np", tg, op, "rps")), at_least(1.2))
        for p in ("p50", "p99"):
            t.add(f"redis -c 50 {op} {p}", "<= HAProxy's",
                  vs_h(lambda tg: redis("redis_np", tg, op, f"{p}_ms")), at_most(1.0))
    for op in ("SET", "GET"):
        t.add(f"redis -c 50 -P 16 {op}", ">= 1.2x req/s",
              vs_h(lambda tg: redis("redis_p16", tg, op, "rps")), at_least(1.2))
    for op in ("SET", "GET"):
        for stat in ("p50", "avg"):
            direct = redis("redis_c1", "direct", op, f"{stat}_ms")

            def added(tg):
                p = redis("redis_c1", tg, op, f"{stat}_ms")
                return None if p is None or direct is None else p - direct

            # redis-benchmark gives its percentiles in 8 us steps (0.055, 0.063,
            # 0.071 ms...) and the mean to 1 us: the added mean is shown beside
            # the added p50, which those steps can leave 0 or equal.
            us = ", ".join(f"{lab} {'-' if added(tg) is None else f'+{added(tg) * 1000:.0f} us'}"
                           for lab, tg in (("C", "continuity"), ("M", "continuity-mux"), ("H", "haproxy")))
            t.add(f"redis -c 1 {op} added {'mean' if stat == 'avg' else stat} ({us})",
                  "<= 0.6x HAProxy's added p50" + (" (the mean, for resolution)" if stat == "avg" else ""),
                  vs_h(added), at_most(0.6))
        t.add(f"redis -c 1 {op} p99", "<= HAProxy's",
              vs_h(lambda tg: redis("redis_c1", tg, op, "p99_ms")), at_most(1.0))
    for bench, name in (("pg_S", "pgbench -S -c 16"), ("pg_tpcb", "pgbench TPC-B -c 8")):
        t.add(name, ">= 1.2x tps", vs_h(lambda tg: pg(bench, tg, "tps")), at_least(1.2))
        t.add(f"{name} latency", "<= HAProxy's", vs_h(lambda tg: pg(bench, tg, "lat_avg_ms")), at_most(1.0))
    for bench in ("redis_np", "redis_p16", "redis_c1", "pg_S", "pg_tpcb"):
        t.add(f"proxy CPU per op, {bench}", "<= 0.75x HAProxy's", vs_h(lambda tg: cpu(bench, tg)), at_most(0.75))
    # Context: how far HAProxy is from direct (the physical limit) on each row.
    ctx = []
    for bench, get in (("redis_np", lambda tg: redis("redis_np", tg, "SET", "rps")),
                       ("redis_p16", lambda tg: redis("redis_p16", tg, "SET", "rps")),
                       ("pg_S", lambda tg: pg("pg_S", tg, "tps")),
                       ("pg_tpcb", lambda tg: pg("pg_tpcb", tg, "tps"))):
        ctx.append(f"{bench} D/H {f3(ratio(get('direct'), get('haproxy')))}")
    return ctx


def http_rows(t, d):
    recs = runs(os.path.join(d, "http", "runs.jsonl"))

    def val(mode, target, key):
        return med([(r.get("wrk") or {}).get(key) for r in recs
                    if r.get("mode") == mode and r["target"] == target])

    def cpu(mode, target):
        return med([r.get("proxy_cpu_us_per_op") for r in recs
                    if r.get("mode") == mode and r["target"] == target])

    for mode, name in (("keepalive", "wrk keep-alive"), ("close", "wrk Connection: close")):
        t.add(name, ">= 1.2x req/s", [("C/H", ratio(val(mode, "continuity", "rps"), val(mode, "haproxy", "rps")))],
              lambda v: v >= 1.2)
        t.add(f"{name} p99", "<= HAProxy's",
              [("C/H", ratio(val(mode, "continuity", "p99_ms"), val(mode, "haproxy", "p99_ms")))],
              lambda v: v <= 1.0)
        t.add(f"proxy CPU per request, {name}", "<= 0.75x HAProxy's",
              [("C/H", ratio(cpu(mode, "continuity"), cpu(mode, "haproxy")))], lambda v: v <= 0.75)


def memory_rows(t, d):
    out = []
    for sub, label in (("connmem", "relay"), ("connmem-mux", "multiplexed")):
        p = os.path.join(d, sub, "results.json")
        if not os.path.exists(p):
            continue
        with open(p) as f:
            res = json.load(f)
        n = res.get("params", {}).get("conns")
        for proto, by in res.get("protocols", {}).items():
            c, h = by.get("continuity", {}), by.get("haproxy", {})
            kib = c.get("kib_per_conn")
            t.rows.append((f"memory per idle connection, {proto} ({label}, {n} conns)", "<= 4 KiB",
                           f"{f3(kib)} KiB (HAProxy {f3(h.get('kib_per_conn'))})",
                           "**yes**" if kib is not None and kib <= 4 else "no"))
            s = c.get("s_to_within_1_2x_idle")
            hs = h.get("s_to_within_1_2x_idle")
            hs = "not within 12 s" if hs is None else f"{hs} s"
            t.rows.append((f"RSS after close, {proto} ({label})", "within 1.2x idle in 10 s",
                           f"{s} s (HAProxy: {hs})",
                           "**yes**" if s is not None and s <= 10 else "no"))
        o = res.get("outage", {}).get("continuity")
        if o:
            kib = o.get("kib_per_held_client")
            ok = o.get("all_served") and kib is not None and kib <= 4
            t.rows.append((f"outage, redis ({label})", "every held client served, <= 4 KiB each",
                           f"{o.get('pong')}/{o.get('clients')} served, {f3(kib)} KiB per held client "
                           f"(HAProxy {f3(res['outage'].get('haproxy', {}).get('kib_per_held_client'))}, "
                           f"{res['outage'].get('haproxy', {}).get('pong')} served)",
                           "**yes**" if ok else "no"))
    p = os.path.join(d, "demo", "rss.txt")
    if os.path.exists(p):
        with open(p) as f:
            kb = [int(x[1]) for x in (line.split() for line in f) if len(x) == 2]
        m = med(kb)
        t.rows.append(("idle RSS, demo config", "<= 20 MB",
                       "-" if m is None else f"{m / 1024:.1f} MB (at 45, 50, 55 s: {kb})",
                       "**yes**" if m is not None and m <= 20 * 1024 else "no"))
    return out


def profile_rows(d):
    """Where each proxy's CPU goes, per operation: user and kernel time from the measured runs
    (/proc/PID/stat), system calls and context switches from the profile pass (`--perf`)."""
    sets = []
    for sub, key in (("load", "bench"), ("http", "mode")):
        main, prof = (runs(os.path.join(d, *p, "runs.jsonl")) for p in ((sub,), ("profile", sub)))
        names = []
        for r in main + prof:
            if r.get(key) not in names:
                names.append(r.get(key))
        for name in names:
            sets.append((name if sub == "load" else f"wrk {name}", key, name, main, prof))
    out = ["| load | proxy | CPU us/op | user us/op | kernel us/op | syscalls/op | "
           "context switches/op |", "|---|---|---|---|---|---|---|"]
    for label, key, name, main, prof in sets:
        for tg, short in (("continuity", "C"), ("continuity-mux", "M"), ("haproxy", "H")):
            mine = [r for r in main if r.get(key) == name and r["target"] == tg]
            theirs = [r for r in prof if r.get(key) == name and r["target"] == tg]
            if not mine and not theirs:
                continue

            def m(rs, k, nd):
                v = med([r.get(k) for r in rs])
                return "-" if v is None else f"{v:.{nd}f}"
            out.append(f"| {label} | {short} | {m(mine, 'proxy_cpu_us_per_op', 1)} | "
                       f"{m(mine, 'proxy_user_us_per_op', 1)} | {m(mine, 'proxy_sys_us_per_op', 1)} | "
                       f"{m(theirs, 'proxy_syscalls_per_op', 2)} | {m(theirs, 'proxy_cswitch_per_op', 2)} |")
    return out if len(out) > 2 else []


def bound_rows(d):
    """For each throughput load: the CPU the rest of the benchmark (client and servers) spends
    per operation in HAProxy's runs, HAProxy's own, and from them the most any proxy could
    gain on HAProxy by costing nothing (the load is CPU-bound on the machine's cores), and the
    CPU per operation a proxy may spend to reach 1.2x HAProxy's rate."""
    out = ["| load | machine busy % (H) | client + servers us/op (H) | HAProxy us/op | "
           "a zero-CPU proxy / HAProxy | CPU for 1.2x: us/op (x HAProxy's) | "
           "C us/op: user + kernel | M us/op: user + kernel |", "|---|---|---|---|---|---|---|---|"]
    sets = [(b, "bench", b, os.path.join(d, "load", "runs.jsonl"))
            for b in ("redis_np", "redis_p16", "pg_S", "pg_tpcb")]
    sets += [(f"wrk {m}", "mode", m, os.path.join(d, "http", "runs.jsonl")) for m in ("keepalive", "close")]
    cache = {}
    for label, key, name, path in sets:
        recs = cache.setdefault(path, runs(path))
        try:
            with open(os.path.join(os.path.dirname(path), "machine.json")) as f:
                nproc = int(json.load(f)["nproc"])
        except (OSError, ValueError, KeyError, TypeError):
            nproc = os.cpu_count() or 2

        def per_op(tg):
            rs = [r for r in recs if r.get(key) == name and r["target"] == tg and r.get("ops")]
            rest, px, busy, us, ks = [], [], [], [], []
            for r in rs:
                ours = ((r.get("machine_busy_pct") or 0) - (r.get("foreign_cpu_pct") or 0)) / 100 \
                    * nproc * r["wall_s"]
                p = r.get("proxy_cpu_s") or 0
                rest.append((ours - p) * 1e6 / r["ops"])
                px.append(p * 1e6 / r["ops"])
                busy.append(r.get("machine_busy_pct"))
                us.append(r.get("proxy_user_us_per_op"))
                ks.append(r.get("proxy_sys_us_per_op"))
            return med(rest), med(px), med(busy), med(us), med(ks)

        rest, h, busy, _, _ = per_op("haproxy")
        if rest is None or h is None or rest <= 0:
            continue

        def split(tg):
            _, c, _, u, k = per_op(tg)
            if c is None:
                return "-"
            parts = f" ({u:.1f} + {k:.1f})" if u is not None and k is not None else ""
            return f"{c:.1f}{parts}"
        need = (rest + h) / 1.2 - rest
        need_txt = f"{need:.1f} ({need / h:.2f}x)" if need > 0 else "none: < 0"
        out.append(f"| {label} | {busy:.0f} | {rest:.1f} | {h:.1f} | {(rest + h) / rest:.3f} | {need_txt} | "
                   f"{split('continuity')} | {split('continuity-mux')} |")
    return out if len(out) > 2 else []


def failover_rows(d):
    recs = runs(os.path.join(d, "failover", "failover.jsonl"))
    by = {}
    for r in recs:
        name = r["label"].rsplit("-r", 1)[0]
        by.setdefault(name, []).append(r)
    out = ["| target, mode | gap ms, median [min-max] | failed requests |", "|---|---|---|"]
    for name, rs in sorted(by.items()):
        gaps = [r.get("gap_last_ok_to_first_backup_ms") for r in rs]
        gaps = [g for g in gaps if g is not None]
        failed = sum(r.get("failed_requests_total") or 0 for r in rs)
        cell = f"{med(gaps):.1f} [{min(gaps):.1f}-{max(gaps):.1f}]" if gaps else "-"
        out.append(f"| {name} | {cell} | {failed} in {len(rs)} trials |")
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    d = sys.argv[1]
    t = Table()
    ctx = load_rows(t, d)
    http_rows(t, d)
    memory_rows(t, d)
    lines = ["# Issue #16: the whole table in one run", ""]
    p = os.path.join(d, "run.txt")
    if os.path.exists(p):
        with open(p) as f:
            lines += [line.rstrip() + "  " for line in f]
        lines.append("")
    lines += t.md()
    lines += ["", "HAProxy against direct (the physical limit) in the same run: " + ", ".join(ctx) + ".", ""]
    prof = profile_rows(d)
    if prof:
        lines += ["## Where the proxies' CPU goes", "",
                  "Per operation (a redis-benchmark request, a pgbench transaction, a wrk request), "
                  "medians. User and kernel time: the measured runs above (/proc/PID/stat; its "
                  "10 ms ticks make single runs coarse). System calls and context switches (a "
                  "thread switched out: nearly always asleep until the next event, so one "
                  "wake-up each): the profile pass, one round with `perf stat -e "
                  "raw_syscalls:sys_enter,context-switches -p PROXY` (profile/).", ""] + prof + [""]
    bound = bound_rows(d)
    if bound:
        lines += ["## How far a proxy can get ahead of HAProxy on these loads", "",
                  "Client, servers and proxy share the machine's cores, and these loads keep them "
                  "busy: a proxy gains rate only by leaving CPU to the client and the servers. "
                  "From HAProxy's runs (medians per operation; 'client + servers' is the CPU of "
                  "everything in the benchmark but the proxy, from the machine's busy time less "
                  "foreign CPU): the rate a proxy that cost no CPU at all would reach against "
                  "HAProxy's, and the CPU per operation a proxy may spend to reach 1.2x. Beside "
                  "it, what continuity spends (C: relay, M: multiplexed), split into user and "
                  "kernel time. Multiplexing also lowers the servers' own CPU per operation, "
                  "which this bound, taken from HAProxy's runs, does not credit.", ""] + bound + [""]
    lines += ["## Failover gap", ""] + failover_rows(d)
    met = sum(1 for r in t.rows if r[3].startswith("**yes"))
    lines += ["", f"{met} of {len(t.rows)} rows met."]
    with open(os.path.join(d, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
