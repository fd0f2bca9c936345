// Operator actions: each asks for confirmation and a reason in a modal
// dialog, POSTs, and says what happened in plain words (the new active
// upstream and epoch, the write pause, or why the engine refused).

import { plainError } from './api.js';

const enc = encodeURIComponent;

function describe(a) {
  switch (a.kind) {
    case 'trigger':
      return { title: `Fail over ${a.service}?`, what: `Switch ${a.service} to its best usable other upstream now. Clients on the current upstream are moved.`, ok: 'Fail over', path: `/api/ops/failover/trigger/${enc(a.service)}` };
    case 'recover':
      return { title: `Recover ${a.service}?`, what: `Switch ${a.service} back to its configured primary. Refused if the primary is not usable or has not been resynchronized.`, ok: 'Recover', path: `/api/ops/failover/recover/${enc(a.service)}` };
    case 'switchover':
      return { title: `Planned switchover away from ${a.pool}?`, what: `Move ${a.service} from ${a.pool} to its best usable other upstream, without losing acknowledged writes (writes pause briefly).`, ok: 'Switch over', path: `/api/ops/redundancy/failover/${enc(a.pool)}` };
    case 'failback':
      return { title: `Planned switch to ${a.pool}?`, what: `Move ${a.service} to ${a.pool}, without losing acknowledged writes (writes pause briefly).`, ok: 'Switch', path: `/api/ops/redundancy/failback/${enc(a.pool)}` };
    case 'ack':
      return { title: 'Acknowledge this alert?', what: a.title, ok: 'Acknowledge', path: `/api/ops/alerts/${enc(a.alert)}/ack` };
    case 'declare-emergency':
      return { title: 'Declare an emergency?', what: 'The engine state becomes emergency and every open alert is routed to every dashboard.', ok: 'Declare emergency', path: '/api/ops/emergency', body: { enabled: true } };
    case 'clear-emergency':
      return { title: 'Clear the emergency?', what: 'The engine state goes back to what the services say.', ok: 'Clear emergency', path: '/api/ops/emergency', body: { enabled: false } };
    default:
      return null;
  }
}

/** A sentence for a successful answer. */
export function outcome(a, r) {
  if (!r || typeof r !== 'object') return 'Done.';
  if (a.kind === 'ack') return `Acknowledged${r.acknowledged_by ? ` by ${r.acknowledged_by}` : ''}.`;
  if (a.kind.endsWith('emergency')) return `Engine state is now ${r.failover_state || 'updated'}.`;
  const svc = r.service && typeof r.service === 'object' ? r.service : r;
  const name = (typeof r.service === 'string' && r.service) || svc.name || a.service;
  const active = r.active_upstream || svc.active_upstream;
  const epoch = r.epoch ?? svc.epoch;
  let text = `${name} is now on ${active || 'no upstream'}${epoch !== undefined ? ` (epoch ${epoch})` : ''}.`;
  if (Number.isFinite(r.pause_ms)) text += ` Writes were paused ${r.pause_ms} ms.`;
  return text;
}

export class Actions {
  constructor({ api, onDone }) {
    this.api = api;
    this.onDone = onDone;
    this.dialog = document.getElementById('confirm');
    this.form = document.getElementById('confirm-form');
    this.reason = document.getElementById('confirm-reason');
    this.result = document.getElementById('confirm-result');
    this.okBtn = document.getElementById('confirm-ok');
    this.cancelBtn = document.getElementById('confirm-cancel');
    this.current = null;
    this.busy = false;
    this.form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.submit();
    });
    this.cancelBtn.addEventListener('click', () => this.close());
    this.dialog.addEventListener('close', () => { this.current = null; });
  }

  open(action) {
    const d = describe(action);
    if (!d) return;
    this.current = { action, d };
    document.getElementById('confirm-title').textContent = d.title;
    document.getElementById('confirm-what').textContent = d.what;
    this.okBtn.textContent = d.ok;
    this.okBtn.disabled = false;
    this.cancelBtn.textContent = 'Cancel';
    this.reason.value = '';
    this.reason.disabled = false;
    this.result.textContent = '';
    this.result.className = 'result';
    this.dialog.showModal();
    this.reason.focus();
  }

  close() {
    if (this.dialog.open) this.dialog.close();
  }

  async submit() {
    if (!this.current || this.busy) return;
    const reason = this.reason.value.trim();
    if (!reason) {
      this.result.textContent = 'A reason is required: write why you are doing this.';
      this.result.className = 'result bad';
      this.reason.focus();
      return;
    }
    const { action, d } = this.current;
    this.busy = true;
    this.okBtn.disabled = true;
    this.result.textContent = 'Working… (a switch can take up to 30 s)';
    this.result.className = 'result';
    try {
      const r = await this.api().post(d.path, { ...(d.body || {}), reason });
      const text = outcome(action, r);
      this.result.textContent = text;
      this.result.className = 'result ok';
      this.reason.disabled = true;
      this.cancelBtn.textContent = 'Close';
      this.onDone(action, true, text);
    } catch (err) {
      const text = plainError(err);
      this.result.textContent = text;
      this.result.className = 'result bad';
      this.okBtn.disabled = false;
      this.onDone(action, false, text);
    } finally {
      this.busy = false;
    }
  }
}
