// app.js - fleetgw's operators' dashboard.  Plain ES modules, no build step,
// nothing loaded from outside the gateway.  Data comes from the REST API
// (/api/v1, bearer token) and live updates from the WebSocket event stream.

import { api, apiUrl, ApiError, getToken, setToken, onUnauthorized, enc } from './api.js';
import { RateChart, fmtRate } from './chart.js';
import { EventStream } from './events.js';
import {
  h, clear, $, $$, fmtTime, fmtDate, fmtAgo, tzName, fmtDuration, daysLeft, fmtUptime, fmtBytes, fmtInt,
  debounce, badge, lanBadge,
} from './util.js';

const PAGE = 50;
const AUDIT_PAGE = 25;
const STATUS_EVERY_MS = 2000;
const FEED_MAX = 200;
const DEVICE_EVENTS = new Set(['device.state', 'device.session', 'provision.step', 'admission']);

const ui = {
  login: $('#login'),
  loginForm: $('#login-form'),
  tokenInput: $('#token-input'),
  loginError: $('#login-error'),
  main: $('#main'),
  topStatus: $('#topbar-status'),
  deviceRows: $('#device-rows'),
  deviceDialog: $('#device-dialog'),
  devBody: $('#dev-body'),
  feed: $('#feed-list'),
};

const st = {
  running: false,
  statusTimer: null,
  polls: 0,
  chart: new RateChart($('#rate-chart')),
  devices: { offset: 0, total: 0, items: [], q: '', state: '', expiry: '', sort: { key: 'client_id', dir: 1 } },
  warnDays: 30,         // provisioning.expiry_warn_days, from the status
  pending: { offset: 0, total: 0 },
  orphans: { offset: 0, total: 0 },
  audit: { offset: 0, total: 0, size: AUDIT_PAGE },
  openDevice: null,     // client id shown in the device dialog
  admin: null,          // the token may run commands: true, false, or null (not known yet)
  shownKey: null,       // { clientId, key, identity }: a DTLS key just made, shown once
  dirty: new Set(),     // client ids touched by events since the last refresh
  feedPaused: false,
  lastUplink: null,
};

const events = new EventStream({
  getToken,
  onEvent: handleEvent,
  onState: (state, detail) => {
    const el = $('#ws-state');
    el.textContent = state === 'retrying' ? 'retry in ' + detail + ' s' : state;
    $('#ws-pill').dataset.state = state;
  },
});

/* ------------------------------------------------------------------------ */
/* Messages to the operator                                                  */
/* ------------------------------------------------------------------------ */

function toast(text, kind = 'info') {
  const t = h('div', { class: 'toast toast-' + kind }, text);
  $('#toasts').appendChild(t);
  setTimeout(() => t.remove(), kind === 'error' ? 8000 : 4000);
}

function explain(e) {
  if (!(e instanceof ApiError)) return String(e && e.message ? e.message : e);
  if (e.status === 403) return 'Not allowed with this token (read-only?): ' + e.message;
  return e.message;
}

/* ------------------------------------------------------------------------ */
/* Signing in and out                                                        */
/* ------------------------------------------------------------------------ */

function showLogin(message) {
  stop();
  ui.main.hidden = true;
  ui.topStatus.hidden = true;
  $('#gw-ident').textContent = 'fleet gateway';
  ui.login.hidden = false;
  ui.loginError.textContent = message || '';
  ui.tokenInput.value = '';
  ui.tokenInput.focus();
}

onUnauthorized(() => {
  if (!st.running && ui.login.hidden === false) return;
  setToken('');
  showLogin('The token was not accepted (it may have been changed). Please enter it again.');
});

ui.loginForm.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const candidate = ui.tokenInput.value.trim();
  if (!candidate) return;
  const btn = ui.loginForm.querySelector('button');
  btn.disabled = true;
  ui.loginError.textContent = '';
  try {
    if (await api.probe(candidate)) {
      setToken(candidate);
      start();
    } else {
      ui.loginError.textContent = 'That token was not accepted.';
      ui.tokenInput.select();
    }
  } catch (e) {
    ui.loginError.textContent = 'The gateway cannot be reached: ' + e.message;
  } finally {
    btn.disabled = false;
  }
});

$('#signout').addEventListener('click', (ev) => {
  ev.preventDefault();
  setToken('');
  if (ui.deviceDialog.open) ui.deviceDialog.close();
  showLogin('Signed out.');
});

function start() {
  ui.login.hidden = true;
  ui.main.hidden = false;
  ui.topStatus.hidden = false;
  st.running = true;
  probeRole();
  loadHistory();
  pollStatus();
  loadDevices();
  loadPending();
  loadOrphans();
  loadAudit();
  loadAllowlist();
  events.start();
}

// Whether the token may run commands, asked once without doing anything: an
// empty batch of DTLS keys is refused before it reaches the gateway - with
// 403 for the read-only token, 400 ("no ClientId") for the admin token.
async function probeRole() {
  st.admin = null;
  try {
    const res = await fetch(apiUrl('psks'), {
      method: 'POST', cache: 'no-store', body: '',
      headers: { Authorization: 'Bearer ' + getToken(), 'Content-Type': 'text/csv' },
    });
    st.admin = res.status !== 403 && res.status !== 401;
  } catch (e) {
    st.admin = null; // unknown: the buttons show, and a refusal says why
  }
  if (st.openDevice) renderDevicePanel(st.openDevice);
}

function stop() {
  st.running = false;
  clearTimeout(st.statusTimer);
  st.statusTimer = null;
  events.stop();
}

/* ------------------------------------------------------------------------ */
/* Overview: status counts, uplink, messages per second                     */
/* ------------------------------------------------------------------------ */

// The last hour's counts kept by the gateway, so the chart does not start
// empty after a reload.
async function loadHistory() {
  try {
    const r = await api.get('status/history');
    st.chart.load(r.items, r.step_s);
  } catch (e) {
    // An older gateway without the history: the chart fills as it polls.
  }
}

