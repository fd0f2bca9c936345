// The operations center in a real browser (Debian's chromium driven by
// playwright-core), against a real engine in front of a real Redis pair
// and a real HTTP upstream. Run by tests/ops_center_browser.rs, which
// starts those and passes:
//   OC_URL             http://127.0.0.1:PORT (the engine's control plane)
//   OC_OPERATOR_TOKEN  a token named "ops" with role operator
//   OC_VIEWER_TOKEN    a token with role viewer
//   OC_SCREENSHOTS     where to write the screenshots (docs/ to update the committed ones)
//   OC_CHROMIUM        the browser (default /usr/bin/chromium)
//   OC_REDIS_THRESHOLD_MS  redis's configured latency_threshold_ms (not the 1000 default)
//   OC_ETL             a heartbeat service that never reports: its etl_stall alert is open
//   OC_MODE            `standalone` (the default): the whole page, against an engine
//                      without [cluster]; `cluster`: the Cluster panel, against an
//                      engine in a one-node etcd cluster, which also passes
//   OC_CLUSTER_NAME, OC_NODE_ID  its [cluster] cluster_name and node_id
// Things only the Rust side can do (kill -9 the Redis primary, stop and
// start the engine or etcd) are asked for with a line `@@CONTROL <what>`
// on stdout; the Rust side answers `@@DONE <what>` on stdin.

