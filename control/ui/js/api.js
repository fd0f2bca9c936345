// REST calls to this engine's own origin, with the bearer token. Errors
// become ApiError with the engine's code and a sentence for people.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const PLAIN = {
  unauthorized: 'The token was not accepted (it may have been revoked). Sign in again.',
  forbidden: 'This token may not do that: acting needs an operator token.',
  not_found: 'The engine does not know that service, upstream or alert.',
  bad_request: 'The engine could not read the request.',
  reason_required: 'A reason is required: write why you are doing this.',
  conflict: 'Not possible right now.',
  not_resynced:
    'Refused: the primary diverged after a promote and has not been resynchronized yet. ' +
    'Resynchronize it (rebuild it as a replica of the current primary) before recovering to it.',
  payload_too_large: 'The reason is too long.',
  rate_limited: 'Too many failed sign-ins from this address; wait a minute and try again.',
  timeout: 'The engine did not finish the switch within 30 s; check the failover status.',
};

/** A sentence for an error, with the engine's own message when it adds something. */
export function plainError(err) {
  if (!(err instanceof ApiError)) {
    return 'The engine could not be reached (connection lost). Nothing was changed on this side; try again once the link is back.';
  }
  const base = PLAIN[err.code] || `The engine answered ${err.status}.`;
  return err.message && err.message !== base ? `${base} (${err.message})` : base;
}

export class Api {
  constructor(token) {
    this.token = token;
  }

  async request(method, path, body) {
    const headers = { Authorization: `Bearer ${this.token}`, Accept: 'application/json' };
    const init = { method, headers, cache: 'no-store', credentials: 'omit', redirect: 'error' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), method === 'GET' ? 10000 : 40000);
    init.signal = ctl.signal;
    let res;
    try {
      res = await fetch(path, init);
    } finally {
      clearTimeout(timer);
    }
    let json = null;
    try {
      json = await res.json();
    } catch {
      json = null;
    }
    if (!res.ok) {
      const e = json && json.error ? json.error : {};
      throw new ApiError(res.status, e.code || `http_${res.status}`, e.message || res.statusText);
    }
    return json;
  }

  get(path) {
    return this.request('GET', path);
  }

  post(path, body) {
    return this.request('POST', path, body);
  }
}