async function pollStatus() {
  clearTimeout(st.statusTimer);
  if (!st.running) return;
  try {
    renderStatus(await api.get('status'));
    // Counters and "last seen" move without events: refresh the visible
    // page every 10 s too (50 rows at most).
    if (++st.polls % 5 === 0 && !refreshing) loadDevices();
  } catch (e) {
    if (e.status === 401) return;
    $('#status-meta').textContent = 'status unavailable: ' + explain(e);
    $('#uplink-state').textContent = 'unknown';
  }
  if (st.running) st.statusTimer = setTimeout(pollStatus, STATUS_EVERY_MS);
}

// "3 certificates expire within 30 days (1 expired)", with a button that
// filters the device list to them; hidden when none does.
function renderCertWarning(ce) {
  const p = $('#cert-warning');
  if (!ce) { p.hidden = true; return; }
  st.warnDays = ce.warn_days || st.warnDays;
  const n = ce.expiring || 0;
  const caLeft = ce.ca_not_after ? daysLeft(ce.ca_not_after) : null;
  const caWarn = caLeft !== null && caLeft < 2 * st.warnDays;
  p.hidden = !n && !caWarn;
  if (p.hidden) return;
  p.classList.toggle('expired', (ce.expired || 0) > 0 || (caLeft !== null && caLeft < 0));
  const parts = [];
  if (n) {
    parts.push(fmtInt(n) + (n === 1 ? ' certificate expires' : ' certificates expire') + ' within ' +
      st.warnDays + ' days' + (ce.expired ? ' (' + fmtInt(ce.expired) + ' already expired)' : '') +
      (ce.soonest_not_after ? '; the soonest ' + fmtDate(ce.soonest_not_after) : '') + '.');
  }
  if (caWarn) {
    parts.push('The local CA\'s certificate ' + (caLeft < 0 ? 'expired' : 'expires') + ' ' +
      fmtDate(ce.ca_not_after) + '.');
  }
  clear(p).append(parts.join(' '));
  if (n) {
    p.appendChild(h('button', { type: 'button', class: 'btn small', onclick: () => {
      st.devices.expiry = 'expiring';
      $('#device-expiry').value = 'expiring';
      st.devices.offset = 0;
      loadDevices();
    } }, 'Show them'));
  }
}

function renderStatus(s) {
  const counts = {
    ...Object.fromEntries(Object.entries(s.devices || {})),
    'leaves.active': s.leaves && s.leaves.active,
    'leaves.asleep': s.leaves && s.leaves.asleep,
    'leaves.connecting': s.leaves && s.leaves.connecting,
    provisioning_in_flight: s.provisioning_in_flight,
    upstreams_up: s.upstreams_up,
    'outbox.messages': s.outbox && s.outbox.messages,
  };
  for (const li of $$('[data-count]')) {
    const v = counts[li.dataset.count];
    li.querySelector('.count-n').textContent = fmtInt(v);
    li.classList.toggle('zero', !v);
  }
  const ob = s.outbox;
  if (ob) {
    $('[data-count="outbox.messages"]').title = !ob.enabled ? 'store and forward is off (outbox.enabled)'
      : fmtInt(ob.messages) + ' QoS 1/2 message(s) of ' + fmtInt(ob.leaves) + ' leaf/leaves stored for the cloud' +
        (ob.oldest_age_s ? ', the oldest for ' + fmtDuration(ob.oldest_age_s) : '');
  }
  renderCertWarning(s.cert_expiry);
  $('#uplink-state').textContent = s.uplink || '–';
  $('#uplink-pill').dataset.state = s.uplink || '';
  $('#gw-ident').textContent = 'gateway ' + (s.gateway_id ?? '?') + ' · v' + (s.version || '?');
  $('#status-meta').textContent = 'up ' + fmtUptime(s.uptime_s) + ' · backend ' + (s.backend || '–') +
    ' · registry ' + fmtBytes(s.db_bytes);
  const r = st.chart.push(Number(s.msgs_in) || 0, Number(s.msgs_out) || 0);
  if (r) {
    $('#rate-in').textContent = fmtRate(r.in) + '/s';
    $('#rate-out').textContent = fmtRate(r.out) + '/s';
  }
}

/* ------------------------------------------------------------------------ */
/* Devices table                                                             */
/* ------------------------------------------------------------------------ */

const SORT_KEYS = {
  client_id: (d) => d.client_id || '',
  thing_name: (d) => d.thing_name || '',
  state: (d) => d.state || '',
  session: (d) => d.session || '',
  lan_security: (d) => d.lan_security || '',
  address: (d) => d.address || d.bound_addr || '',
  last_seen: (d) => d.last_seen || 0,
  cert_not_after: (d) => (d.certificate && d.certificate.not_after) || Number.MAX_SAFE_INTEGER,
  msgs_in: (d) => d.msgs_in || 0,
  msgs_out: (d) => d.msgs_out || 0,
  outbox: (d) => (d.outbox && d.outbox.messages) || 0,
};

// Columns the server sorts across every page (?sort=); the others sort the
// page on screen.
const SERVER_SORT = new Set(['client_id', 'thing_name', 'state', 'last_seen', 'cert_not_after']);

function sorted(items) {
  const { key, dir } = st.devices.sort;
  if (SERVER_SORT.has(key)) return items;
  const f = SORT_KEYS[key];
  return [...items].sort((a, b) => {
    const x = f(a);
    const y = f(b);
    const c = typeof x === 'number' ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true });
    return c * dir || a.client_id.localeCompare(b.client_id, undefined, { numeric: true });
  });
}

// Within provisioning.expiry_warn_days: the warning style; past: the error style.
function expiryClass(left) {
  return left < 0 ? 'expired' : left < st.warnDays ? 'expiring' : '';
}

function certCell(d) {
  const c = d.certificate;
  if (!c || !c.not_after) return h('td', { class: 'muted', 'data-field': 'cert' }, '–');
  const left = daysLeft(c.not_after);
  const cls = expiryClass(left);
  return h('td', { class: cls, 'data-field': 'cert', title: fmtTime(c.not_after) },
    fmtDate(c.not_after), h('span', { class: 'sub' }, left < 0 ? ' expired' : ' ' + left + ' d'));
}

// Messages waiting for the cloud, with the oldest one's age; over a minute
// in the warning style (the uplink, or the leaf's cloud identity, is down).
const OUTBOX_OLD_S = 60;