import { test as nodeTest, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { tmpdir } from 'node:os';
import { chromium } from 'playwright-core';

const URL_BASE = process.env.OC_URL;
const OPERATOR = process.env.OC_OPERATOR_TOKEN;
const VIEWER = process.env.OC_VIEWER_TOKEN;
const SHOTS = process.env.OC_SCREENSHOTS;
const CHROMIUM = process.env.OC_CHROMIUM || '/usr/bin/chromium';
const REDIS_THRESHOLD_MS = Number(process.env.OC_REDIS_THRESHOLD_MS);
const ETL = process.env.OC_ETL;
const MODE = process.env.OC_MODE || 'standalone';
const CLUSTER_NAME = process.env.OC_CLUSTER_NAME;
const NODE_ID = process.env.OC_NODE_ID;
assert.ok(['standalone', 'cluster'].includes(MODE), `OC_MODE is standalone or cluster, not ${MODE}`);
assert.ok(MODE !== 'standalone' || (REDIS_THRESHOLD_MS > 0 && REDIS_THRESHOLD_MS !== 1000 && ETL),
  'OC_REDIS_THRESHOLD_MS (not 1000) and OC_ETL are required');
assert.ok(MODE !== 'cluster' || (CLUSTER_NAME && NODE_ID), 'OC_CLUSTER_NAME and OC_NODE_ID are required with OC_MODE=cluster');
assert.ok(URL_BASE && OPERATOR && VIEWER, 'OC_URL, OC_OPERATOR_TOKEN and OC_VIEWER_TOKEN are required');
// Each run registers the tests of its mode only: `test` the standalone
// ones (the whole page), `clusterTest` the cluster ones; `nodeTest` runs
// in both.
const test = MODE === 'standalone' ? nodeTest : () => {};
const clusterTest = MODE === 'cluster' ? nodeTest : () => {};
const PAGE = `${URL_BASE}/operations-center`;
const origin = new URL(URL_BASE);
const PANELS = ['HealthGrid', 'ServiceLatencyPanel', 'FailoverStatusCard', 'VendorIntegrationMap',
  'DiagnosticsTimeline', 'UptimeAnalytics', 'OpsAlertsFeed', 'ClusterPanel'];
const CLUSTER_PANEL = '[data-panel="ClusterPanel"]';

// ------------------------------------------------------------ the Rust side

const lines = createInterface({ input: process.stdin });
const waiting = new Map();
lines.on('line', (line) => {
  const m = /^@@DONE (\S+)(?: (.*))?$/.exec(line.trim());
  if (m && waiting.has(m[1])) {
    const resolve = waiting.get(m[1]);
    waiting.delete(m[1]);
    resolve(m[2] || '');
  }
});

function control(what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the test driver did not do '${what}' within 60 s`)), 60000);
    waiting.set(what, (v) => { clearTimeout(timer); resolve(v); });
    process.stdout.write(`@@CONTROL ${what}\n`);
  });
}

// ------------------------------------------------------------ the browser

let browser;
const requests = [];
const problems = [];
/** Every `cluster_connection` message the pages received, and when. */
const clusterLinkMessages = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage'],
  });
});

after(async () => {
  lines.close();
  if (browser) await browser.close();
});

async function newPage(viewport = { width: 1280, height: 800 }, colorScheme = 'light') {
  const context = await browser.newContext({ viewport, colorScheme, serviceWorkers: 'block' });
  const page = await context.newPage();
  page.on('request', (r) => requests.push(r.url()));
  page.on('websocket', (ws) => {
    requests.push(ws.url());
    ws.on('framereceived', (f) => {
      if (typeof f.payload !== 'string' || !f.payload.includes('cluster_connection')) return;
      const msg = JSON.parse(f.payload);
      if (msg.type === 'failover_event' && msg.data) clusterLinkMessages.push({ at: Date.now(), data: msg.data });
    });
  });
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  return page;
}

async function signIn(page, token) {
  await page.fill('#token', token);
  await page.press('#token', 'Enter');
}

/** Waits until every panel is live (not grey); returns how long it took. */
async function waitOnline(page, timeout = 10000) {
  const t0 = Date.now();
  await page.waitForFunction((count) => {
    const panels = [...document.querySelectorAll('[data-panel]')];
    return panels.length === count && panels.every((p) => !p.classList.contains('offline'));
  }, PANELS.length, { timeout, polling: 50 });
  return Date.now() - t0;
}

const panelText = (page, name) => page.locator(`[data-panel="${name}"]`).innerText();

/** '' if nothing is wider than the screen; else by how much, and what sticks out first (its parent does not). */
async function widerThanScreen(p) {
  const overflow = await p.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow <= 1) return '';
  const wide = await p.evaluate(() => [...document.querySelectorAll('body *')]
    .filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1
      && el.parentElement.getBoundingClientRect().right <= window.innerWidth + 1)
    .slice(0, 8).map((el) => `${el.tagName.toLowerCase()}.${el.className} "${el.textContent.trim().slice(0, 40)}"`));
  return `the page is ${overflow} px wider than the screen: ${wide.join('; ')}`;
}

/** Text/background pairs under WCAG AA (4.5:1): status chips, muted and body text. */
async function contrastFailures(p) {
  return p.evaluate(() => {
    const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((m, n) => n - m); return (x + 0.05) / (y + 0.05); };
    const bgOf = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || (c.length === 4 && c[3] === 1)) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    const bad = [];
    const els = document.querySelectorAll('main .chip, header .chip, main .muted, main .kv b, main h2, main td, #link-text');
    for (const el of els) {
      if (!el.textContent.trim() || el.closest('.offline')) continue;
      const r = ratio(rgb(getComputedStyle(el).color).slice(0, 3), bgOf(el));
      if (r < 4.5) bad.push(`${el.className || el.tagName} "${el.textContent.trim().slice(0, 30)}" ${r.toFixed(2)}:1`);
    }
    return [...new Set(bad)];
  });
}

let page; // the operator's page, shared by the tests in order

test('the page is public, has a strict CSP, and shows no data before a token', async () => {
  page = await newPage();
  const res = await page.goto(PAGE);
  assert.equal(res.status(), 200);
  const csp = res.headers()['content-security-policy'];
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
  assert.ok(res.headers().etag, 'an ETag');
  for (const name of PANELS) {
    const panel = page.locator(`[data-panel="${name}"]`);
    await panel.waitFor();
    assert.ok(await panel.evaluate((el) => el.classList.contains('offline')), `${name} is grey`);
    assert.match(await panel.innerText(), /not connected/i, `${name} says not connected`);
    assert.equal(await panel.locator('[data-body] *').count(), 0, `${name} holds no data`);
  }
  assert.match(await page.locator('#link-text').innerText(), /not connected/);
  await page.waitForTimeout(500);
  assert.ok(!requests.some((u) => u.includes('/api/') || u.includes('/ws/')), 'no data call without a token');
  assert.equal(await page.evaluate(() => sessionStorage.length + localStorage.length), 0);
});

test('an operator token: every panel shows real data, quickly', async () => {
  const t0 = Date.now();
  await signIn(page, OPERATOR);
  const took = await waitOnline(page);
  const firstData = Date.now() - t0;
  console.log(`# first data on every panel ${firstData} ms after the token was entered`);
  assert.ok(firstData < 5000, `first data after ${firstData} ms`);
  assert.equal(await page.locator('#who-name').innerText(), 'ops');
  assert.equal(await page.locator('#who-role').innerText(), 'operator');
  assert.match(await page.locator('#link-text').innerText(), /live/);
  // The token is in sessionStorage only.
  const stored = await page.evaluate(() => ({
    session: Object.values(sessionStorage), local: localStorage.length, cookie: document.cookie,
  }));
  assert.deepEqual(stored, { session: [OPERATOR], local: 0, cookie: '' });

  const redis = page.locator('[data-panel="HealthGrid"] [data-service="redis"]');
  await redis.waitFor();
  await page.waitForFunction(() => document.querySelector('[data-panel="HealthGrid"] [data-service="redis"]')?.dataset.status === 'healthy', null, { timeout: 15000 });
  const tile = await redis.innerText();
  assert.match(tile, /healthy/);
  assert.match(tile, /redis-primary/);
  assert.match(tile, /epoch/);
  assert.match(await panelText(page, 'HealthGrid'), /core[\s\S]*federal/i);
  assert.ok(await page.locator('[data-panel="ServiceLatencyPanel"] figure[data-service="redis"] svg').count() === 1);
  // The threshold line is drawn at, and labelled with, each service's
  // configured latency_threshold_ms: redis's is not the default.
  const redisChart = page.locator('[data-panel="ServiceLatencyPanel"] figure[data-service="redis"]');
  assert.equal(await redisChart.getAttribute('data-threshold-ms'), String(REDIS_THRESHOLD_MS));
  assert.equal(await redisChart.locator('svg text.th-label').textContent(), `threshold ${(REDIS_THRESHOLD_MS / 1000).toFixed(1)} s`);
  assert.match(await redisChart.locator('svg').getAttribute('aria-label'), new RegExp(`threshold ${(REDIS_THRESHOLD_MS / 1000).toFixed(1)} s`));
  assert.equal(await page.locator('[data-panel="ServiceLatencyPanel"] figure[data-service="ncic"] svg text.th-label').textContent(), 'threshold 1.0 s');
  assert.match(await page.locator('#failover-state').innerText(), /normal/);
  assert.match(await panelText(page, 'FailoverStatusCard'), /redis[\s\S]*redis-primary/);
  assert.match(await page.locator('[data-panel="VendorIntegrationMap"] [data-service="ncic"]').innerText(), /ncic-a/);
  assert.equal(await page.locator('[data-panel="VendorIntegrationMap"] [data-service="ncic"] td.quota').getAttribute('data-quota'), 'open');
  assert.match(await page.locator('[data-panel="UptimeAnalytics"] [data-service="redis"]').innerText(), /%/);
  assert.match(await panelText(page, 'UptimeAnalytics'), /99\.99 %/);
  assert.match(await panelText(page, 'OpsAlertsFeed'), /Open alerts/);
  assert.match(await panelText(page, 'DiagnosticsTimeline'), /Category[\s\S]*Severity/);
  console.log(`# panels live ${took} ms after sign-in returned`);
});

