// The eight panels (SPEC 8, PHASE14-DESIGN; the cluster, issue #17). Each render function takes
// the panel's body element, the page state and the context (role, the
// action launcher) and redraws the panel from the state alone.

import { h, s, fill, time, age, duration, ms, pct } from './dom.js';

const CATEGORIES = ['core', 'federal', 'vendor', 'internal'];
const SLA_TARGET = { core: 99.99, federal: 99.5, vendor: 99.0, internal: 99.9 };
const DEFAULT_THRESHOLD_MS = 1000;

/** SPEC 8 colours: green healthy, yellow degraded/warning, red outage/critical, grey offline. */
export function tone(status) {
  switch (String(status || '').toLowerCase()) {
    case 'healthy': case 'up': case 'connected': case 'normal': case 'ok': case 'info':
      return 'ok';
    case 'degraded': case 'warning': case 'slow': case 'connecting': case 'draining':
    case 'failover': case 'failed over':
      return 'warn';
    case 'down': case 'failed': case 'critical': case 'error': case 'emergency': case 'outage':
      return 'bad';
    default:
      return 'grey';
  }
}

export function chip(label, t = tone(label), extra = {}) {
  return h('span', { class: `chip ${t}`, ...extra }, label);
}

const STATUS_LABEL = { healthy: 'healthy', degraded: 'degraded', down: 'down', unknown: 'unknown' };

function statusChip(status) {
  return chip(STATUS_LABEL[status] || String(status || 'unknown'), tone(status));
}

function services(st) {
  return (st.deep && st.deep.services) || [];
}

function failoverOf(st, name) {
  return ((st.failover && st.failover.services) || []).find((x) => x.name === name);
}

// ------------------------------------------------------------ HealthGrid

function upstreamTone(u) {
  if (u.fenced) return 'grey';
  if (u.health === 'down' || u.pool_state === 'failed') return 'bad';
  if (u.health === 'up') return u.slow || u.diverged || u.quota_limited ? 'warn' : 'ok';
  return 'grey';
}

function upstreamLabel(u) {
  if (u.fenced) return u.health === 'down' ? 'down, fenced' : 'fenced';
  if (u.health === 'down') return 'down';
  if (u.health === 'up') return u.diverged ? 'diverged' : u.slow ? 'slow' : u.quota_limited ? 'up, 429 quota' : 'up';
  return 'unknown';
}

function serviceTile(svc, st) {
  const fo = failoverOf(st, svc.name) || svc;
  const t = tone(svc.status);
  const inFailover = fo.in_failover;
  const ups = (svc.upstreams || []).map((u) =>
    h('span', { class: `up${u.active ? ' active' : ''}`, dataset: { upstream: u.name, health: u.health, fenced: String(Boolean(u.fenced)) },
      title: [u.address, u.last_error].filter(Boolean).join(' · ') || undefined },
      h('span', { class: `dot ${upstreamTone(u)}`, 'aria-hidden': 'true' }),
      `${u.name} `,
      h('span', { class: 'tag' }, `${upstreamLabel(u)} · ${u.role}${u.active ? ' · active' : ''}`)));
  return h('article', { class: `tile ${inFailover && t === 'ok' ? 'warn' : t}`, dataset: { service: svc.name, status: svc.status } },
    h('div', { class: 'head' },
      h('span', { class: 'name' }, svc.name),
      h('span', {}, inFailover ? chip('failed over', 'warn') : null, ' ', statusChip(svc.status))),
    h('div', { class: 'kv' },
      h('span', {}, 'kind ', h('b', {}, svc.kind)),
      h('span', {}, 'active ', h('b', {}, svc.active_upstream || 'none')),
      h('span', {}, 'epoch ', h('b', {}, fo.epoch ?? svc.epoch ?? '—')),
      h('span', {}, 'latency ', h('b', {}, ms(svc.latency_ms))),
      svc.consecutive_failures ? h('span', {}, 'failures ', h('b', {}, svc.consecutive_failures)) : null,
      svc.held_connections ? h('span', {}, 'held ', h('b', {}, svc.held_connections)) : null),
    h('div', { class: 'ups' }, ups));
}

export function renderHealthGrid(body, st) {
  const list = services(st);
  const groups = CATEGORIES.map((c) => {
    const of = list.filter((x) => x.category === c);
    return h('section', { class: 'group', 'aria-label': `${c} services` },
      h('h3', {}, `${c} · ${of.length}`),
      of.length ? of.map((x) => serviceTile(x, st)) : h('p', { class: 'empty' }, 'none configured'));
  });
  fill(body, h('div', { class: 'groups' }, groups));
  const m = st.health && st.health.metrics;
  return m
    ? `${list.length} services · ${m.total_checks} checks · ${pct(m.uptime_percent, 2)} up`
    : `${list.length} services`;
}

