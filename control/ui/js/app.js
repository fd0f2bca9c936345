// The operations center: token, link, state, panels. The token lives in
// sessionStorage only (this tab, until it closes or the user signs out)
// and is sent to this engine's own origin alone.

import { Api, ApiError, plainError } from './api.js';
import { Channel } from './live.js';
import { Actions } from './actions.js';
import { h, fill, refreshAges, time } from './dom.js';
import {
  renderHealthGrid, renderLatency, renderFailover, renderVendor,
  renderTimeline, renderUptime, renderAlerts, renderCluster,
} from './panels.js';

const KEY = 'continuity.ops.token';

const PATHS = {
  health: '/api/ops/health',
  deep: '/api/ops/health/deep',
  failover: '/api/ops/failover/status',
  pools: '/api/ops/redundancy/status',
  snap1h: '/api/ops/health/snapshots?window=1h',
  snap24h: '/api/ops/health/snapshots?window=24h',
  snap30d: '/api/ops/health/snapshots?window=30d',
  sla: '/api/ops/sla',
  events: '/api/ops/diagnostics/events?limit=300',
  alerts: '/api/ops/diagnostics/alerts',
  queue: '/api/ops/queue',
  report: '/api/ops/diagnostics/report',
  cluster: '/api/ops/cluster',
};
const ALL = Object.keys(PATHS);
// The cluster's views follow the upstreams' health, so it is live too.
const LIVE = ['health', 'deep', 'failover', 'pools', 'cluster'];

const PANELS = {
  HealthGrid: renderHealthGrid,
  ServiceLatencyPanel: renderLatency,
  FailoverStatusCard: renderFailover,
  VendorIntegrationMap: renderVendor,
  DiagnosticsTimeline: renderTimeline,
  UptimeAnalytics: renderUptime,
  OpsAlertsFeed: renderAlerts,
  ClusterPanel: renderCluster,
};

function freshState() {
  return {
    name: null, role: null, loaded: false,
    events: [], feed: [], liveLatency: {}, openEvents: new Set(),
    filters: { category: '', severity: '' }, lastAction: null,
  };
}

let st = freshState();
let token = null;
let channels = [];
let everUp = false;
let linkUp = false;
let pending = new Set();
let pendingTimer = null;
let renderQueued = false;
let timers = [];
let generation = 0;

const $ = (id) => document.getElementById(id);
const api = () => new Api(token);

// ------------------------------------------------------------ sign in / out

function showNotice(text, bad = false) {
  const n = $('notice');
  n.textContent = text || '';
  n.hidden = !text;
  n.className = `notice${bad ? ' bad' : ''}`;
}

async function signIn(candidate) {
  $('signin-error').textContent = '';
  let who;
  try {
    who = await new Api(candidate).get('/api/ops/whoami');
  } catch (err) {
    if (err instanceof ApiError) {
      $('signin-error').textContent = err.status === 401
        ? 'This token is not accepted by the engine.'
        : err.status === 403
          ? 'This token may not read the operations data (a reporter token only sends heartbeats).'
          : plainError(err);
      return false;
    }
    $('signin-error').textContent = 'The engine cannot be reached.';
    return false;
  }
  token = candidate;
  sessionStorage.setItem(KEY, token);
  start(who);
  return true;
}

function start(who) {
  generation += 1;
  st = freshState();
  showWho(who);
  $('signin').hidden = true;
  $('identity').hidden = false;
  showNotice('');
  const hooks = { onMessage, onState: linkChanged, onResync: () => refresh(ALL) };
  channels = ['/ws/ops/health', '/ws/ops/failover', '/ws/ops/diagnostics']
    .map((p) => new Channel(p, () => token, hooks));
  channels.forEach((c) => c.start());
  refresh(ALL);
  timers = [
    setInterval(() => refreshAges(), 5000),
    setInterval(() => linkUp && refresh([...LIVE, 'queue', 'alerts']), 10000),
    setInterval(() => linkUp && refresh(['snap1h', 'events', 'report']), 20000),
    setInterval(() => linkUp && refresh(['snap24h', 'snap30d', 'sla']), 60000),
    setInterval(() => updateLinkText(), 1000),
  ];
}

function signOut(message) {
  generation += 1;
  token = null;
  const old = channels;
  channels = [];
  old.forEach((c) => c.stop());
  timers.forEach(clearInterval);
  timers = [];
  sessionStorage.removeItem(KEY);
  st = freshState();
  everUp = false;
  linkUp = false;
  $('identity').hidden = true;
  $('signin').hidden = false;
  $('token').value = '';
  $('engine-state').textContent = 'not connected';
  $('engine-state').className = 'engine-state chip grey';
  setPanelsOnline(false);
  for (const el of document.querySelectorAll('[data-panel] [data-body], [data-panel] [data-sub]')) el.replaceChildren();
  updateLinkText();
  showNotice(message || '', Boolean(message));
  $('token').focus();
}

// ------------------------------------------------------------ link state