test('without [cluster], the Cluster panel says standalone in one line', async () => {
  const body = page.locator(`${CLUSTER_PANEL} [data-body]`);
  await body.locator('[data-cluster]').waitFor();
  assert.equal(await body.locator('[data-cluster]').getAttribute('data-cluster'), 'standalone');
  assert.equal(await body.innerText(), 'standalone: no [cluster]; this engine decides failover alone');
  assert.equal(await page.locator(`${CLUSTER_PANEL} [data-sub]`).innerText(), 'standalone');
  assert.equal(await body.locator('table').count(), 0, 'no member or view table');
});

test('the HTTP upstream answers 429 with Retry-After: the vendor map shows the quota window and the wait', async () => {
  const row = '[data-panel="VendorIntegrationMap"] [data-service="ncic"]';
  assert.match(await page.locator(`${row} td.quota`).innerText(), /no 429 window/);
  // The Rust side sends a request through the ncic gateway; the upstream
  // answers 429 with Retry-After: 600.
  await control('quota-429');
  // The page refetches the deep health every 10 s (and on health events).
  await page.waitForFunction((sel) => document.querySelector(`${sel} td.quota`)?.dataset.quota === 'limited',
    row, { timeout: 30000, polling: 100 });
  const text = await page.locator(`${row} td.quota`).innerText();
  console.log(`# vendor map quota: ${text.replace(/\s+/g, ' ')}`);
  assert.match(text, /429 quota/);
  assert.match(text, /wait (\d+ min|\d+ s)/);
  const minutes = Number((/wait (\d+) min/.exec(text) || [])[1]);
  assert.ok(minutes >= 5 && minutes <= 10, `a wait of about 10 min, saw "${text}"`);
  assert.match(text, /until/);
  // The local time has the UTC time on hover.
  assert.match(await page.locator(`${row} td.quota time`).getAttribute('title'), /UTC$/);
  // The upstream tile says so too; the service stays healthy (a quota is not ill health).
  const up = page.locator('[data-panel="HealthGrid"] [data-service="ncic"] [data-upstream="ncic-a"]');
  assert.match(await up.innerText(), /429 quota/);
  assert.equal(await page.locator('[data-panel="HealthGrid"] [data-service="ncic"]').getAttribute('data-status'), 'healthy');
});

