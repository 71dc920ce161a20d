// api.js - the REST client: bearer token (kept in sessionStorage for this
// tab's session only), JSON in and out, errors as ApiError.  A 401 anywhere
// calls the handler given to onUnauthorized() so the page can ask again.

const TOKEN_KEY = 'fleetgw.token';
const BASE = 'api/v1/';

let unauthorizedHandler = () => {};
// Fallback when sessionStorage is unavailable (some privacy settings).
let memoryToken = '';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code || ('HTTP ' + status));
    this.status = status;
    this.code = code;
  }
}

export function getToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY) || '';
  } catch (e) {
    return '';
  }
}

export function setToken(token) {
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch (e) {
    // Storage disabled: the token then lives only as long as this page.
  }
  memoryToken = token || '';
}

function token() {
  return getToken() || memoryToken;
}

export function onUnauthorized(fn) {
  unauthorizedHandler = fn;
}

// Resolves relative to the page so the dashboard also works behind a reverse
// proxy that mounts it under a path prefix.
export function apiUrl(path, params) {
  const u = new URL(BASE + path.replace(/^\//, ''), document.baseURI);
  if (params) {
    for (const [k, v] of Object.entries(params)) {
      if (v !== undefined && v !== null && v !== '') u.searchParams.set(k, String(v));
    }
  }
  return u;
}

async function request(method, path, { params, body, raw } = {}) {
  const headers = { Authorization: 'Bearer ' + token() };
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(apiUrl(path, params), init);
  } catch (e) {
    throw new ApiError(0, 'network', 'The gateway cannot be reached (' + e.message + ')');
  }
  if (res.status === 401) {
    unauthorizedHandler();
    throw new ApiError(401, 'unauthorized', 'The token was not accepted');
  }
  if (!res.ok) {
    let code = 'http_' + res.status;
    let message = res.statusText;
    try {
      const j = await res.json();
      code = j.error || code;
      message = j.message || message;
    } catch (e) {
      // Not JSON (a proxy's error page, say): keep the status text.
    }
    throw new ApiError(res.status, code, message);
  }
  if (raw) return res;
  if (res.status === 204) return null;
  return res.json();
}

export const api = {
  get: (path, params) => request('GET', path, { params }),
  post: (path, body) => request('POST', path, { body }),
  del: (path) => request('DELETE', path),
  raw: (path) => request('GET', path, { raw: true }),
  // Checks a candidate token without storing it; resolves true/false.
  async probe(candidate) {
    const res = await fetch(apiUrl('status'), {
      headers: { Authorization: 'Bearer ' + candidate },
      cache: 'no-store',
    });
    if (res.status === 401) return false;
    if (!res.ok) throw new ApiError(res.status, 'http_' + res.status, res.statusText);
    return true;
  },
};

export const enc = encodeURIComponent;