// ------------------------------------------------------------ ServiceLatencyPanel

function axisLabel(v) {
  const n = Number(v.toPrecision(1));
  return n >= 1000 ? `${n / 1000} s` : `${n} ms`;
}

function latencyChart(name, buckets, threshold, live) {
  // A log scale: a 1 ms p50 and a 1 s threshold are both readable.
  const W = 320, H = 96, L = 44, R = 6, T = 6, B = 14;
  const now = Date.now();
  const from = now - 3600 * 1000;
  const x = (t) => L + ((t - from) / (3600 * 1000)) * (W - L - R);
  const pts = buckets
    .map((b) => ({ t: new Date(b.start).getTime() + 30000, p50: b.latency_p50_ms, p99: b.latency_p99_ms, st: b.status }))
    .filter((p) => p.t >= from);
  if (live && Number.isFinite(live.v) && now - live.t < 120000) pts.push({ t: Math.min(live.t, now), p50: live.v, p99: null, st: 'live' });
  const vals = pts.flatMap((p) => [p.p50, p.p99]).filter((v) => Number.isFinite(v) && v > 0);
  const lo = 10 ** Math.floor(Math.log10(Math.max(0.01, Math.min(threshold / 10, ...vals))));
  const hi = 10 ** Math.ceil(Math.log10(Math.max(threshold * 1.01, ...vals)));
  const y = (v) => T + (1 - (Math.log10(Math.max(v, lo)) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * (H - T - B);
  const path = (key) => {
    let d = '';
    let pen = false;
    let prev = null;
    for (const p of pts) {
      const gap = prev !== null && p.t - prev > 150000;
      if (!Number.isFinite(p[key]) || gap) pen = false;
      if (Number.isFinite(p[key])) {
        d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p[key]).toFixed(1)}`;
        pen = true;
        prev = p.t;
      }
    }
    return d;
  };
  const dotsFor = (key, cls) => pts.filter((p) => Number.isFinite(p[key]))
    .slice(-1).map((p) => s('circle', { class: cls, cx: x(p.t).toFixed(1), cy: y(p[key]).toFixed(1), r: 2.2 }));
  const downs = pts.filter((p) => p.st === 'down').map((p) =>
    s('rect', { class: 'l-down', x: x(p.t - 30000).toFixed(1), y: T, width: ((W - L - R) / 60).toFixed(1), height: H - T - B }));
  const decades = [];
  for (let v = lo; v <= hi * 1.001; v *= 10) decades.push(v);
  const grid = decades.map((v) => [
    s('line', { class: 'l-grid', x1: L, x2: W - R, y1: y(v).toFixed(1), y2: y(v).toFixed(1) }),
    s('text', { class: 'ax', x: L - 3, y: (y(v) + 3).toFixed(1), 'text-anchor': 'end' }, axisLabel(v)),
  ]);
  const ticks = [60, 45, 30, 15, 0].map((m) =>
    s('text', { class: 'ax', x: x(now - m * 60000).toFixed(1), y: H - 2, 'text-anchor': m === 60 ? 'start' : m === 0 ? 'end' : 'middle' }, m ? `-${m}m` : 'now'));
  const last = [...pts].reverse();
  const p50 = last.find((p) => Number.isFinite(p.p50));
  const p99 = last.find((p) => Number.isFinite(p.p99));
  const over = p99 && p99.p99 > threshold;
  // The threshold's value on its line, at the right; below the line when
  // the line runs along the top.
  const thY = y(threshold);
  const thLabel = s('text', { class: 'th-label', x: W - R - 2, y: (thY < T + 12 ? thY + 10 : thY - 3).toFixed(1), 'text-anchor': 'end' },
    `threshold ${ms(threshold)}`);
  return h('figure', { class: 'chart', dataset: { service: name, thresholdMs: String(threshold) } },
    h('div', { class: 'head' },
      h('strong', {}, name),
      h('span', { class: over ? 'error' : 'muted' }, `p50 ${ms(p50 && p50.p50)} · p99 ${ms(p99 && p99.p99)}${over ? ' · over threshold' : ''}`)),
    s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img',
      'aria-label': `${name}: latency p50 ${ms(p50 && p50.p50)}, p99 ${ms(p99 && p99.p99)}, threshold ${ms(threshold)}, over the last hour` },
      grid, downs,
      s('line', { class: 'l-th', x1: L, x2: W - R, y1: thY.toFixed(1), y2: thY.toFixed(1) }), thLabel,
      s('path', { class: 'l-p99', d: path('p99') }),
      s('path', { class: 'l-p50', d: path('p50') }),
      dotsFor('p99', 'd-p99'), dotsFor('p50', 'd-p50'),
      ticks));
}

export function renderLatency(body, st) {
  const win = (st.snap1h && st.snap1h.services) || [];
  const list = services(st).filter((x) => x.kind !== 'heartbeat');
  const charts = list.map((svc) => {
    const w = win.find((x) => x.name === svc.name);
    const threshold = Number.isFinite(svc.latency_threshold_ms) && svc.latency_threshold_ms > 0
      ? svc.latency_threshold_ms : DEFAULT_THRESHOLD_MS;
    const live = st.liveLatency[svc.name];
    return latencyChart(svc.name, (w && w.buckets) || [], threshold, live);
  });
  fill(body,
    h('div', { class: 'legend' },
      h('span', {}, h('span', { class: 'sw p50' }), 'p50'),
      h('span', {}, h('span', { class: 'sw p99' }), 'p99'),
      h('span', {}, h('span', { class: 'sw th' }),
        list.every((x) => Number.isFinite(x.latency_threshold_ms))
          ? 'latency threshold (each service\'s latency_threshold_ms)'
          : `latency threshold (${ms(DEFAULT_THRESHOLD_MS)}, the default, where the engine does not say)`),
      h('span', {}, 'per-minute buckets, log scale; shaded: down')),
    charts.length ? h('div', { class: 'charts' }, charts) : h('p', { class: 'muted' }, 'No services.'));
  return st.snap1h ? h('span', {}, 'updated ', time(st.snap1h.generated_at)) : '';
}

// ------------------------------------------------------------ FailoverStatusCard

export function renderFailover(body, st, ctx) {
  const f = st.failover || {};
  const m = f.metrics || {};
  const pools = (st.pools && st.pools.pools) || [];
  const state = f.failover_state || 'unknown';
  const rows = (f.services || []).map((svc) => {
    const deep = services(st).find((x) => x.name === svc.name) || {};
    const mine = pools.filter((p) => p.service === svc.name);
    // A heartbeat (ETL pipeline) has no upstream to fail over to or from.
    const acts = ctx.canAct && deep.kind !== 'heartbeat'
      ? h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'small', 'aria-label': `Trigger failover of ${svc.name}`,
            onclick: () => ctx.act({ kind: 'trigger', service: svc.name }) }, 'Fail over…'),
          h('button', { type: 'button', class: 'small', 'aria-label': `Recover ${svc.name} to its primary`,
            onclick: () => ctx.act({ kind: 'recover', service: svc.name }) }, 'Recover…'))
      : null;
    const poolEls = mine.map((p) => h('span', { class: 'pool', dataset: { pool: p.name } },
      h('span', { class: `dot ${tone(p.state)}`, 'aria-hidden': 'true' }),
      `${p.name} `, h('span', { class: 'muted' }, `${p.state}${p.active ? ', active' : ''}${p.fenced ? ', fenced' : ''}${p.diverged ? ', diverged' : ''}`),
      ctx.canAct
        ? h('button', { type: 'button', class: 'small',
            'aria-label': p.active ? `Planned switchover away from ${p.name}` : `Planned switch to ${p.name}`,
            onclick: () => ctx.act({ kind: p.active ? 'switchover' : 'failback', service: svc.name, pool: p.name }) },
          p.active ? 'Switch over…' : 'Switch to…')
        : null));
    return h('div', { class: 'svc', dataset: { service: svc.name } },
      h('div', { class: 'head' },
        h('strong', {}, svc.name),
        svc.in_failover ? chip('failed over', 'warn') : chip('primary', 'ok'),
        svc.status ? statusChip(svc.status) : null,
        h('span', { class: 'muted' }, `on ${svc.active_upstream || 'none'} · epoch ${svc.epoch}`),
        acts),
      h('div', { class: 'kv' },
        h('span', {}, 'since ', h('b', {}, age(svc.since))),
        h('span', {}, 'held ', h('b', {}, svc.held_connections)),
        svc.fenced && svc.fenced.length ? h('span', {}, 'fenced ', h('b', {}, svc.fenced.join(', '))) : null,
        deep.on_failover ? h('span', {}, 'on failover ', h('b', {}, deep.on_failover)) : null),
      poolEls.length ? h('div', { class: 'pools' }, poolEls) : null);
  });
  const last = st.lastAction;
  fill(body,
    h('div', { class: 'state-line' },
      h('span', { class: 'muted' }, 'Engine'),
      chip(state, tone(state), { class: `chip ${tone(state)} big`, id: 'failover-state' })),
    h('div', { class: 'stats' },
      stat(m.total_failovers, 'failovers'), stat(m.auto_failovers, 'automatic'),
      stat(m.manual_failovers, 'manual'), stat(Number.isFinite(m.avg_recovery_time_seconds) ? duration(m.avg_recovery_time_seconds) : '—', 'avg recovery')),
    rows,
    last ? h('p', { class: `result-line ${last.ok ? 'ok' : 'bad'}`, role: 'status' }, time(last.at), ' ', last.text) : null);
  return `${(f.services || []).length} services`;
}

function stat(v, label) {
  return h('div', { class: 'stat' }, h('div', { class: 'v' }, v ?? '—'), h('div', { class: 'l' }, label));
}

// ------------------------------------------------------------ VendorIntegrationMap

export function renderVendor(body, st) {
  const list = services(st).filter((x) => x.category === 'federal' || x.category === 'vendor');
  const queue = (st.queue && st.queue.services) || [];
  if (!list.length) {
    fill(body, h('p', { class: 'muted' }, 'No federal or vendor services are configured.'));
    return '';
  }
  const rows = list.map((svc) => {
    const q = queue.find((x) => x.service === svc.name);
    const limited = (svc.upstreams || []).filter((u) => u.quota_limited);
    const known = (svc.upstreams || []).some((u) => typeof u.quota_limited === 'boolean');
    const ups = (svc.upstreams || []).map((u) => h('div', {},
      h('span', { class: `dot ${upstreamTone(u)}`, 'aria-hidden': 'true' }), ' ', u.name, ' ',
      h('span', { class: 'muted' }, upstreamLabel({ ...u, quota_limited: false })), // the Quota column says it
      u.last_error && u.health !== 'up' ? h('div', { class: 'muted' }, u.last_error) : null));
    return h('tr', { dataset: { service: svc.name } },
      h('td', {}, h('strong', {}, svc.name), h('div', { class: 'muted' }, svc.category)),
      h('td', {}, statusChip(svc.status)),
      h('td', {}, ups),
      h('td', { class: 'quota', dataset: { quota: limited.length ? 'limited' : known ? 'open' : 'unknown' } },
        limited.length
          ? limited.map((u) => h('div', { dataset: { upstream: u.name } },
              chip('429', 'warn', { title: 'the upstream answered 429: the gateway waits out its Retry-After' }), ' quota',
              (svc.upstreams || []).length > 1 ? ` · ${u.name}` : '',
              h('div', {}, `wait ${duration(u.quota_wait_seconds)}`),
              h('div', { class: 'muted' }, 'until ', time(u.quota_until))))
          : h('span', { class: 'muted' }, known ? 'no 429 window' : '—')),
      h('td', { class: 'num' }, q ? String(q.depth) : '0'),
      h('td', { class: 'num' }, q && q.depth ? duration(q.oldest_age_seconds) : '—'));
  });
  fill(body, h('table', {},
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Endpoint'), h('th', { scope: 'col' }, 'State'),
      h('th', { scope: 'col' }, 'Upstreams'), h('th', { scope: 'col' }, 'Quota'),
      h('th', { scope: 'col', class: 'num' }, 'Queued'), h('th', { scope: 'col', class: 'num' }, 'Oldest'))),
    h('tbody', {}, rows)));
  const depth = queue.reduce((a, q) => a + (q.depth || 0), 0);
  return `${list.length} endpoint${list.length === 1 ? '' : 's'} · ${depth} queued`;
}

// ------------------------------------------------------------ ClusterPanel

const HEALTH_TONE = { up: 'ok', down: 'bad' };

/** One engine's judgement of one upstream, as a table cell. */
function viewCell(view, name) {
  const u = (view.upstreams || []).find((x) => x.name === name);
  if (!u) return h('td', { class: 'muted', dataset: { node: view.node_id, upstream: name, health: 'none' } }, '—');
  const health = u.health || 'unknown';
  return h('td', { class: 'view-cell', dataset: { node: view.node_id, upstream: name, health } },
    h('span', { class: `dot ${HEALTH_TONE[health] || 'grey'}`, 'aria-hidden': 'true' }), ' ', health,
    u.observed_role ? h('span', { class: 'muted' }, ` · ${u.observed_role}`) : null,
    u.consecutive_failures ? h('span', { class: 'muted' }, ` · ${u.consecutive_failures} failures`) : null,
    u.last_error && health !== 'up' ? h('div', { class: 'muted wrap' }, u.last_error) : null);
}

/** A coordinated service: its leader, the agreed route, and every engine's view (upstream x engine). */
function clusterService(svc, c) {
  const r = svc.route;
  const views = svc.views || [];
  const names = [];
  for (const v of views) for (const u of v.upstreams || []) if (!names.includes(u.name)) names.push(u.name);
  if (r && r.active && !names.includes(r.active)) names.unshift(r.active);
  const fenced = (r && r.fenced) || [];
  const quorum = c.quorum ?? Math.floor(views.length / 2) + 1;
  const rows = names.map((name) => {
    const down = views.filter((v) => (v.upstreams || []).some((u) => u.name === name && u.health === 'down')).length;
    return h('tr', { dataset: { upstream: name } },
      h('th', { scope: 'row' }, name,
        r && r.active === name ? [' ', chip('active', 'info')] : null,
        fenced.includes(name) ? [' ', chip('fenced', 'grey')] : null),
      views.map((v) => viewCell(v, name)),
      h('td', { class: 'num', title: `quorum ${quorum}` }, `${down} of ${views.length}`));
  });
  const serving = h('tr', { class: 'view-meta' },
    h('th', { scope: 'row', class: 'muted' }, 'serves from'),
    views.map((v) => h('td', { dataset: { node: v.node_id } }, `${v.active} · epoch ${v.epoch}`, h('div', { class: 'muted' }, 'published ', age(v.at)))),
    h('td', {}));
  const table = views.length
    ? h('table', { class: 'views', 'aria-label': `${svc.service}: each engine's view of each upstream` },
        h('thead', {}, h('tr', {},
          h('th', { scope: 'col' }, 'Upstream'),
          views.map((v) => h('th', { scope: 'col', dataset: { node: v.node_id } }, v.node_id,
            v.node_id === c.node_id ? h('span', { class: 'muted' }, ' (this engine)') : null)),
          h('th', { scope: 'col', class: 'num' }, 'Seen down'))),
        h('tbody', {}, rows, serving))
    : h('p', { class: 'muted' }, 'No engine has published a view of this service.');
  return h('article', { class: 'svc', dataset: { service: svc.service, agrees: String(Boolean(svc.agrees)) } },
    h('div', { class: 'head' },
      h('strong', {}, svc.service),
      h('span', { class: 'muted' }, 'leader ', h('b', { class: 'leader' }, svc.leader || 'none')),
      svc.agrees ? chip('agrees', 'ok') : chip('disagrees', 'bad')),
    r
      ? h('div', { class: 'kv route' },
          h('span', {}, 'agreed route ', h('b', {}, r.active)),
          h('span', {}, 'epoch ', h('b', {}, r.epoch)),
          h('span', {}, 'phase ', r.phase === 'serving' ? h('b', {}, r.phase) : chip(r.phase, 'warn')),
          h('span', {}, 'decided by ', h('b', {}, r.decided_by)),
          h('span', {}, 'trigger ', h('b', {}, r.trigger)),
          r.actor && r.actor !== 'system' ? h('span', {}, 'by ', h('b', {}, r.actor)) : null,
          h('span', {}, 'at ', h('b', {}, time(r.at))),
          svc.route_revision !== null && svc.route_revision !== undefined ? h('span', {}, 'revision ', h('b', {}, svc.route_revision)) : null,
          r.reason ? h('span', { class: 'wrap' }, 'reason ', h('b', {}, r.reason)) : null)
      : h('div', { class: 'kv route' }, h('span', {}, 'no agreed route yet')),
    svc.agrees ? null : h('div', { class: 'kv' },
      h('span', {}, 'this engine serves from ', h('b', {}, svc.local_active || 'none'), ` · epoch ${svc.local_epoch}`)),
    svc.disagreement ? h('p', { class: 'error wrap disagreement', role: 'status' }, svc.disagreement) : null,
    table);
}

export function renderCluster(body, st) {
  const c = st.cluster;
  if (!c) {
    fill(body, h('p', { class: 'muted' }, 'The engine did not say whether it is in a cluster.'));
    return '';
  }
  if (!c.enabled) {
    fill(body, h('p', { class: 'muted', dataset: { cluster: 'standalone' } },
      'standalone: no [cluster]; this engine decides failover alone'));
    return 'standalone';
  }
  const members = c.members || [];
  const list = c.services || [];
  fill(body,
    h('div', { class: 'state-line', dataset: { cluster: c.connected ? 'connected' : 'disconnected' } },
      h('span', { class: 'muted' }, 'This engine'),
      h('strong', { class: 'node' }, c.node_id),
      h('span', { class: 'muted' }, 'in'),
      h('strong', {}, c.cluster_name),
      c.connected
        ? chip('connected to etcd', 'ok', { id: 'cluster-link' })
        : chip('degraded: not connected to etcd', 'warn', { id: 'cluster-link' }),
      h('span', { class: 'muted' }, `etcd revision ${c.revision} · lease ${c.lease_ttl_seconds} s · quorum ${c.quorum ?? 'a majority'}`)),
    c.connected ? null : h('p', { class: 'cluster-down wrap', role: 'status' },
      h('strong', {}, 'Not connected to etcd: '), c.reason || 'no reason given',
      '. Serving the last agreed routes, deciding nothing; what follows is as last read.'),
    h('h3', {}, `Members (${members.length})`),
    members.length
      ? h('table', { class: 'members', 'aria-label': 'Cluster members' },
          h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Engine'), h('th', { scope: 'col' }, 'Joined'), h('th', { scope: 'col' }, 'Version'))),
          h('tbody', {}, members.map((m) => h('tr', { dataset: { node: m.node_id } },
            h('th', { scope: 'row' }, m.node_id, m.node_id === c.node_id ? h('span', { class: 'muted' }, ' (this engine)') : null),
            h('td', {}, age(m.joined_at)),
            h('td', {}, m.version)))))
      : h('p', { class: 'muted' }, 'No member seen.'),
    h('h3', {}, `Coordinated services (${list.length})`),
    list.length ? list.map((svc) => clusterService(svc, c)) : h('p', { class: 'muted' }, 'No service has more than one upstream.'));
  return `${c.cluster_name} · ${members.length} member${members.length === 1 ? '' : 's'} · revision ${c.revision}`;
}

// ------------------------------------------------------------ DiagnosticsTimeline

const SEVERITIES = ['info', 'warning', 'error', 'critical'];

function option(value, label, selected) {
  return h('option', { value, selected: selected ? true : undefined }, label);
}

export function renderTimeline(body, st, ctx) {
  const all = st.events || [];
  const f = st.filters;
  const cats = [...new Set(all.map((e) => e.category).filter(Boolean))].sort();
  const shown = all.filter((e) => (!f.category || e.category === f.category) && (!f.severity || e.severity === f.severity));
  const filters = h('div', { class: 'filters' },
    h('label', { for: 'f-cat' }, 'Category'),
    h('select', { id: 'f-cat', onchange: (ev) => ctx.setFilter('category', ev.target.value) },
      option('', 'all', !f.category), cats.map((c) => option(c, c, f.category === c))),
    h('label', { for: 'f-sev' }, 'Severity'),
    h('select', { id: 'f-sev', onchange: (ev) => ctx.setFilter('severity', ev.target.value) },
      option('', 'all', !f.severity), SEVERITIES.map((c) => option(c, c, f.severity === c))),
    h('span', { class: 'muted' }, `${shown.length} of ${all.length} events`));
  // The axis: the last hour, or back to the oldest shown event.
  const now = Date.now();
  const oldest = shown.reduce((a, e) => Math.min(a, new Date(e.at).getTime()), now - 3600 * 1000);
  const from = Math.max(oldest, now - 24 * 3600 * 1000);
  const W = Math.max(280, Math.round(body.clientWidth - 24) || 600), H = 56, L = 8, R = 8;
  const x = (t) => L + ((t - from) / Math.max(1, now - from)) * (W - L - R);
  const rowOf = { info: 40, warning: 30, error: 20, critical: 10 };
  const dots = shown.map((e) => {
    const t = new Date(e.at).getTime();
    return s('circle', { class: `ev-dot ${e.severity}`, cx: x(t).toFixed(1), cy: rowOf[e.severity] || 40, r: 4 },
      s('title', {}, `${new Date(e.at).toLocaleTimeString()} ${e.severity} ${e.category}: ${e.message}`));
  });
  const span = (now - from) / 60000;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((k) => {
    const t = from + k * (now - from);
    return s('text', { class: 'ax', x: x(t), y: H - 2, 'text-anchor': k === 0 ? 'start' : k === 1 ? 'end' : 'middle' },
      k === 1 ? 'now' : span > 120 ? new Date(t).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' }) : `-${Math.round((1 - k) * span)}m`);
  });
  const svg = h('div', { class: 'timeline' },
    s('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img',
      'aria-label': `${shown.length} diagnostic events on a time axis; the list below has the same events` },
      s('line', { class: 'l-grid', x1: L, x2: W - R, y1: 46, y2: 46 }), dots, ticks));
  const items = shown.slice(0, 150).map((e) => h('li', { dataset: { severity: e.severity, category: e.category } },
    h('details', { open: st.openEvents.has(e.id) ? true : undefined,
      ontoggle: (ev) => { if (ev.target.open) st.openEvents.add(e.id); else st.openEvents.delete(e.id); } },
      h('summary', { 'aria-label': `${e.severity} ${e.category} event${e.service ? ` on ${e.service}` : ''}: ${e.message || e.class}` },
        time(e.at),
        chip(e.severity, e.severity === 'info' ? 'info' : tone(e.severity)),
        h('span', { class: 'cat muted' }, e.category),
        h('span', { class: 'msg' }, e.service ? `${e.service}: ` : '', e.message || e.class)),
      h('dl', {},
        h('dt', {}, 'when'), h('dd', {}, time(e.at, { date: true })),
        h('dt', {}, 'class'), h('dd', {}, e.class || '—'),
        h('dt', {}, 'service'), h('dd', {}, e.service || '—'),
        h('dt', {}, 'upstream'), h('dd', {}, e.upstream || '—'),
        h('dt', {}, 'message'), h('dd', {}, e.message || '—')))));
  fill(body, filters, svg,
    items.length ? h('ul', { class: 'events', 'aria-label': 'Diagnostic events, newest first' }, items)
      : h('p', { class: 'muted' }, all.length ? 'No event matches the filters.' : 'No diagnostic events yet.'));
  const r = st.report && st.report.metrics;
  return r ? `${r.total_events} events · ${r.slow_queries_detected} slow queries` : '';
}

// ------------------------------------------------------------ UptimeAnalytics

function widthClass(pctValue) {
  const v = Math.max(0, Math.min(100, pctValue));
  return `w${Math.round(v / 5) * 5}`;
}

function uptimeOf(win, name) {
  const w = ((win && win.services) || []).find((x) => x.name === name);
  return w ? w.uptime_percent : null;
}

function uptimeCell(v, target) {
  if (v === null || v === undefined) return h('td', { class: 'num muted' }, '—');
  const t = v >= target ? 'ok' : 'bad';
  return h('td', { class: 'num', title: `target ${target} %` },
    h('span', { class: 'sr-only' }, v >= target ? 'meets target: ' : 'below target: '), pct(v, 3));
}

function budgetCell(e) {
  if (!e) return h('td', { class: 'num muted' }, '—');
  const left = e.error_budget_left_percent;
  const t = left > 50 ? 'ok' : left > 0 ? 'warn' : 'bad';
  return h('td', {},
    h('div', { class: 'bar', role: 'img', 'aria-label': `${Math.round(left)} % of the error budget left` },
      h('div', { class: `fill ${t} ${widthClass(left)}` })),
    h('div', { class: 'muted' }, `${Math.round(left)} % · ${duration(Math.max(0, e.error_budget_left_seconds))} left`));
}

export function renderUptime(body, st) {
  const sla = st.sla || { categories: [], services: [] };
  const head = h('thead', {}, h('tr', {},
    h('th', { scope: 'col' }, 'Service'), h('th', { scope: 'col', class: 'num' }, '1 h'),
    h('th', { scope: 'col', class: 'num' }, '24 h'), h('th', { scope: 'col', class: 'num' }, '30 d'),
    h('th', { scope: 'col', class: 'num' }, 'SLA target'), h('th', { scope: 'col', class: 'num' }, `Month (${sla.month || '—'})`),
    h('th', { scope: 'col' }, 'Error budget left'),
    h('th', { scope: 'col', class: 'num' }, 'Down, clients saw'), h('th', { scope: 'col', class: 'num' }, 'Down, absorbed')));
  const rows = [];
  for (const c of CATEGORIES) {
    const ce = (sla.categories || []).find((x) => x.category === c);
    const svcs = services(st).filter((x) => x.category === c);
    if (!svcs.length && !(ce && ce.services)) continue;
    const target = ce ? ce.target_percent : SLA_TARGET[c];
    rows.push(h('tr', { class: 'cat-row' },
      h('td', {}, `${c} (${svcs.length})`), h('td', {}), h('td', {}), h('td', {}),
      h('td', { class: 'num' }, `${target} %`),
      ce ? uptimeCell(ce.achieved_percent, target) : h('td', {}),
      budgetCell(ce),
      h('td', { class: 'num' }, ce ? duration(ce.client_visible_seconds) : '—'),
      h('td', { class: 'num' }, ce ? duration(ce.absorbed_seconds) : '—')));
    for (const svc of svcs) {
      const e = (sla.services || []).find((x) => x.name === svc.name);
      rows.push(h('tr', { dataset: { service: svc.name } },
        h('th', { scope: 'row' }, svc.name),
        uptimeCell(uptimeOf(st.snap1h, svc.name), target),
        uptimeCell(uptimeOf(st.snap24h, svc.name), target),
        uptimeCell(uptimeOf(st.snap30d, svc.name), target),
        h('td', { class: 'num' }, `${target} %`),
        e ? uptimeCell(e.achieved_percent, target) : h('td', { class: 'num muted' }, '—'),
        budgetCell(e),
        h('td', { class: 'num' }, e ? duration(e.client_visible_seconds) : '—'),
        h('td', { class: 'num' }, e ? duration(e.absorbed_seconds) : '—')));
    }
  }
  fill(body, h('table', {}, head, h('tbody', {}, rows)));
  return 'targets: core 99.99 %, federal 99.5 %, vendor 99.0 %, internal 99.9 % (monthly)';
}

// ------------------------------------------------------------ OpsAlertsFeed

const TIER_LABEL = { 1: 'tier 1 · emergency', 2: 'tier 2 · critical', 3: 'tier 3 · degraded', 4: 'tier 4 · info' };

export function renderAlerts(body, st, ctx) {
  const list = (st.alerts && st.alerts.alerts) || [];
  const open = list.filter((a) => !a.resolved_at && a.state !== 'resolved');
  const state = (st.failover && st.failover.failover_state) || (st.health && st.health.failover_state);
  const emergency = state === 'emergency';
  const items = open.map((a) => {
    const tier = a.tier || (a.prediction_type ? 4 : 4);
    const title = a.message || a.rule || a.prediction_type || a.id;
    return h('li', { class: `alert t${tier}`, dataset: { alert: a.id || '', acknowledged: String(Boolean(a.acknowledged_by)) } },
      h('div', { class: 'head' },
        chip(TIER_LABEL[tier] || `tier ${tier}`, tier <= 2 ? 'bad' : tier === 3 ? 'warn' : 'grey'),
        a.severity ? h('span', { class: 'muted' }, a.severity) : null,
        a.prediction_type ? chip('predicted', 'grey') : null,
        a.acknowledged_by ? chip('acknowledged', 'info') : null,
        h('span', { class: 'muted' }, age(a.opened_at || a.at || a.generated_at))),
      h('div', { class: 'title' }, a.service ? `${a.service}: ` : '', title),
      a.prediction_type ? h('div', { class: 'kv' },
        h('span', {}, 'confidence ', h('b', {}, pct((a.confidence || 0) * 100, 0))),
        a.predicted_failure_time ? h('span', {}, 'by ', h('b', {}, time(a.predicted_failure_time))) : null) : null,
      a.routes ? h('div', { class: 'kv' }, h('span', {}, 'routes ', h('b', {}, a.routes.join(', ')))) : null,
      a.acknowledged_by
        ? h('div', { class: 'kv ack' }, h('span', {}, 'acknowledged by ', h('b', {}, a.acknowledged_by),
            a.acknowledged_at ? [' ', age(a.acknowledged_at)] : null))
        : ctx.canAct && a.id
          ? h('div', { class: 'actions' }, h('button', { type: 'button', class: 'small',
              'aria-label': `Acknowledge alert ${title}`, onclick: () => ctx.act({ kind: 'ack', alert: a.id, title }) }, 'Acknowledge…'))
          : null);
  });
  const recent = (st.feed || []).slice(0, 8).map((e) => h('li', { class: `alert t${e.tier}`, dataset: { event: e.type } },
    h('div', { class: 'head' }, chip(e.label, e.tone), h('span', { class: 'muted' }, age(e.at))),
    h('div', {}, e.text)));
  fill(body,
    h('div', { class: 'emergency' },
      emergency ? chip('EMERGENCY declared', 'bad') : h('span', { class: 'muted' }, 'No emergency'),
      ctx.canAct ? h('button', { type: 'button', class: emergency ? 'small' : 'small quiet-danger',
        onclick: () => ctx.act({ kind: emergency ? 'clear-emergency' : 'declare-emergency' }) },
        emergency ? 'Clear emergency…' : 'Declare emergency…') : null),
    h('h3', {}, `Open alerts (${open.length})`),
    items.length ? h('ul', { class: 'alerts' }, items) : h('p', { class: 'muted' }, 'No open alert.'),
    recent.length ? [h('h3', {}, 'Latest engine events'), h('ul', { class: 'alerts' }, recent)] : null);
  return `${open.length} open`;
}