function outboxCell(d) {
  const o = d.outbox;
  if (!o || !o.enabled || !o.messages) {
    return h('td', { class: 'num muted', 'data-field': 'outbox',
      title: o && !o.enabled ? 'store and forward is off' : 'nothing waits for the cloud' }, '–');
  }
  const age = o.oldest_age_s || 0;
  return h('td', { class: 'num' + (age > OUTBOX_OLD_S ? ' warn' : ''), 'data-field': 'outbox',
    title: fmtInt(o.messages) + ' message(s) waiting for the cloud (' + fmtBytes(o.bytes) + ', ' +
      fmtInt(o.in_flight) + ' in flight)' + (age ? '; the oldest for ' + fmtDuration(age) : '') },
  fmtInt(o.messages), age > 0 ? h('span', { class: 'sub' }, fmtDuration(age)) : null);
}

function deviceRow(d) {
  const open = () => openDevice(d.client_id);
  const tr = h('tr', { 'data-client-id': d.client_id, class: 'clickable', onclick: open },
    h('td', {}, h('button', { type: 'button', class: 'linkish mono', onclick: (e) => { e.stopPropagation(); open(); } },
      d.client_id)),
    h('td', { class: 'mono thing', title: d.thing_name || '' }, d.thing_name || '–'),
    h('td', { 'data-field': 'state' }, badge('state', d.state)),
    h('td', { 'data-field': 'session' }, badge('session', d.session)),
    h('td', { 'data-field': 'lan' }, lanBadge(d.lan_security),
      d.psk ? h('span', { class: 'sub', title: 'a DTLS key is held for it' }, ' · key') : null),
    d.address ? h('td', { class: 'mono' }, d.address)
      : h('td', { class: 'mono muted', title: d.bound_addr ? 'not connected; bound to ' + d.bound_addr : 'not connected' },
        d.bound_addr || '–'),
    h('td', { 'data-ago': d.last_seen || '', title: fmtTime(d.last_seen) }, fmtAgo(d.last_seen)),
    certCell(d),
    d.msgs_refused
      ? h('td', { class: 'num warn', 'data-field': 'refused',
        title: fmtInt(d.msgs_refused) + ' publish(es) refused by the cloud and dropped' },
      fmtInt(d.msgs_in) + ' (' + fmtInt(d.msgs_refused) + ' refused)')
      : h('td', { class: 'num' }, fmtInt(d.msgs_in)),
    h('td', { class: 'num' }, fmtInt(d.msgs_out)),
    outboxCell(d));
  if (d.last_error) tr.classList.add('has-error');
  return tr;
}

function renderDevices() {
  const D = st.devices;
  clear(ui.deviceRows);
  for (const d of sorted(D.items)) ui.deviceRows.appendChild(deviceRow(d));
  $('#devices-empty').hidden = D.items.length > 0;
  renderPager($('#device-pager'), D, D.items.length, 'devices');
  for (const th of $$('#device-table th[data-sort]')) {
    const on = th.dataset.sort === D.sort.key;
    if (on) th.setAttribute('aria-sort', D.sort.dir > 0 ? 'ascending' : 'descending');
    else th.removeAttribute('aria-sort');
  }
}

function renderPager(pager, P, shown, noun) {
  const info = pager.querySelector('.pager-info');
  const size = P.size || PAGE;
  const pages = Math.max(1, Math.ceil(P.total / size));
  const page = Math.floor(P.offset / size) + 1;
  info.textContent = P.total === 0 ? 'no ' + noun
    : (P.offset + 1) + '–' + (P.offset + shown) + ' of ' + fmtInt(P.total) + ' ' + noun +
      ' · page ' + page + ' of ' + pages;
  pager.querySelector('[data-page="prev"]').disabled = P.offset <= 0;
  pager.querySelector('[data-page="next"]').disabled = P.offset + size >= P.total;
  pager.hidden = P.total <= size && pager.dataset.always === undefined;
}

async function loadDevices() {
  const D = st.devices;
  try {
    const params = { state: D.state, q: D.q, offset: D.offset, limit: PAGE };
    if (D.expiry) params.expires_within_days = D.expiry === 'expired' ? 0 : st.warnDays;
    if (SERVER_SORT.has(D.sort.key)) params.sort = (D.sort.dir < 0 ? '-' : '') + D.sort.key;
    const r = await api.get('devices', params);
    // The page may have emptied (devices decommissioned, filter narrowed).
    if (r.items.length === 0 && r.total > 0 && D.offset > 0) {
      D.offset = Math.max(0, Math.floor((r.total - 1) / PAGE) * PAGE);
      return loadDevices();
    }
    D.items = r.items;
    D.total = r.total;
    renderDevices();
  } catch (e) {
    if (e.status !== 401) toast('Devices: ' + explain(e), 'error');
  }
}

// Replace one row in place (after an event or a command).
function updateDeviceRow(d) {
  const D = st.devices;
  const i = D.items.findIndex((x) => x.client_id === d.client_id);
  if (i < 0) return false;
  const copy = { ...d };
  // The single-device GET has the subscription list; the table wants the count.
  if (Array.isArray(copy.subscriptions)) copy.subscriptions = copy.subscriptions.length;
  D.items[i] = copy;
  const old = ui.deviceRows.querySelector('tr[data-client-id="' + CSS.escape(d.client_id) + '"]');
  if (old) old.replaceWith(deviceRow(copy));
  return true;
}

for (const th of $$('#device-table th[data-sort]')) {
  th.querySelector('button').addEventListener('click', () => {
    const S = st.devices.sort;
    if (S.key === th.dataset.sort) S.dir = -S.dir;
    else {
      S.key = th.dataset.sort;
      S.dir = ['last_seen', 'msgs_in', 'msgs_out', 'outbox'].includes(S.key) ? -1 : 1;
    }
    if (SERVER_SORT.has(S.key)) {
      st.devices.offset = 0;
      loadDevices();
    } else {
      renderDevices();
    }
  });
}

const reloadFromFilter = debounce(() => {
  st.devices.offset = 0;
  loadDevices();
}, 300);
$('#device-q').addEventListener('input', (e) => {
  st.devices.q = e.target.value.trim();
  reloadFromFilter();
});
$('#device-state').addEventListener('change', (e) => {
  st.devices.state = e.target.value;
  reloadFromFilter.cancel();
  st.devices.offset = 0;
  loadDevices();
});
$('#device-expiry').addEventListener('change', (e) => {
  st.devices.expiry = e.target.value;
  reloadFromFilter.cancel();
  st.devices.offset = 0;
  loadDevices();
});
$('#device-filter').addEventListener('submit', (e) => e.preventDefault());