function showWho(who) {
  st.name = who.name;
  st.role = who.role;
  $('who-name').textContent = who.name;
  $('who-role').textContent = who.role;
  $('who-role').title = who.role === 'operator'
    ? 'may act: failovers, switchovers, acknowledgements, emergencies'
    : 'read only';
}

function linkChanged() {
  if (!token) return;
  const up = channels.length > 0 && channels.every((c) => c.state === 'open');
  if (up && !linkUp) {
    linkUp = true;
    everUp = true;
    refresh(ALL); // whatever happened while we were away
    // The token's role may have changed with a config reload.
    const gen = generation;
    api().get('/api/ops/whoami').then((who) => {
      if (gen === generation) { showWho(who); queueRender(); }
    }).catch(() => {});
  } else if (!up && linkUp) {
    linkUp = false;
    // Is the token still good, or is the engine gone?
    api().get('/api/ops/whoami').catch((err) => {
      if (err instanceof ApiError && err.status === 401) signOut('The engine no longer accepts this token. Sign in again.');
    });
  }
  setPanelsOnline(linkUp && st.loaded);
  updateLinkText();
}

function updateLinkText() {
  const dot = document.querySelector('#link .dot');
  const text = $('link-text');
  let label = 'not connected';
  let t = 'grey';
  if (token && channels.length) {
    const down = channels.filter((c) => c.state !== 'open');
    if (!down.length) {
      label = 'live';
      t = 'ok';
    } else if (!everUp && down.every((c) => c.state === 'connecting')) {
      label = 'connecting…';
      t = 'warn';
    } else {
      const retry = Math.max(0, ...down.map((c) => (c.retryAt || 0) - Date.now()));
      label = `connection lost${retry > 500 ? ` · retrying in ${Math.ceil(retry / 1000)} s` : ' · reconnecting'}`;
      t = 'bad';
    }
  }
  if (text.textContent !== label) text.textContent = label;
  dot.className = `dot ${t}`;
  $('link').dataset.state = t === 'ok' ? 'live' : token ? (t === 'warn' ? 'connecting' : 'lost') : 'none';
}

function setPanelsOnline(on) {
  for (const el of document.querySelectorAll('[data-panel]')) {
    el.classList.toggle('offline', !on);
    el.setAttribute('aria-busy', on ? 'false' : 'true');
  }
  if (!on) {
    const es = $('engine-state');
    es.textContent = 'not connected';
    es.className = 'engine-state chip grey';
  } else {
    queueRender();
  }
}

// ------------------------------------------------------------ data

function refresh(keys) {
  for (const k of keys) pending.add(k);
  if (pendingTimer) return;
  pendingTimer = setTimeout(flush, 40);
}

async function flush() {
  pendingTimer = null;
  const keys = [...pending];
  pending.clear();
  if (!token) return;
  const gen = generation;
  const client = api();
  await Promise.all(keys.map(async (k) => {
    try {
      const v = await client.get(PATHS[k]);
      if (gen !== generation) return;
      if (k === 'events') {
        st.events = ((v && v.events) || []).slice().sort((a, b) => new Date(b.at) - new Date(a.at));
      } else {
        st[k] = v;
      }
      if (k === 'health') noteLatency(v);
    } catch (err) {
      if (gen !== generation) return;
      if (err instanceof ApiError && err.status === 401) {
        signOut('The engine no longer accepts this token. Sign in again.');
      }
    }
  }));
  if (gen !== generation) return;
  if (!st.loaded && st.deep && st.failover && st.health) {
    st.loaded = true;
    setPanelsOnline(linkUp);
  }
  queueRender();
}

function noteLatency(health) {
  const now = Date.now();
  for (const s of (health && health.services) || []) {
    if (Number.isFinite(s.latency_ms)) st.liveLatency[s.name] = { t: now, v: s.latency_ms };
  }
}

const FEED = {
  failover_activated: ['failed over', 'warn', 3],
  recovery_completed: ['recovered', 'ok', 4],
  emergency_state: ['emergency', 'bad', 1],
  service_failure: ['service failure', 'bad', 2],
  service_degraded: ['degraded', 'warn', 3],
  vendor_unavailable: ['vendor unavailable', 'warn', 3],
  federal_interruption: ['federal interruption', 'bad', 1],
  etl_stall: ['ETL stall', 'warn', 3],
  predictive_alert: ['predicted', 'grey', 4],
};

function describeEvent(msg) {
  const d = msg.data || {};
  const parts = [];
  if (msg.service) parts.push(msg.service);
  const from = d.from || d.from_upstream || d.previous_upstream;
  const to = d.to || d.to_upstream || d.active_upstream;
  if (from || to) parts.push(`${from || '?'} → ${to || '?'}`);
  if (typeof d.old === 'string' && typeof d.new === 'string') parts.push(`${d.old} → ${d.new}`);
  else if (d.status) parts.push(`now ${d.status}`);
  if (d.trigger) parts.push(`(${d.trigger})`);
  if (d.actor && d.actor !== 'system') parts.push(`by ${d.actor}`);
  if (d.message) parts.push(d.message);
  else if (d.reason) parts.push(`reason: ${d.reason}`);
  return parts.join(' · ') || msg.type.replace(/_/g, ' ');
}

