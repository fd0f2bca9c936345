// One WebSocket channel (SPEC 5): the snapshot first, then events, each
// `{type, seq, timestamp, service, data}`. Reconnects with exponential
// backoff and jitter; a `lagged` notice or a gap in `seq` asks the owner
// to refetch the snapshot.

const BASE_MS = 500;
const MAX_MS = 8000;

export class Channel {
  /**
   * @param {string} path /ws/ops/health, ...
   * @param {() => string|null} token
   * @param {{onMessage: Function, onState: Function, onResync: Function}} hooks
   */
  constructor(path, token, hooks) {
    this.path = path;
    this.token = token;
    this.hooks = hooks;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
    this.lastSeq = null;
    this.state = 'idle';
  }

  url() {
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // Browsers cannot set headers on a WebSocket; SPEC 5 takes ?token=.
    return `${scheme}//${location.host}${this.path}?token=${encodeURIComponent(this.token())}`;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onerror = ws.onmessage = ws.onopen = null;
      try { ws.close(1000, 'signed out'); } catch { /* already closed */ }
    }
    this.setState('idle');
  }

  setState(state, extra) {
    this.state = state;
    this.hooks.onState(this, state, extra);
  }

  connect() {
    if (this.stopped || !this.token()) return;
    this.setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch {
      this.retry();
      return;
    }
    this.ws = ws;
    this.lastSeq = null;
    ws.onopen = () => {
      this.attempt = 0;
      this.setState('open');
    };
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (msg.type === 'lagged') {
        this.lastSeq = msg.seq;
        this.hooks.onResync(this, `missed ${msg.data && msg.data.missed} messages`);
        return;
      }
      const first = this.lastSeq === null;
      if (!first && typeof msg.seq === 'number') {
        if (msg.seq <= this.lastSeq) return; // already covered
        // seq is contiguous per channel (SPEC 5): a gap is a loss.
        if (msg.seq > this.lastSeq + 1) this.hooks.onResync(this, `gap before seq ${msg.seq}`);
      }
      this.lastSeq = msg.seq;
      this.hooks.onMessage(this, msg, first);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.retry();
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  retry() {
    if (this.stopped) return;
    const cap = Math.min(MAX_MS, BASE_MS * 2 ** this.attempt);
    const delay = Math.round(cap / 2 + Math.random() * (cap / 2));
    this.attempt = Math.min(this.attempt + 1, 10);
    this.retryAt = Date.now() + delay;
    this.setState('down');
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  /** Try now (e.g. the tab came back to the foreground). */
  kick() {
    if (this.stopped || this.ws) return;
    clearTimeout(this.timer);
    this.connect();
  }
}
