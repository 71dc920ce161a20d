// util.js - DOM building and formatting.  Everything that came from the
// gateway (client ids, error texts...) is set as text, never parsed as HTML.

export function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return e;
}

export function clear(e) {
  while (e.firstChild) e.removeChild(e.firstChild);
  return e;
}

export const $ = (sel, root = document) => root.querySelector(sel);
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const pad = (n) => String(n).padStart(2, '0');

// The browser's time zone at that moment, short: "CET", "UTC", "GMT+5:30".
export function tzName(d = new Date()) {
  try {
    const p = new Intl.DateTimeFormat('en-US', { timeZoneName: 'short' }).formatToParts(d);
    const z = p.find((x) => x.type === 'timeZoneName');
    if (z) return z.value;
  } catch (e) {
    // No Intl: the offset below.
  }
  const m = -d.getTimezoneOffset();
  return 'UTC' + (m < 0 ? '−' : '+') + pad(Math.floor(Math.abs(m) / 60)) + ':' + pad(Math.abs(m) % 60);
}

function localDate(d) {
  return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate());
}

// Unix seconds -> "2025-03-04 13:05:09 CET" in local time, with its zone;
// "–" for none.
export function fmtTime(sec) {
  if (!sec) return '–';
  const d = new Date(sec * 1000);
  return localDate(d) + ' ' + pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' +
    pad(d.getSeconds()) + ' ' + tzName(d);
}

export function fmtDate(sec) {
  if (!sec) return '–';
  return localDate(new Date(sec * 1000));
}

// A length of time in seconds: "12 s", "5 min", "3 h", "4 d".
export function fmtDuration(s) {
  if (s < 60) return s + ' s';
  if (s < 3600) return Math.floor(s / 60) + ' min';
  if (s < 86400) return Math.floor(s / 3600) + ' h';
  return Math.floor(s / 86400) + ' d';
}

// "12 s ago", "5 min ago", "3 h ago", "4 d ago".
export function fmtAgo(sec, nowMs = Date.now()) {
  if (!sec) return 'never';
  let s = Math.round(nowMs / 1000 - sec);
  if (s < 0) s = 0;
  if (s < 5) return 'just now';
  return fmtDuration(s) + ' ago';
}

// Days until a certificate's not-after (negative: expired).
export function daysLeft(sec, nowMs = Date.now()) {
  return Math.floor((sec * 1000 - nowMs) / 86400000);
}

export function fmtUptime(s) {
  if (s === undefined || s === null) return '–';
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  if (d) return d + ' d ' + hh + ' h';
  if (hh) return hh + ' h ' + mm + ' min';
  return mm + ' min ' + (s % 60) + ' s';
}

export function fmtBytes(n) {
  if (n === undefined || n === null || n < 0) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) {
    n /= 1024;
    i++;
  }
  return (i ? n.toFixed(1) : String(n)) + ' ' + u[i];
}

export const fmtInt = (n) => (n === undefined || n === null ? '–' : Number(n).toLocaleString('en-US'));

export function debounce(fn, ms) {
  let t = null;
  const d = (...args) => {
    clearTimeout(t);
    t = setTimeout(() => {
      t = null;
      fn(...args);
    }, ms);
  };
  d.cancel = () => clearTimeout(t);
  return d;
}

// A state or session badge.
export function badge(kind, value) {
  const v = value || 'none';
  return h('span', { class: 'badge ' + kind + '-' + v.replace(/[^a-z0-9-]/gi, '') }, v);
}

// How a device last authenticated on the LAN (null: never connected), as a
// badge; plain UDP, which proves nothing, in the warning style.
const LAN_LABELS = { plain: 'plain', 'dtls-psk': 'DTLS PSK', 'dtls-cert': 'DTLS cert' };
const LAN_TITLES = {
  plain: 'plain MQTT-SN over UDP: anyone on the LAN can claim this ClientId',
  'dtls-psk': 'DTLS with its pre-shared key',
  'dtls-cert': 'DTLS with a client certificate',
};

export function lanBadge(security) {
  if (!security) return h('span', { class: 'badge lan-none', title: 'never connected' }, '–');
  return h('span', { class: 'badge lan-' + security.replace(/[^a-z0-9-]/gi, ''), title: LAN_TITLES[security] || '' },
    LAN_LABELS[security] || security);
}