function onMessage(ch, msg, first) {
  if (ch.path.endsWith('/health')) {
    const d = msg.data || {};
    if (msg.type === 'health_update' && Array.isArray(d.services)) {
      st.health = d; // the full snapshot
      noteLatency(d);
      if (!first) refresh(['deep', 'pools']);
    } else if (msg.type === 'health_update') {
      // One service's upstream changed: apply it now, then refetch the rest.
      const svc = d.service;
      if (svc && svc.name && st.deep && Array.isArray(st.deep.services)) {
        const i = st.deep.services.findIndex((x) => x.name === svc.name);
        if (i >= 0) st.deep.services[i] = svc;
      }
      refresh(LIVE);
    } else {
      refresh(LIVE);
    }
  } else if (ch.path.endsWith('/failover')) {
    const d = msg.data || {};
    if (msg.type === 'failover_event' && Array.isArray(d.services)) {
      st.failover = d; // the full snapshot
    } else if (msg.type === 'failover_event' && st.failover && typeof d.new === 'string') {
      st.failover.failover_state = d.new;
    }
    // This engine's etcd link came up or went down (`[cluster]`): show it
    // now; the refetch below (LIVE has the cluster) brings the rest, as it
    // does after a `cluster_decision`.
    if (msg.type === 'failover_event' && (d.event || d.type) === 'cluster_connection' && st.cluster
      && typeof d.connected === 'boolean') {
      st.cluster.connected = d.connected;
      st.cluster.reason = d.connected ? null : d.reason || null;
    }
    if (!first) refresh([...LIVE, 'alerts', 'events']);
  } else if (!first) {
    refresh(['events', 'alerts', 'report', 'queue']);
  }
  if (!first && FEED[msg.type]) {
    const [label, t, tier] = FEED[msg.type];
    st.feed.unshift({ type: msg.type, at: msg.timestamp, label, tone: t, tier, text: describeEvent(msg) });
    st.feed.length = Math.min(st.feed.length, 20);
  }
  queueRender();
}

// ------------------------------------------------------------ render

function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(render);
}

function render() {
  renderQueued = false;
  if (!token || !st.loaded) return;
  const active = document.activeElement;
  const keep = active && active !== document.body
    ? { id: active.id, label: active.getAttribute('aria-label'), panel: active.closest('[data-panel]') }
    : null;
  const ctx = {
    canAct: st.role === 'operator',
    act: (a) => actions.open(a),
    setFilter: (k, v) => { st.filters[k] = v; queueRender(); },
  };
  for (const [name, fn] of Object.entries(PANELS)) {
    const panel = document.querySelector(`[data-panel="${name}"]`);
    const body = panel.querySelector('[data-body]');
    const sub = panel.querySelector('[data-sub]');
    try {
      const note = fn(body, st, ctx);
      fill(sub, note || '');
    } catch (err) {
      fill(body, h('p', { class: 'error' }, `This panel could not be drawn: ${err.message}`));
    }
  }
  if (linkUp) {
    const state = (st.failover && st.failover.failover_state) || (st.health && st.health.failover_state) || 'unknown';
    const es = $('engine-state');
    es.textContent = `engine ${state}`;
    es.className = `engine-state chip ${{ normal: 'ok', degraded: 'warn', failover: 'warn', emergency: 'bad' }[state] || 'grey'}`;
  }
  const gen = st.health && st.health.generated_at;
  fill($('updated'), gen ? h('span', {}, 'last update ', time(gen)) : '');
  if (keep && keep.panel && !keep.panel.contains(document.activeElement)) {
    const again = (keep.id && document.getElementById(keep.id)) ||
      (keep.label && keep.panel.querySelector(`[aria-label="${CSS.escape(keep.label)}"]`));
    if (again) again.focus();
  }
}

// ------------------------------------------------------------ wiring

const actions = new Actions({
  api,
  onDone: (a, ok, text) => {
    st.lastAction = { ok, text, at: new Date().toISOString() };
    refresh(ALL);
    queueRender();
  },
});

$('signin').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const value = $('token').value.trim();
  if (value) signIn(value);
});
$('signout').addEventListener('click', () => signOut());
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') channels.forEach((c) => c.kick());
});
window.addEventListener('online', () => channels.forEach((c) => c.kick()));

const saved = sessionStorage.getItem(KEY);
if (saved) {
  new Api(saved).get('/api/ops/whoami').then((who) => {
    token = saved;
    start(who);
  }).catch((err) => {
    if (err instanceof ApiError) {
      sessionStorage.removeItem(KEY);
      showNotice('The saved token is no longer accepted. Sign in again.', true);
    } else {
      // The engine is down: keep the token and keep trying. Until the
      // engine says who this is, the page offers no action.
      token = saved;
      start({ name: '…', role: 'unknown' });
    }
  });
}
updateLinkText();