function wirePager(pager, P, load) {
  pager.querySelector('[data-page="prev"]').addEventListener('click', () => {
    P.offset = Math.max(0, P.offset - (P.size || PAGE));
    load();
  });
  pager.querySelector('[data-page="next"]').addEventListener('click', () => {
    if (P.offset + (P.size || PAGE) < P.total) P.offset += P.size || PAGE;
    load();
  });
}
wirePager($('#device-pager'), st.devices, loadDevices);

/* ------------------------------------------------------------------------ */
/* Commands                                                                  */
/* ------------------------------------------------------------------------ */

const COMMANDS = {
  approve: { label: 'Approve', method: 'post', done: 'approved' },
  block: {
    label: 'Block', method: 'post', done: 'blocked',
    confirm: (id) => 'Block ' + id + '? Its session is closed and it cannot connect until it is ' +
      'unblocked.',
  },
  unblock: { label: 'Unblock', method: 'post', done: 'unblocked' },
  reprovision: {
    label: 'Reprovision', method: 'post', done: 'will be provisioned again at its next connect',
    confirm: (id) => 'Reprovision ' + id + '? Its active certificate becomes superseded and a new one ' +
      'is issued when the device next connects.',
  },
  rotate: {
    label: 'Rotate certificate', method: 'post',
    done: 'rotation started; the old certificate is superseded when it completes',
    confirm: (id) => 'Rotate the certificate of ' + id + '? It gets a new certificate for the same ' +
      'thing; its connection switches to it, and the old one is listed for deactivation.',
  },
  release: {
    label: 'Release binding', method: 'post', done: 'binding released',
    confirm: (id) => 'Release the address binding of ' + id + '? The next device to connect ' +
      'with this ClientId, from any address, is bound to it.',
  },
  decommission: {
    label: 'Decommission', method: 'del', done: 'decommissioned',
    confirm: (id) => 'Decommission ' + id + '? Its sessions are closed, its certificate becomes ' +
      'inactive and it can no longer connect. The audit trail is kept.',
  },
};

function confirmDialog(text, okLabel) {
  const dlg = $('#confirm-dialog');
  $('#confirm-text').textContent = text;
  $('#confirm-ok').textContent = okLabel;
  dlg.returnValue = '';
  return new Promise((resolve) => {
    dlg.addEventListener('close', () => resolve(dlg.returnValue === 'ok'), { once: true });
    dlg.showModal();
  });
}

async function runCommand(action, clientId, button) {
  const c = COMMANDS[action];
  if (c.confirm && !(await confirmDialog(c.confirm(clientId), c.label))) return;
  if (button) button.disabled = true;
  try {
    const path = 'devices/' + enc(clientId) + (action === 'decommission' ? '' : '/' + action);
    const d = c.method === 'del' ? await api.del(path) : await api.post(path, {});
    toast(clientId + ': ' + c.done, 'ok');
    if (d && d.client_id) updateDeviceRow(d);
  } catch (e) {
    if (e.status !== 401) toast(clientId + ': ' + c.label.toLowerCase() + ' failed — ' + explain(e), 'error');
  } finally {
    if (button) button.disabled = false;
  }
  markDirty(clientId);
  refreshSoon();
}

/* DTLS keys: made, rotated and revoked from the device panel.  A new key is
   shown once, in the panel, until the operator closes it; the gateway never
   shows it again.  Any command hides the key shown (even one that fails). */
const PSK_SHOWN = {
  start: () => { st.shownKey = null; },
  answer: (clientId, r) => {
    if (r && r.key) st.shownKey = { clientId, key: r.key, identity: r.psk_identity };
  },
};
const PSK_COMMANDS = {
  create: {
    ...PSK_SHOWN, label: 'Create key', method: 'post', path: '/psk', done: 'DTLS key created',
    confirm: (id) => 'Create a DTLS pre-shared key for ' + id + '? It is shown once, right ' +
      'after; copy it into the leaf.',
  },
  rotate: {
    ...PSK_SHOWN, label: 'Rotate key', method: 'post', path: '/psk/rotate', done: 'DTLS key rotated',
    confirm: (id) => 'Rotate the DTLS key of ' + id + '? The current key stops working at once ' +
      'and the leaf\'s DTLS sessions are closed: it needs the new key.',
  },
  revoke: {
    ...PSK_SHOWN, label: 'Revoke key', method: 'del', path: '/psk', done: 'DTLS key revoked',
    confirm: (id) => 'Revoke the DTLS key of ' + id + '? Its DTLS sessions are closed and it ' +
      'cannot connect over DTLS until it is given a new key.',
  },
};

// A command from the device panel's sections (c: a PSK_COMMANDS entry or
// OUTBOX_DISCARD), confirmed first; the panel is drawn again after it.
// c.start runs once confirmed, c.answer with the answer; c.done is the
// toast's text (or makes it from the answer).
async function runPanelCommand(c, clientId, button) {
  if (!(await confirmDialog(c.confirm(clientId), c.label))) return;
  if (button) button.disabled = true;
  if (c.start) c.start();
  try {
    const path = 'devices/' + enc(clientId) + c.path;
    const r = c.method === 'del' ? await api.del(path) : await api.post(path, {});
    if (c.answer) c.answer(clientId, r);
    toast(clientId + ': ' + (typeof c.done === 'function' ? c.done(r) : c.done), 'ok');
  } catch (e) {
    if (e.status !== 401) toast(clientId + ': ' + c.label.toLowerCase() + ' failed — ' + explain(e), 'error');
  } finally {
    if (button) button.disabled = false;
  }
  if (st.openDevice === clientId) await renderDevicePanel(clientId);
  markDirty(clientId);
  refreshSoon();
}

