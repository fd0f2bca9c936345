import json,sys,glob,statistics as st,collections
# usage: ab_sum.py DIR-prefix...  groups by variant name (dir basename before '-N')
rows=collections.defaultdict(lambda: collections.defaultdict(list))
for d in sys.argv[1:]:
    var=d.rstrip('/').split('/')[-1].rsplit('-',1)[0]
    runs=[json.loads(l) for l in open(d+'/runs.jsonl')]
    by=collections.defaultdict(dict)
    for r in runs:
        if r.get('exit')!=0: continue
        if r.get('foreign_cpu_pct',0)>=5: continue
        by[(r['bench'],r['round'])][r['target']]=r
    for (b,rd),t in by.items():
        h=t.get('haproxy')
        for tg in ('continuity','continuity-mux'):
            c=t.get(tg)
            if not c or not h: continue
            if 'redis' in c:
                for k in ('SET','GET'):
                    rows[(b,tg,k,'rps C/H')][var].append(c['redis'][k]['rps']/h['redis'][k]['rps'])
                    rows[(b,tg,k,'p99 C/H')][var].append(c['redis'][k]['p99_ms']/max(h['redis'][k]['p99_ms'],1e-9))
            elif 'pgbench' in c:
                rows[(b,tg,'','tps C/H')][var].append(c['pgbench']['tps']/h['pgbench']['tps'])
            elif 'tps' in c:
                rows[(b,tg,'','tps C/H')][var].append(c['tps']/h['tps'])
            rows[(b,tg,'','cpu/op C/H')][var].append(c['proxy_cpu_us_per_op']/h['proxy_cpu_us_per_op'])
            rows[(b,tg,'','cpu/op us')][var].append(c['proxy_cpu_us_per_op'])
vars_=sorted({v for r in rows.values() for v in r})
print('| bench | target | op | metric | '+' | '.join(f'{v} median [n]' for v in vars_)+' |')
for k in sorted(rows):
    print('| '+' | '.join(k)+' | '+' | '.join(f"{st.median(rows[k][v]):.3f} [{len(rows[k][v])}]" if rows[k][v] else '-' for v in vars_)+' |')