test('acknowledge an open alert with a reason: shown acknowledged, audited with actor and reason', async () => {
  // The heartbeat service never reports: its etl_stall alert opens a
  // second after the engine starts (alerts are refetched every 10 s).
  const item = page.locator('[data-panel="OpsAlertsFeed"] li.alert[data-alert]', { hasText: ETL });
  await item.first().waitFor({ timeout: 30000 });
  assert.equal(await item.count(), 1, 'one open alert for the stalled pipeline');
  assert.equal(await item.getAttribute('data-acknowledged'), 'false');
  const alertId = await item.getAttribute('data-alert');
  assert.match(alertId, /\S/);
  const button = item.getByRole('button', { name: /^Acknowledge alert / });
  assert.match(await button.getAttribute('aria-label'), new RegExp(`Acknowledge alert .*${ETL}`));
  await button.focus();
  await page.keyboard.press('Enter'); // keyboard-usable
  const dialog = page.locator('#confirm');
  await dialog.waitFor({ state: 'visible' });
  assert.match(await dialog.innerText(), /Acknowledge this alert\?/);
  assert.match(await page.locator('#confirm-what').innerText(), new RegExp(ETL));
  // No reason: refused on the page.
  await page.click('#confirm-ok');
  assert.match(await page.locator('#confirm-result').innerText(), /reason is required/i);
  const reason = `browser test: the nightly ETL is paused on purpose ${Date.now()}`;
  await page.fill('#confirm-reason', reason);
  await page.click('#confirm-ok');
  await page.waitForFunction(() => /Acknowledged|Refused|Not possible|could not/.test(document.querySelector('#confirm-result').innerText), null, { timeout: 35000 });
  assert.equal(await page.locator('#confirm-result').innerText(), 'Acknowledged by ops.');
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  // The feed shows it acknowledged, by whom, and offers no second acknowledge.
  const acked = page.locator(`[data-panel="OpsAlertsFeed"] li.alert[data-alert="${alertId}"]`);
  await page.waitForFunction((id) => document.querySelector(`[data-panel="OpsAlertsFeed"] li.alert[data-alert="${id}"]`)?.dataset.acknowledged === 'true',
    alertId, { timeout: 15000, polling: 100 });
  const text = await acked.innerText();
  assert.match(text, /acknowledged by ops/);
  assert.equal(await acked.getByRole('button').count(), 0);
  // The engine has it acknowledged, and the audit log has the ack with the token's name and the reason.
  const alerts = await (await fetch(`${URL_BASE}/api/ops/diagnostics/alerts`, { headers: { Authorization: `Bearer ${OPERATOR}` } })).json();
  const mine = alerts.alerts.find((a) => a.id === alertId);
  assert.equal(mine && mine.acknowledged_by, 'ops');
  const res = await fetch(`${URL_BASE}/api/ops/audit/logs?action=manual_intervention&limit=50`, {
    headers: { Authorization: `Bearer ${OPERATOR}` },
  });
  assert.equal(res.status, 200);
  const entries = (await res.json()).entries;
  const entry = entries.find((e) => e.details && e.details.operation === 'alert_ack' && e.details.alert_id === alertId);
  assert.ok(entry, `an alert_ack entry for ${alertId} in ${JSON.stringify(entries).slice(0, 2000)}`);
  assert.equal(entry.actor, 'ops');
  assert.equal(entry.action, 'manual_intervention');
  assert.equal(entry.details.reason, reason);
});

test('kill -9 the Redis primary: the page shows it within 3 s', async () => {
  await control('kill-primary');
  const t0 = Date.now();
  await page.waitForFunction(() => {
    const tile = document.querySelector('[data-panel="HealthGrid"] [data-service="redis"]');
    return tile && /failed over|degraded|down/.test(tile.innerText);
  }, null, { timeout: 3000, polling: 50 });
  await page.waitForFunction(() => {
    const svc = document.querySelector('[data-panel="FailoverStatusCard"] [data-service="redis"]');
    return svc && /failed over/.test(svc.innerText) && /on redis-replica/.test(svc.innerText);
  }, null, { timeout: Math.max(100, 3000 - (Date.now() - t0)), polling: 50 });
  console.log(`# HealthGrid and FailoverStatusCard showed the failover ${Date.now() - t0} ms after the kill`);
  await page.waitForFunction(() => {
    const tl = document.querySelector('[data-panel="DiagnosticsTimeline"] .events');
    return tl && /redis/.test(tl.innerText);
  }, null, { timeout: Math.max(100, 3000 - (Date.now() - t0)), polling: 50 });
  await page.waitForFunction(() => {
    const feed = document.querySelector('[data-panel="OpsAlertsFeed"]');
    return /redis/.test(feed.innerText) && /failed over|service failure|degraded/.test(feed.innerText);
  }, null, { timeout: Math.max(100, 3000 - (Date.now() - t0)), polling: 50 });
  console.log(`# every panel showed it ${Date.now() - t0} ms after the kill`);
  assert.match(await page.locator('#failover-state').innerText(), /failover|degraded|emergency/);
  // The timeline's detail view opens from the keyboard.
  const first = page.locator('[data-panel="DiagnosticsTimeline"] .events summary').first();
  await first.focus();
  await page.keyboard.press('Enter');
  assert.match(await page.locator('[data-panel="DiagnosticsTimeline"] .events details[open] dl').first().innerText(), /class/);
  // The filters work.
  await page.selectOption('#f-sev', 'critical');
  await page.waitForFunction(() => [...document.querySelectorAll('[data-panel="DiagnosticsTimeline"] .events li')]
    .every((li) => li.dataset.severity === 'critical'));
  await page.selectOption('#f-sev', '');
});