function keyBox(k) {
  const input = h('input', { type: 'text', readonly: true, value: k.key, id: 'psk-key',
    'aria-label': 'The new DTLS key of ' + k.clientId, spellcheck: 'false' });
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(k.key);
    } catch (e) {
      // No clipboard API (a page over plain HTTP): the old way.
      input.select();
      document.execCommand('copy');
    }
    toast('Key copied', 'ok');
  };
  return h('div', { class: 'key-once', role: 'alert', 'data-psk-once': '' },
    h('strong', {}, 'Copy this key now: it will not be shown again.'),
    h('div', { class: 'sub' }, 'PSK identity: ', h('span', { class: 'mono' }, k.identity)),
    h('div', { class: 'key-row' }, input,
      h('button', { type: 'button', class: 'btn small', onclick: copy }, 'Copy'),
      h('button', { type: 'button', class: 'btn small', onclick: () => {
        st.shownKey = null;
        if (st.openDevice) renderDevicePanel(st.openDevice);
      } }, 'Done')));
}

function pskSection(d) {
  const can = {
    create: !d.psk && d.state !== 'blocked' && d.state !== 'revoked',
    rotate: d.psk && d.state !== 'revoked',
    revoke: d.psk,
  };
  const shown = st.shownKey && st.shownKey.clientId === d.client_id ? st.shownKey : null;
  return h('section', { id: 'psk-section' }, h('h3', {}, 'DTLS key'),
    dl([
      ['LAN security', lanBadge(d.lan_security)],
      ['Key', h('span', { 'data-field': 'psk' }, d.psk ? 'held (shown only when it was made)' : 'none')],
      ['PSK identity', h('span', { class: 'mono' }, d.client_id)],
    ]),
    shown ? keyBox(shown) : null,
    st.admin === false ? null : h('div', { class: 'actions wrap' },
      Object.entries(PSK_COMMANDS).filter(([k]) => can[k]).map(([k, cmd]) =>
        h('button', {
          type: 'button', 'data-psk-action': k,
          class: 'btn small ' + (k === 'revoke' ? 'danger-outline' : k === 'create' ? 'primary' : ''),
          onclick: (e) => runPanelCommand(cmd, d.client_id, e.currentTarget),
        }, cmd.label))));
}

/* Store and forward: what waits for the cloud, and the admin's discard of it
   (the messages not yet in flight; the leaf had its PUBACK for each). */
const OUTBOX_DISCARD = {
  label: 'Discard', method: 'del', path: '/outbox',
  done: (r) => fmtInt(r && r.discarded) + ' outbox message(s) discarded',
  confirm: (id) => 'Discard the messages of ' + id + ' waiting for the cloud? The leaf was told ' +
    'they were taken; they will never be delivered. Messages already sent stay.',
};

function outboxSection(d) {
  const o = d.outbox;
  if (!o || !o.enabled) {
    return h('section', { id: 'outbox-section' }, h('h3', {}, 'Outbox'),
      h('p', { class: 'muted' }, 'Store and forward is off (outbox.enabled).'));
  }
  const age = o.oldest_age_s;
  return h('section', { id: 'outbox-section' }, h('h3', {}, 'Outbox'),
    dl([
      ['Waiting', h('span', { 'data-field': 'outbox-messages', class: age > OUTBOX_OLD_S ? 'warn' : '' },
        fmtInt(o.messages) + (o.messages ? ' (' + fmtBytes(o.bytes) + ')' : ''))],
      ['In flight', fmtInt(o.in_flight)],
      ['Oldest', age === null || age === undefined ? '–' : fmtDuration(age)],
      ['Stored / delivered', fmtInt(o.stored) + ' / ' + fmtInt(o.delivered)],
      ['Refused when full', h('span', { title: 'the leaf was told "congestion" and kept them' },
        fmtInt(o.refused_full))],
      ['Dropped / expired', fmtInt(o.dropped) + ' / ' + fmtInt(o.expired)],
      ['Refused by the cloud', fmtInt(o.cloud_refused)],
      ['Discarded', h('span', { 'data-field': 'outbox-discarded' }, fmtInt(o.discarded))],
    ]),
    st.admin === false || o.messages <= o.in_flight ? null : h('div', { class: 'actions wrap' },
      h('button', {
        type: 'button', 'data-outbox-action': 'discard', class: 'btn small danger-outline',
        onclick: (e) => runPanelCommand(OUTBOX_DISCARD, d.client_id, e.currentTarget),
      }, OUTBOX_DISCARD.label)));
}

/* ------------------------------------------------------------------------ */
/* Pending approvals                                                         */
/* ------------------------------------------------------------------------ */

async function loadPending() {
  const P = st.pending;
  try {
    const r = await api.get('devices', { state: 'pending', offset: P.offset, limit: PAGE });
    if (r.items.length === 0 && r.total > 0 && P.offset > 0) {
      P.offset = 0;
      return loadPending();
    }
    P.total = r.total;
    const list = clear($('#pending-list'));
    for (const d of r.items) {
      list.appendChild(h('li', { class: 'pending-item', 'data-client-id': d.client_id },
        h('div', { class: 'pending-id' },
          h('button', { type: 'button', class: 'linkish mono', onclick: () => openDevice(d.client_id) }, d.client_id),
          h('span', { class: 'sub' },
            (d.address || d.bound_addr || 'no address') + ' · first seen ' + fmtAgo(d.first_seen) +
            (d.attempts ? ' · ' + d.attempts + ' attempt' + (d.attempts === 1 ? '' : 's') : ''))),
        h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'btn primary', 'data-action': 'approve',
            'aria-label': 'Approve ' + d.client_id,
            onclick: (e) => runCommand('approve', d.client_id, e.currentTarget) }, 'Approve'),
          h('button', { type: 'button', class: 'btn danger-outline', 'data-action': 'block',
            'aria-label': 'Block ' + d.client_id,
            onclick: (e) => runCommand('block', d.client_id, e.currentTarget) }, 'Block'))));
    }
    $('#pending-count').textContent = fmtInt(r.total);
    $('#pending-count').classList.toggle('attention', r.total > 0);
    $('#pending-empty').hidden = r.total > 0;
    renderPager($('#pending-pager'), P, r.items.length, 'pending');
  } catch (e) {
    if (e.status !== 401) toast('Pending approvals: ' + explain(e), 'error');
  }
}
wirePager($('#pending-pager'), st.pending, loadPending);

