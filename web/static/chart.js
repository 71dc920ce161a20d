// chart.js - a small hand-drawn SVG line chart of messages per second over
// the last hour.  It starts from the gateway's history (GET status/history,
// one count per 10 s) and goes on with the deltas of the status counters
// msgs_in / msgs_out, one sample per 10 s.

const SVG_NS = 'http://www.w3.org/2000/svg';
const W = 480;
const H = 160;
const PAD_L = 34;
const PAD_R = 6;
const PAD_T = 8;
const PAD_B = 18;

function el(name, attrs) {
  const e = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

// A "nice" upper bound for the y axis: 1, 2, 5 times a power of ten.
function niceMax(v) {
  if (v <= 1) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) {
    if (v <= m * p) return m * p;
  }
  return 10 * p;
}

function fmtRate(v) {
  if (v >= 100) return v.toFixed(0);
  if (v >= 10) return v.toFixed(1);
  return v.toFixed(2);
}

export class RateChart {
  // spanS: the width of the chart in seconds; intervalS: one sample per
  // interval (the gateway's history has one every 10 s).
  constructor(svg, { spanS = 3600, intervalS = 10 } = {}) {
    this.svg = svg;
    this.spanS = spanS;
    this.intervalS = intervalS;
    this.samples = []; // {t: wall ms, in, out}, oldest first
    this.last = null;  // {t, in, out}: the counters at the last push
    this.lastDrawn = null; // the counters the newest sample was measured from
    this.draw();
  }

  // The gateway's history (GET status/history): counts per stepS seconds,
  // oldest first.  Replaces what the chart holds; the live pushes go on
  // from there.
  load(items, stepS, nowMs = Date.now()) {
    const step = stepS || this.intervalS;
    this.samples = (items || []).map((x) => ({ t: x.at * 1000, in: x.in / step, out: x.out / step }));
    this.trim(nowMs);
    this.draw(nowMs);
  }

  trim(nowMs) {
    while (this.samples.length && this.samples[0].t < nowMs - this.spanS * 1000) this.samples.shift();
  }

  // Feeds the status counters; returns the rates since the previous push
  // (null for the first).  A sample joins the chart once per interval.
  push(msgsIn, msgsOut, tMs = Date.now()) {
    const prev = this.last;
    if (prev && tMs - prev.t < 1000) return null;
    if (!prev || !this.lastDrawn) this.lastDrawn = { t: tMs, in: msgsIn, out: msgsOut };
    this.last = { t: tMs, in: msgsIn, out: msgsOut };
    if (!prev) return null;
    const dt = (tMs - prev.t) / 1000;
    // A counter that went down means the gateway restarted: skip one sample
    // rather than draw a negative rate.
    if (dt <= 0 || msgsIn < prev.in || msgsOut < prev.out) {
      this.lastDrawn = this.last;
      return null;
    }
    const s = { in: (msgsIn - prev.in) / dt, out: (msgsOut - prev.out) / dt };
    const base = this.lastDrawn;
    const since = (tMs - base.t) / 1000;
    const newest = this.samples.length ? this.samples[this.samples.length - 1].t : 0;
    if (since >= this.intervalS && tMs - newest >= this.intervalS * 750) {
      this.samples.push({ t: tMs, in: (msgsIn - base.in) / since, out: (msgsOut - base.out) / since });
      this.lastDrawn = this.last;
      this.trim(tMs);
      this.draw(tMs);
    }
    return s;
  }

  draw(nowMs = Date.now()) {
    const svg = this.svg;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const max = niceMax(Math.max(0, ...this.samples.map((s) => Math.max(s.in, s.out))));
    const x0 = PAD_L;
    const x1 = W - PAD_R;
    const y0 = H - PAD_B;
    const y1 = PAD_T;
    const ys = (v) => y0 - (v / max) * (y0 - y1);
    // Time runs left to right; "now" is the right edge.
    const xs = (t) => Math.max(x0, x1 - ((nowMs - t) / (this.spanS * 1000)) * (x1 - x0));

    // Grid and y labels: 0, half, max.
    for (const f of [0, 0.5, 1]) {
      const y = ys(max * f);
      svg.appendChild(el('line', { x1: x0, x2: x1, y1: y, y2: y, class: f === 0 ? 'axis' : 'grid' }));
      const t = el('text', { x: x0 - 4, y: y + 3.5, class: 'tick', 'text-anchor': 'end' });
      t.textContent = fmtRate(max * f).replace(/\.0+$/, '');
      svg.appendChild(t);
    }
    const span = this.spanS;
    const lbl = el('text', { x: x0, y: H - 4, class: 'tick' });
    lbl.textContent = '−' + (span >= 3600 ? span / 3600 + ' h' : span >= 60 ? span / 60 + ' min' : span + ' s');
    svg.appendChild(lbl);
    const now = el('text', { x: x1, y: H - 4, class: 'tick', 'text-anchor': 'end' });
    now.textContent = 'now';
    svg.appendChild(now);

    if (this.samples.length === 0) {
      const t = el('text', { x: (x0 + x1) / 2, y: (y0 + y1) / 2, class: 'tick', 'text-anchor': 'middle' });
      t.textContent = 'collecting…';
      svg.appendChild(t);
      return;
    }
    const first = this.samples[0];
    const lastS = this.samples[this.samples.length - 1];
    for (const key of ['in', 'out']) {
      const pts = this.samples.map((s) => xs(s.t).toFixed(1) + ',' + ys(s[key]).toFixed(1));
      if (key === 'in' && pts.length > 1) {
        const area = 'M' + xs(first.t).toFixed(1) + ',' + y0 + ' L' + pts.join(' L') +
          ' L' + xs(lastS.t).toFixed(1) + ',' + y0 + ' Z';
        svg.appendChild(el('path', { d: area, class: 'area-in' }));
      }
      svg.appendChild(el('polyline', { points: pts.join(' '), class: 'line-' + key,
        'data-points': this.samples.length }));
    }
  }
}

export { fmtRate };