test('recover through the UI with a reason: audited with the token name and the reason', async () => {
  await control('restart-primary');
  // Wait until the engine sees the primary usable again.
  await page.waitForFunction(() => {
    const up = document.querySelector('[data-panel="HealthGrid"] [data-service="redis"] [data-upstream="redis-primary"]');
    return up && up.dataset.health === 'up';
  }, null, { timeout: 20000, polling: 100 });
  const button = page.getByRole('button', { name: 'Recover redis to its primary' });
  await button.focus();
  await page.keyboard.press('Enter'); // keyboard-usable
  const dialog = page.locator('#confirm');
  await dialog.waitFor({ state: 'visible' });
  assert.match(await dialog.innerText(), /Recover redis\?/);
  // No reason: refused on the page, nothing sent.
  await page.click('#confirm-ok');
  assert.match(await page.locator('#confirm-result').innerText(), /reason is required/i);
  const reason = `browser test: primary is back ${Date.now()}`;
  await page.fill('#confirm-reason', reason);
  await page.click('#confirm-ok');
  await page.waitForFunction(() => /is now on|Refused|Not possible|could not/.test(document.querySelector('#confirm-result').innerText), null, { timeout: 35000 });
  const result = await page.locator('#confirm-result').innerText();
  console.log(`# recover result: ${result}`);
  assert.match(result, /redis is now on redis-primary \(epoch \d+\)/);
  await page.click('#confirm-cancel'); // now "Close"
  await dialog.waitFor({ state: 'hidden' });
  await page.waitForFunction(() => /on redis-primary/.test(document.querySelector('[data-panel="FailoverStatusCard"] [data-service="redis"]').innerText), null, { timeout: 5000 });

  const res = await fetch(`${URL_BASE}/api/ops/audit/logs?action=manual_intervention&limit=50`, {
    headers: { Authorization: `Bearer ${OPERATOR}` },
  });
  assert.equal(res.status, 200);
  const entries = (await res.json()).entries;
  const mine = entries.find((e) => e.details && e.details.reason === reason);
  assert.ok(mine, `a manual_intervention with the reason, in ${JSON.stringify(entries).slice(0, 2000)}`);
  assert.equal(mine.actor, 'ops');
  assert.equal(mine.action, 'manual_intervention');
});

test('an action the engine refuses is explained in plain words', async () => {
  // Trigger a failover of the federal endpoint, which has no other upstream: 409 conflict.
  await page.getByRole('button', { name: 'Trigger failover of ncic' }).click();
  await page.fill('#confirm-reason', 'browser test: no other upstream');
  await page.click('#confirm-ok');
  await page.waitForFunction(() => document.querySelector('#confirm-result').classList.contains('bad'), null, { timeout: 35000 });
  const text = await page.locator('#confirm-result').innerText();
  assert.match(text, /Not possible right now/);
  assert.doesNotMatch(text, /[{}]/, 'no JSON');
  await page.keyboard.press('Escape');
  await page.locator('#confirm').waitFor({ state: 'hidden' });
});

test('declare and clear an emergency from the alerts feed', async () => {
  await page.getByRole('button', { name: 'Declare emergency…' }).click();
  await page.fill('#confirm-reason', 'browser test: drill');
  await page.click('#confirm-ok');
  await page.waitForFunction(() => /emergency/.test(document.querySelector('#confirm-result').innerText), null, { timeout: 35000 });
  assert.match(await page.locator('#confirm-result').innerText(), /Engine state is now emergency/);
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => /engine emergency/.test(document.querySelector('#engine-state').innerText), null, { timeout: 5000 });
  assert.match(await panelText(page, 'OpsAlertsFeed'), /EMERGENCY declared/);
  await page.getByRole('button', { name: 'Clear emergency…' }).click();
  await page.fill('#confirm-reason', 'browser test: drill over');
  await page.click('#confirm-ok');
  await page.waitForFunction(() => document.querySelector('#confirm-result').classList.contains('ok'), null, { timeout: 35000 });
  await page.keyboard.press('Escape');
  await page.waitForFunction(() => !/emergency/.test(document.querySelector('#engine-state').innerText), null, { timeout: 5000 });
  assert.match(await panelText(page, 'OpsAlertsFeed'), /No emergency/);
});