/* ------------------------------------------------------------------------ */
/* Orphaned certificates                                                     */
/* ------------------------------------------------------------------------ */

async function loadOrphans() {
  const P = st.orphans;
  try {
    const r = await api.get('certificates', { status: 'orphaned', offset: P.offset, limit: PAGE });
    P.total = r.total;
    const rows = clear($('#orphans-rows'));
    for (const c of r.items) {
      rows.appendChild(h('tr', { 'data-cert-id': c.cert_id },
        h('td', { class: 'mono ellipsis', title: c.cert_id }, c.cert_id),
        h('td', {}, c.client_id
          ? h('button', { type: 'button', class: 'linkish mono', onclick: () => openDevice(c.client_id) }, c.client_id)
          : '–'),
        h('td', {}, fmtDate(c.not_after)),
        h('td', { class: 'mono ellipsis', title: c.fingerprint || '' }, c.fingerprint || '–'),
        h('td', {}, c.reason || '–'),
        h('td', { title: fmtTime(c.created_at) }, fmtAgo(c.created_at))));
    }
    $('#orphans-count').textContent = fmtInt(r.total);
    $('#orphans-count').classList.toggle('attention', r.total > 0);
    $('#orphans-empty').hidden = r.total > 0;
    $('#orphans-table').hidden = r.total === 0;
    renderPager($('#orphans-pager'), P, r.items.length, 'certificates');
  } catch (e) {
    if (e.status !== 401) toast('Orphaned certificates: ' + explain(e), 'error');
  }
}
wirePager($('#orphans-pager'), st.orphans, loadOrphans);
$('#orphans-refresh').addEventListener('click', loadOrphans);

/* ------------------------------------------------------------------------ */
/* Audit log                                                                 */
/* ------------------------------------------------------------------------ */

function auditRow(a, withClient = true) {
  return h('tr', {},
    h('td', { class: 'nowrap', title: fmtTime(a.at) }, fmtTime(a.at)),
    h('td', {}, a.actor || '–'),
    h('td', {}, h('span', { class: 'action action-' + String(a.action || '').split('.')[0] }, a.action || '–')),
    withClient ? h('td', {}, a.client_id
      ? h('button', { type: 'button', class: 'linkish mono', onclick: () => openDevice(a.client_id) }, a.client_id)
      : '–') : null,
    h('td', { class: 'detail' }, a.detail || ''));
}

async function loadAudit() {
  const P = st.audit;
  try {
    const r = await api.get('audit', { offset: P.offset, limit: P.size });
    P.total = r.total;
    const rows = clear($('#audit-rows'));
    for (const a of r.items) rows.appendChild(auditRow(a));
    if (r.items.length === 0) rows.appendChild(h('tr', {}, h('td', { colspan: 5, class: 'muted' }, 'No audit entries.')));
    renderPager($('#audit-pager'), P, r.items.length, 'entries');
  } catch (e) {
    if (e.status !== 401) toast('Audit log: ' + explain(e), 'error');
  }
}
wirePager($('#audit-pager'), st.audit, loadAudit);
$('#audit-refresh').addEventListener('click', loadAudit);

/* ------------------------------------------------------------------------ */
/* Allowlist                                                                 */
/* ------------------------------------------------------------------------ */

async function loadAllowlist() {
  try {
    const r = await api.get('allowlist');
    const list = clear($('#allow-list'));
    for (const a of r.items) {
      list.appendChild(h('li', { class: 'chip', title: 'added ' + fmtTime(a.added_at) },
        h('span', { class: 'mono' }, a.entry),
        h('button', { type: 'button', class: 'chip-x', 'aria-label': 'Remove ' + a.entry,
          onclick: () => removeAllow(a.entry) }, '×')));
    }
    $('#allow-empty').hidden = r.items.length > 0;
  } catch (e) {
    if (e.status !== 401) toast('Allowlist: ' + explain(e), 'error');
  }
}

async function removeAllow(entry) {
  if (!(await confirmDialog('Remove "' + entry + '" from the allowlist? Devices already admitted stay admitted.', 'Remove'))) return;
  try {
    await api.del('allowlist/' + enc(entry));
    toast('Removed ' + entry, 'ok');
  } catch (e) {
    if (e.status !== 401) toast('Remove failed — ' + explain(e), 'error');
  }
  loadAllowlist();
}

$('#allow-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const input = $('#allow-entry');
  const entry = input.value.trim();
  if (!entry) return;
  try {
    await api.post('allowlist', { entry });
    input.value = '';
    toast('Added ' + entry, 'ok');
  } catch (e) {
    if (e.status !== 401) toast('Add failed — ' + explain(e), 'error');
  }
  loadAllowlist();
});

/* ------------------------------------------------------------------------ */
/* Device details                                                            */
/* ------------------------------------------------------------------------ */

let dialogOpener = null;

async function openDevice(clientId) {
  st.openDevice = clientId;
  if (!ui.deviceDialog.open) {
    dialogOpener = document.activeElement;
    $('#dev-title').textContent = clientId;
    clear(ui.devBody).appendChild(h('p', { class: 'muted' }, 'Loading…'));
    ui.deviceDialog.showModal();
  }
  await renderDevicePanel(clientId);
}

ui.deviceDialog.addEventListener('close', () => {
  st.openDevice = null;
  st.shownKey = null; // shown once: closing the panel forgets it
  if (dialogOpener && document.contains(dialogOpener)) dialogOpener.focus();
});
$('#dev-close').addEventListener('click', () => ui.deviceDialog.close());
// A click on the backdrop (outside the panel's box) closes it too.
ui.deviceDialog.addEventListener('click', (e) => {
  if (e.target !== ui.deviceDialog) return;
  const r = ui.deviceDialog.getBoundingClientRect();
  if (e.clientX < r.left || e.clientX > r.right || e.clientY < r.top || e.clientY > r.bottom) {
    ui.deviceDialog.close();
  }
});

function sameId(c) {
  return !!c.cert_id && !!c.fingerprint && c.cert_id.toLowerCase() === c.fingerprint.toLowerCase();
}

function dl(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(Boolean).flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

async function downloadPem(clientId, button) {
  button.disabled = true;
  try {
    const res = await api.raw('devices/' + enc(clientId) + '/certificate');
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: clientId + '.pem' });
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    if (e.status !== 401) toast('Certificate: ' + explain(e), 'error');
  } finally {
    button.disabled = false;
  }
}

