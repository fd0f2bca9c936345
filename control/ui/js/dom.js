// Small DOM helpers. Everything is built with createElement and
// textContent, never innerHTML, so nothing from the engine is parsed as
// markup; styles are classes only (the CSP forbids inline styles).

const SVG_NS = 'http://www.w3.org/2000/svg';

/** h('div', {class: 'x', onclick: fn}, child, 'text', [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2), v);
    } else if (k === 'dataset') {
      Object.assign(el.dataset, v);
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

const pad = (n) => String(n).padStart(2, '0');

/** A <time> in the browser's zone with UTC in its title. */
export function time(iso, opts = {}) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return h('span', {}, String(iso));
  const local = opts.date
    ? d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
  const utc = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
  return h('time', { datetime: d.toISOString(), title: utc }, local);
}

/** "42 s", "5 min", "3 h 10 min", "2 d 4 h". */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return '—';
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const hr = Math.floor(m / 60);
  if (hr < 24) return m % 60 ? `${hr} h ${m % 60} min` : `${hr} h`;
  const d = Math.floor(hr / 24);
  return hr % 24 ? `${d} d ${hr % 24} h` : `${d} d`;
}

/** Age of an ISO time, as a <time> whose text is "5 min ago". */
export function age(iso) {
  if (!iso) return h('span', { class: 'muted' }, '—');
  const el = time(iso, { date: true });
  const secs = (Date.now() - new Date(iso).getTime()) / 1000;
  el.textContent = `${duration(secs)} ago`;
  el.dataset.age = iso;
  return el;
}

/** Refreshes every age() on the page (called every few seconds). */
export function refreshAges(root = document) {
  for (const el of root.querySelectorAll('time[data-age]')) {
    const secs = (Date.now() - new Date(el.dataset.age).getTime()) / 1000;
    el.textContent = `${duration(secs)} ago`;
  }
}

export function ms(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  if (v >= 1000) return `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)} s`;
  if (v >= 100) return `${Math.round(v)} ms`;
  if (v >= 10) return `${v.toFixed(1)} ms`;
  return `${v.toFixed(2)} ms`;
}

export function pct(v, digits = 3) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  if (v >= 100) return '100 %';
  return `${v.toFixed(digits)} %`;
}
