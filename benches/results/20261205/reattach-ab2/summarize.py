"""Summary of an A/B of benches/failover.sh runs: DIR names are BUILD-N."""
import json, statistics, sys, collections
rows = collections.defaultdict(list)
for d in sys.argv[1:]:
    build = d.rstrip("/").split("/")[-1].rsplit("-", 1)[0]
    for line in open(f"{d}/failover.jsonl"):
        r = json.loads(line)
        rows[(r["target"], build)].append(r)
def med(xs):
    xs = [x for x in xs if x is not None]
    return (statistics.median(xs), min(xs), max(xs)) if xs else (None, None, None)
print("| target | build | n | gap ms median [min-max] | over 20 ms | first backup reply after the kill, ms median [max] | first request latency ms median [max] | failed |")
print("|---|---|---|---|---|---|---|---|")
for (t, b), rs in sorted(rows.items()):
    g = med([r["gap_last_ok_to_first_backup_ms"] for r in rs])
    f = med([r["first_backup_reply_ms"] for r in rs])
    l = med([r["first_backup_req_latency_ms"] for r in rs])
    over = sum(1 for r in rs if (r["gap_last_ok_to_first_backup_ms"] or 0) > 20)
    failed = sum(r["failed_requests_total"] for r in rs)
    print(f"| {t} | {b} | {len(rs)} | {g[0]:.1f} [{g[1]:.1f}-{g[2]:.1f}] | {over} | {f[0]:.1f} [{f[2]:.1f}] | {l[0]:.1f} [{l[2]:.1f}] | {failed} |")