test('screenshots at 1280x800 and 390 px, light and dark; AA contrast in both', async () => {
  assert.ok(SHOTS, 'OC_SCREENSHOTS is required');
  mkdirSync(SHOTS, { recursive: true });
  // Let the latency charts pick up a snapshot after the recovery.
  await page.waitForTimeout(1500);
  const top = async (p) => p.evaluate(() => { document.activeElement?.blur(); window.scrollTo(0, 0); });
  await top(page);
  await page.screenshot({ path: join(SHOTS, 'ops-center-1280.png') });
  assert.deepEqual(await contrastFailures(page), [], 'light scheme contrast');
  await page.screenshot({ path: join(tmpdir(), 'ops-center-1280-full.png'), fullPage: true });
  const phone = await newPage({ width: 390, height: 844 });
  await phone.goto(PAGE);
  await signIn(phone, OPERATOR);
  await waitOnline(phone);
  await phone.waitForTimeout(800);
  await top(phone);
  await phone.screenshot({ path: join(SHOTS, 'ops-center-390.png') });
  // The whole phone page, to look at (not committed: too tall for a README).
  await phone.screenshot({ path: join(tmpdir(), 'ops-center-390-full.png'), fullPage: true });
  // Nothing is wider than the phone's screen.
  assert.equal(await widerThanScreen(phone), '');
  await phone.context().close();
  const dark = await newPage({ width: 1280, height: 800 }, 'dark');
  await dark.goto(PAGE);
  await signIn(dark, OPERATOR);
  await waitOnline(dark);
  await dark.waitForTimeout(800);
  await top(dark);
  await dark.screenshot({ path: join(SHOTS, 'ops-center-dark.png') });
  assert.deepEqual(await contrastFailures(dark), [], 'dark scheme contrast');
  await dark.context().close();
});

test('stop the engine: "connection lost" within 5 s; restart: the page comes back by itself', async () => {
  await control('stop-engine');
  const t0 = Date.now();
  await page.waitForFunction(() => /connection lost/.test(document.querySelector('#link-text').innerText), null, { timeout: 5000, polling: 50 });
  console.log(`# "connection lost" ${Date.now() - t0} ms after the engine stopped`);
  for (const name of PANELS) {
    const panel = page.locator(`[data-panel="${name}"]`);
    assert.ok(await panel.evaluate((el) => el.classList.contains('offline')), `${name} is grey`);
    assert.match(await panel.innerText(), /not connected/i);
  }
  assert.match(await page.locator('#engine-state').innerText(), /not connected/);
  await control('start-engine');
  const t1 = Date.now();
  await waitOnline(page, 30000);
  assert.match(await page.locator('#link-text').innerText(), /live/);
  console.log(`# the page was live again ${Date.now() - t1} ms after the engine answered`);
  assert.match(await page.locator('[data-panel="HealthGrid"] [data-service="redis"]').innerText(), /redis/);
  // A reload keeps the tab's token: no new sign-in.
  await page.reload();
  await waitOnline(page);
  assert.equal(await page.locator('#who-name').innerText(), 'ops');
});

test('a viewer token sees no acting control, and a forged POST with it gets 403', async () => {
  const viewer = await newPage();
  await viewer.goto(PAGE);
  await signIn(viewer, VIEWER);
  await waitOnline(viewer);
  assert.equal(await viewer.locator('#who-role').innerText(), 'viewer');
  await viewer.waitForSelector('[data-panel="FailoverStatusCard"] [data-service="redis"]');
  const buttons = await viewer.locator('main button').allInnerTexts();
  assert.deepEqual(buttons, [], `a viewer sees no button in the panels, saw ${buttons}`);
  assert.equal(await viewer.locator('main').getByText(/Fail over…|Recover…|Switch|Acknowledge…|emergency…/).count(), 0);
  const forged = await viewer.evaluate(async (token) => {
    const r = await fetch('/api/ops/failover/trigger/redis', {
      method: 'POST', headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ reason: 'forged' }),
    });
    return { status: r.status, body: await r.json() };
  }, VIEWER);
  assert.equal(forged.status, 403);
  assert.equal(forged.body.error.code, 'forbidden');
  // Sign out forgets the token.
  await viewer.click('#signout');
  assert.equal(await viewer.evaluate(() => sessionStorage.length), 0);
  assert.ok(await viewer.locator('[data-panel="HealthGrid"]').evaluate((el) => el.classList.contains('offline')));
  await viewer.context().close();
});

