// chart.js - a small hand-drawn SVG line chart of messages per second.
// Rates come from the deltas of the status counters msgs_in / msgs_out
// between two polls, divided by the time between them.

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
  constructor(svg, { points = 60, intervalS = 2 } = {}) {
    this.svg = svg;
    this.points = points;
    this.intervalS = intervalS;
    this.samples = []; // {in, out}
    this.last = null;  // {t, in, out}
    this.draw();
  }

  // Feeds one status sample; returns the current rates or null for the first.
  push(msgsIn, msgsOut, tMs = performance.now()) {
    const prev = this.last;
    // Extra status fetches (after events) come between the regular polls:
    // keep one sample per interval so the x axis stays true.
    if (prev && tMs - prev.t < this.intervalS * 750) return null;
    this.last = { t: tMs, in: msgsIn, out: msgsOut };
    if (!prev) return null;
    const dt = (tMs - prev.t) / 1000;
    // A counter that went down means the gateway restarted: skip one sample
    // rather than draw a negative rate.
    if (dt <= 0 || msgsIn < prev.in || msgsOut < prev.out) return null;
    const s = { in: (msgsIn - prev.in) / dt, out: (msgsOut - prev.out) / dt };
    this.samples.push(s);
    if (this.samples.length > this.points) this.samples.shift();
    this.draw();
    return s;
  }

  draw() {
    const svg = this.svg;
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const max = niceMax(Math.max(0, ...this.samples.map((s) => Math.max(s.in, s.out))));
    const x0 = PAD_L;
    const x1 = W - PAD_R;
    const y0 = H - PAD_B;
    const y1 = PAD_T;
    const ys = (v) => y0 - (v / max) * (y0 - y1);
    const xs = (i) => x1 - (this.points - 1 - i) * ((x1 - x0) / (this.points - 1));

    // Grid and y labels: 0, half, max.
    for (const f of [0, 0.5, 1]) {
      const y = ys(max * f);
      svg.appendChild(el('line', { x1: x0, x2: x1, y1: y, y2: y, class: f === 0 ? 'axis' : 'grid' }));
      const t = el('text', { x: x0 - 4, y: y + 3.5, class: 'tick', 'text-anchor': 'end' });
      t.textContent = fmtRate(max * f).replace(/\.0+$/, '');
      svg.appendChild(t);
    }
    const span = this.points * this.intervalS;
    const lbl = el('text', { x: x0, y: H - 4, class: 'tick' });
    lbl.textContent = '−' + (span >= 60 ? span / 60 + ' min' : span + ' s');
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
    // Samples are right-aligned: the newest sits at "now".
    const off = this.points - this.samples.length;
    for (const key of ['in', 'out']) {
      const pts = this.samples.map((s, i) => xs(off + i).toFixed(1) + ',' + ys(s[key]).toFixed(1));
      if (key === 'in' && pts.length > 1) {
        const area = 'M' + xs(off).toFixed(1) + ',' + y0 + ' L' + pts.join(' L') +
          ' L' + xs(off + this.samples.length - 1).toFixed(1) + ',' + y0 + ' Z';
        svg.appendChild(el('path', { d: area, class: 'area-in' }));
      }
      svg.appendChild(el('polyline', { points: pts.join(' '), class: 'line-' + key }));
    }
  }
}

export { fmtRate };