async function renderDevicePanel(clientId) {
  let d;
  let audit = { items: [], total: 0 };
  try {
    [d, audit] = await Promise.all([
      api.get('devices/' + enc(clientId)),
      api.get('audit', { client_id: clientId, limit: 20 }).catch(() => ({ items: [], total: 0 })),
    ]);
  } catch (e) {
    if (st.openDevice !== clientId) return;
    clear(ui.devBody).appendChild(h('p', { class: 'error' },
      e.status === 404 ? 'No such device: ' + clientId : 'Could not load the device: ' + explain(e)));
    return;
  }
  if (st.openDevice !== clientId) return;
  updateDeviceRow(d);
  $('#dev-title').textContent = d.client_id;
  const c = d.certificate;
  const subs = Array.isArray(d.subscriptions) ? d.subscriptions : [];
  const can = {
    approve: d.state === 'pending',
    block: d.state !== 'blocked' && d.state !== 'revoked',
    unblock: d.state === 'blocked',
    reprovision: d.state !== 'revoked' && d.state !== 'pending',
    rotate: d.state === 'active' && !!c,
    release: !!d.bound_addr,
    decommission: d.state !== 'revoked',
  };
  const actions = h('div', { class: 'actions wrap', 'data-client-id': d.client_id },
    Object.entries(COMMANDS).filter(([k]) => can[k]).map(([k, cmd]) =>
      h('button', {
        type: 'button', 'data-action': k,
        class: 'btn ' + (k === 'approve' ? 'primary' : k === 'decommission' ? 'danger' : ''),
        onclick: (e) => runCommand(k, d.client_id, e.currentTarget),
      }, cmd.label)));

  const left = c && c.not_after ? daysLeft(c.not_after) : null;
  const body = clear(ui.devBody);
  body.appendChild(h('div', { class: 'panel-status' },
    h('span', { class: 'sub' }, 'state'), badge('state', d.state),
    h('span', { class: 'sub' }, 'session'), badge('session', d.session),
    d.queued ? h('span', { class: 'sub' }, d.queued + ' queued') : null));
  body.appendChild(actions);
  if (d.last_error) {
    body.appendChild(h('div', { class: 'last-error', role: 'note' }, h('strong', {}, 'Last error: '), d.last_error));
  }
  body.appendChild(h('div', { class: 'panel-grid' },
    h('section', {}, h('h3', {}, 'Identity'), dl([
      ['Client id', h('span', { class: 'mono' }, d.client_id)],
      ['Thing name', h('span', { class: 'mono' }, d.thing_name || '–')],
      ['First seen', fmtTime(d.first_seen)],
      ['Last seen', fmtTime(d.last_seen) + ' (' + fmtAgo(d.last_seen) + ')'],
      ['Connect attempts', fmtInt(d.attempts)],
    ])),
    h('section', {}, h('h3', {}, 'Binding'), dl([
      ['Bound to', h('span', { class: 'mono' }, d.bound_addr || 'not bound')],
      ['Current address', h('span', { class: 'mono' }, d.address || '–')],
    ])),
    h('section', {}, h('h3', {}, 'Certificate'), c ? dl([
      // local-ca uses the fingerprint as the id: shown once then.
      sameId(c) ? ['Id / fingerprint', h('span', { class: 'mono wrap-any', 'data-field': 'cert-id' }, c.cert_id)]
        : ['Id', h('span', { class: 'mono wrap-any', 'data-field': 'cert-id' }, c.cert_id || '–')],
      sameId(c) ? null : ['Fingerprint', h('span', { class: 'mono wrap-any', 'data-field': 'cert-fp' },
        c.fingerprint || '–')],
      ['Not after', h('span', { class: left !== null ? expiryClass(left) : '' },
        fmtTime(c.not_after) + (left === null ? '' : left < 0 ? ' (expired)' : ' (' + left + ' days)'))],
      ['Status', c.status || '–'],
      ['PEM', h('button', { type: 'button', class: 'btn small', onclick: (e) => downloadPem(d.client_id, e.currentTarget) },
        'Download certificate')],
    ]) : h('p', { class: 'muted' }, 'No active certificate.')),
    pskSection(d),
    outboxSection(d),
    h('section', { id: 'session-section' }, h('h3', {}, 'Session'), dl([
      ['Messages in', h('span', { 'data-field': 'msgs-in' }, fmtInt(d.msgs_in) +
        (d.rate_in ? ' · ' + fmtRate(d.rate_in) + '/s' : ''))],
      ['Messages out', h('span', { 'data-field': 'msgs-out' }, fmtInt(d.msgs_out) +
        (d.rate_out ? ' · ' + fmtRate(d.rate_out) + '/s' : ''))],
      ['Last message', h('span', { 'data-field': 'last-message', title: 'its last publish' },
        d.last_message_at ? fmtTime(d.last_message_at) + ' (' + fmtAgo(d.last_message_at) + ')' : 'none since the start')],
      ['Keep-alive', h('span', { 'data-field': 'keepalive' },
        d.keepalive_s === null || d.keepalive_s === undefined ? '–'
          : fmtDuration(d.keepalive_s) + (d.session === 'asleep' ? ' (asleep for)' : ''))],
      ['Reconnects', h('span', { 'data-field': 'reconnects', title: 'since the gateway started; waking up is not one' },
        fmtInt(d.reconnects))],
      ['Queued', fmtInt(d.queued)],
    ]))));
  body.appendChild(h('section', {}, h('h3', {}, 'Subscriptions (' + subs.length + ')'),
    subs.length
      ? h('ul', { class: 'subs' }, subs.map((s) => h('li', {}, h('span', { class: 'mono' }, s.filter), h('span', { class: 'sub' }, ' QoS ' + s.qos))))
      : h('p', { class: 'muted' }, 'None.')));
  body.appendChild(h('section', {}, h('h3', {}, 'Recent audit events' + (audit.total > audit.items.length ? ' (latest ' + audit.items.length + ' of ' + audit.total + ')' : '')),
    audit.items.length
      ? h('div', { class: 'table-wrap' }, h('table', { class: 'grid compact' },
        h('thead', {}, h('tr', {}, ['Time', 'Actor', 'Action', 'Detail'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, audit.items.map((a) => auditRow(a, false)))))
      : h('p', { class: 'muted' }, 'None.')));
}

/* ------------------------------------------------------------------------ */
/* Live events                                                               */
/* ------------------------------------------------------------------------ */

function describe(evt) {
  switch (evt.type) {
    case 'device.state': return ['state', evt.client_id, '→ ' + evt.state];
    case 'device.session': return ['session', evt.client_id, 'session ' + evt.session];
    case 'provision.step': return ['provision', evt.client_id, evt.step];
    case 'admission': return ['admission', evt.client_id, evt.result + (evt.reason ? ' — ' + evt.reason : '')];
    case 'uplink': return ['uplink', null, 'uplink ' + evt.state];
    case 'hello': return ['hello', null, 'event stream connected'];
    default: return ['other', evt.client_id || null, evt.type || 'event'];
  }
}

function addToFeed(evt) {
  if (st.feedPaused) return;
  const [kind, cid, text] = describe(evt);
  const t = evt.at ? new Date(evt.at) : new Date();
  const li = h('li', { class: 'feed-item feed-' + kind, 'data-client-id': cid || undefined },
    h('time', { datetime: t.toISOString(), title: fmtTime(t.getTime() / 1000) },
      t.toLocaleTimeString([], { hour12: false }) + ' ' + tzName(t)),
    h('span', { class: 'feed-kind' }, kind),
    cid ? h('button', { type: 'button', class: 'linkish mono', onclick: () => openDevice(cid) }, cid) : null,
    h('span', { class: 'feed-text' }, text));
  ui.feed.prepend(li);
  while (ui.feed.children.length > FEED_MAX) ui.feed.lastElementChild.remove();
  $('#feed-empty').hidden = true;
}

$('#feed-pause').addEventListener('click', (e) => {
  st.feedPaused = !st.feedPaused;
  e.currentTarget.setAttribute('aria-pressed', String(st.feedPaused));
  e.currentTarget.textContent = st.feedPaused ? 'Resume' : 'Pause';
});

function markDirty(clientId) {
  if (clientId) st.dirty.add(clientId);
}

// Several events usually arrive together (admission, state, session,
// provisioning steps for one CONNECT): they are folded into one refresh,
// 250 ms after the first of them.  This is a throttle, not a debounce, so a
// busy fleet whose events never pause still gets its refreshes; the audit
// log and the orphaned certificates, cheaper to leave stale, refresh at most
// every 5 s.
const REFRESH_DELAY_MS = 250;
const SLOW_REFRESH_MS = 5000;
let refreshTimer = null;
let refreshing = false;
let lastSlowRefresh = 0;

function refreshSoon() {
  if (refreshTimer === null) refreshTimer = setTimeout(flushRefresh, REFRESH_DELAY_MS);
}

async function flushRefresh() {
  refreshTimer = null;
  if (!st.running) return;
  if (refreshing) {
    refreshSoon(); // One at a time: go again when this one is done.
    return;
  }
  refreshing = true;
  try {
    await refreshNow();
  } finally {
    refreshing = false;
  }
}

async function refreshNow() {
  const ids = [...st.dirty];
  st.dirty.clear();
  pollStatus();
  const jobs = [loadPending()];
  const D = st.devices;
  const onPage = ids.filter((id) => D.items.some((d) => d.client_id === id));
  // A device that is not on this page may belong on it (a new one, or one
  // whose state now matches the filter); so may a filtered page lose one.
  if (onPage.length < ids.length || D.state || D.q || ids.length > 10) {
    jobs.push(loadDevices());
  } else {
    jobs.push(...onPage.map(async (id) => {
      try {
        updateDeviceRow(await api.get('devices/' + enc(id)));
      } catch (e) {
        if (e.status === 404) await loadDevices();
      }
    }));
  }
  if (st.openDevice && ids.includes(st.openDevice)) jobs.push(renderDevicePanel(st.openDevice));
  const now = Date.now();
  if (now - lastSlowRefresh >= SLOW_REFRESH_MS) {
    lastSlowRefresh = now;
    if (st.audit.offset === 0) jobs.push(loadAudit());
    jobs.push(loadOrphans());
  } else {
    // Not now, but not never: catch up once things are quiet.
    slowCatchUp();
  }
  await Promise.allSettled(jobs);
}

const slowCatchUp = debounce(() => {
  if (!st.running) return;
  lastSlowRefresh = Date.now();
  if (st.audit.offset === 0) loadAudit();
  loadOrphans();
}, SLOW_REFRESH_MS);

function handleEvent(evt) {
  if (!evt || typeof evt !== 'object') return;
  addToFeed(evt);
  if (DEVICE_EVENTS.has(evt.type) && evt.client_id) {
    // Show the new state at once; the refetch below fills in the rest.
    if (evt.type === 'device.state' || evt.type === 'device.session') {
      const field = evt.type === 'device.state' ? 'state' : 'session';
      const row = ui.deviceRows.querySelector('tr[data-client-id="' + CSS.escape(evt.client_id) + '"]');
      const cell = row && row.querySelector('[data-field="' + field + '"]');
      if (cell) clear(cell).appendChild(badge(field, evt[field]));
    }
    markDirty(evt.client_id);
    refreshSoon();
  } else if (evt.type === 'uplink') {
    $('#uplink-state').textContent = evt.state;
    $('#uplink-pill').dataset.state = evt.state;
  }
}

/* ------------------------------------------------------------------------ */
/* Relative times tick; boot                                                 */
/* ------------------------------------------------------------------------ */

setInterval(() => {
  for (const td of $$('[data-ago]')) {
    const s = Number(td.dataset.ago);
    if (s) td.textContent = fmtAgo(s);
  }
}, 10000);

async function boot() {
  if (!getToken()) {
    showLogin('');
    return;
  }
  try {
    if (await api.probe(getToken())) {
      start();
      return;
    }
    setToken('');
    showLogin('The saved token is no longer accepted. Please enter it again.');
  } catch (e) {
    // The gateway is unreachable right now: keep the token and try anyway;
    // the status poll reports the problem and recovers by itself.
    start();
  }
}

boot();