// ------------------------------------------------------------ with [cluster] (OC_MODE=cluster)
// One engine (OC_NODE_ID) of cluster OC_CLUSTER_NAME on a one-node etcd, in
// front of a Redis pair: service `redis`, upstreams redis-primary and
// redis-replica. The Rust side starts it once the engine leads `redis` and
// has published its view of both upstreams, up.

const CLUSTER_SVC = `${CLUSTER_PANEL} article[data-service="redis"]`;

/** The rows of redis's view table: [upstream, this engine's judgement]. */
async function viewsOf(p) {
  return p.locator(`${CLUSTER_SVC} table.views tbody tr[data-upstream]`).evaluateAll((rows, node) => rows.map((tr) => {
    const cell = tr.querySelector(`td[data-node="${CSS.escape(node)}"]`);
    return [tr.dataset.upstream, cell ? cell.dataset.health : null];
  }), NODE_ID);
}

async function membersOf(p) {
  return p.locator(`${CLUSTER_PANEL} table.members tbody tr`).evaluateAll((rows) => rows.map((tr) => tr.dataset.node));
}

/** Waits (in node) until `fn` returns something; returns it. */
async function until(what, fn, timeout) {
  const t0 = Date.now();
  for (;;) {
    const v = fn();
    if (v) return v;
    if (Date.now() - t0 > timeout) throw new Error(`${what}: not within ${timeout} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

clusterTest('with [cluster]: this engine connected, the members, the leader, the agreed route and each view', async () => {
  page = await newPage();
  await page.goto(PAGE);
  await signIn(page, VIEWER); // reading the cluster is a viewer's right
  await waitOnline(page);
  const head = page.locator(`${CLUSTER_PANEL} [data-cluster]`);
  await head.waitFor();
  assert.equal(await head.getAttribute('data-cluster'), 'connected');
  const headText = await head.innerText();
  assert.match(headText, new RegExp(`This engine\\s+${NODE_ID}\\s+in\\s+${CLUSTER_NAME}`));
  assert.match(headText, /connected to etcd/);
  assert.match(headText, /etcd revision [1-9]\d* · lease 2 s · quorum a majority/);
  assert.match(await page.locator(`${CLUSTER_PANEL} [data-sub]`).innerText(), new RegExp(`^${CLUSTER_NAME} · 1 member · revision [1-9]\\d*$`));
  assert.deepEqual(await membersOf(page), [NODE_ID]);
  assert.match(await page.locator(`${CLUSTER_PANEL} table.members tbody tr`).innerText(), /\(this engine\)/);
  const svc = page.locator(CLUSTER_SVC);
  assert.equal(await svc.locator('.leader').innerText(), NODE_ID);
  assert.equal(await svc.getAttribute('data-agrees'), 'true');
  const route = await svc.locator('.kv.route').innerText();
  assert.match(route, /agreed route redis-primary/);
  assert.match(route, /epoch 0\b/);
  assert.match(route, /phase serving/);
  assert.match(route, new RegExp(`decided by ${NODE_ID}`));
  assert.match(route, /trigger initial/);
  // One row per upstream, and this engine's column says how it sees each.
  assert.deepEqual(await viewsOf(page), [['redis-primary', 'up'], ['redis-replica', 'up']]);
  assert.deepEqual(await svc.locator('table.views thead th[data-node]').allInnerTexts(), [`${NODE_ID} (this engine)`]);
  assert.equal(await svc.locator('table.views').getAttribute('aria-label'), "redis: each engine's view of each upstream");
  assert.equal(await svc.locator('.disagreement').count(), 0);
  mkdirSync(SHOTS, { recursive: true });
  await page.locator(CLUSTER_PANEL).screenshot({ path: join(SHOTS, 'ops-center-cluster-connected.png') });
});

clusterTest('kill -9 the Redis primary: the panel shows the cluster\'s decision and this engine seeing the primary down', async () => {
  await control('kill-primary');
  const t0 = Date.now();
  await page.waitForFunction((sel) => /agreed route redis-replica/.test(document.querySelector(sel)?.innerText || ''),
    `${CLUSTER_SVC} .kv.route`, { timeout: 10000, polling: 50 });
  console.log(`# the Cluster panel showed the decision ${Date.now() - t0} ms after the kill`);
  const route = await page.locator(`${CLUSTER_SVC} .kv.route`).innerText();
  assert.match(route, /epoch 1\b/);
  assert.match(route, new RegExp(`decided by ${NODE_ID}`));
  assert.match(route, /trigger auto/);
  assert.deepEqual(await viewsOf(page), [['redis-primary', 'down'], ['redis-replica', 'up']]);
  assert.match(await page.locator(`${CLUSTER_SVC} tr[data-upstream="redis-primary"] th`).innerText(), /fenced/);
  assert.match(await page.locator(`${CLUSTER_SVC} tr[data-upstream="redis-replica"] th`).innerText(), /active/);
  assert.equal(await page.locator(CLUSTER_SVC).getAttribute('data-agrees'), 'true');
});

clusterTest('stop etcd: on the cluster_connection message the panel says degraded, with the reason', async () => {
  const seen = clusterLinkMessages.length;
  await control('stop-etcd');
  const t0 = Date.now();
  const lost = await until('a cluster_connection message with connected: false',
    () => clusterLinkMessages.slice(seen).find((m) => m.data.connected === false), 20000);
  console.log(`# cluster_connection (lost) ${lost.at - t0} ms after etcd stopped`);
  assert.equal(lost.data.node_id, NODE_ID);
  assert.equal(lost.data.event || lost.data.type, 'cluster_connection');
  // The page follows the message at once, not its next 10 s refresh.
  await page.waitForSelector(`${CLUSTER_PANEL} [data-cluster="disconnected"]`, { timeout: 1500, polling: 25 });
  console.log(`# the Cluster panel said degraded ${Date.now() - lost.at} ms after the message`);
  const badge = page.locator('#cluster-link');
  assert.equal(await badge.innerText(), 'degraded: not connected to etcd');
  assert.equal(await badge.getAttribute('class'), 'chip warn');
  const why = await page.locator(`${CLUSTER_PANEL} .cluster-down`).innerText();
  assert.match(why, /^Not connected to etcd: \S[\s\S]*\. Serving the last agreed routes, deciding nothing/);
  assert.doesNotMatch(why, /no reason given/);
  // What this engine last read stays on screen.
  assert.deepEqual(await membersOf(page), [NODE_ID]);
  assert.equal(await page.locator(`${CLUSTER_SVC} .leader`).innerText(), NODE_ID);
  assert.match(await page.locator(`${CLUSTER_SVC} .kv.route`).innerText(), /agreed route redis-replica/);
});

clusterTest('the degraded Cluster panel: screenshot, AA contrast, and no wider than a 390 px screen', async () => {
  await page.evaluate(() => document.activeElement?.blur());
  await page.locator(CLUSTER_PANEL).screenshot({ path: join(SHOTS, 'ops-center-cluster.png') });
  assert.deepEqual(await contrastFailures(page), [], 'light scheme contrast');
  const phone = await newPage({ width: 390, height: 844 });
  await phone.goto(PAGE);
  await signIn(phone, VIEWER);
  await waitOnline(phone);
  await phone.locator(`${CLUSTER_PANEL} [data-cluster="disconnected"]`).waitFor();
  // One atomic call: the panel re-renders on every refresh and message, so a
  // located node may be replaced between Playwright's steps.
  await phone.evaluate((sel) => document.querySelector(sel)?.scrollIntoView(), `${CLUSTER_PANEL} .cluster-down`);
  await phone.screenshot({ path: join(tmpdir(), 'ops-center-cluster-390.png') });
  assert.equal(await widerThanScreen(phone), '');
  await phone.context().close();
});

clusterTest('start etcd again: the panel says connected again, with the same member and leader', async () => {
  const seen = clusterLinkMessages.length;
  await control('start-etcd');
  const t0 = Date.now();
  await page.waitForSelector(`${CLUSTER_PANEL} [data-cluster="connected"]`, { timeout: 20000, polling: 50 });
  console.log(`# the Cluster panel said connected ${Date.now() - t0} ms after etcd started`);
  assert.ok(clusterLinkMessages.slice(seen).some((m) => m.data.connected === true), 'a cluster_connection message with connected: true');
  assert.equal(await page.locator(`${CLUSTER_PANEL} .cluster-down`).count(), 0);
  assert.equal(await page.locator('#cluster-link').innerText(), 'connected to etcd');
  assert.deepEqual(await membersOf(page), [NODE_ID]);
  await page.waitForFunction(([sel, node]) => document.querySelector(sel)?.innerText === node,
    [`${CLUSTER_SVC} .leader`, NODE_ID], { timeout: 10000, polling: 50 });
});

nodeTest('no request of the page went anywhere but the engine, and no CSP violation', () => {
  assert.ok(requests.length > 10, `${requests.length} requests recorded`);
  const foreign = requests.filter((u) => {
    const x = new URL(u);
    return x.host !== origin.host || !['http:', 'ws:'].includes(x.protocol);
  });
  assert.deepEqual(foreign, []);
  assert.deepEqual(problems, []);
  console.log(`# ${requests.length} requests, all to ${origin.host}`);
});
