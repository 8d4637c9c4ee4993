// A small time-series line chart on <canvas>: a window ending now (the data's span, 30 s to 5
// minutes), y from 0 to a round maximum, one line per series, gaps where a value is null.

const MIN_WINDOW_S = 30;
const MAX_WINDOW_S = 300;

function css(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// 1, 2, 4, 6, 8 × 10^n at or above v (halves that read well too).
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v * (1 - 1e-9)) return m * p;
  return 10 * p;
}

function span(seconds) {
  return seconds < 120 ? `−${Math.round(seconds)} s` : `−${+(seconds / 60).toFixed(1)} min`;
}

export class Chart {
  // series: [{label, color: css variable name}], format: value → text for the axis and label.
  constructor(canvas, { title, series, format, minMax = 1 }) {
    this.canvas = canvas;
    this.title = title;
    this.series = series;
    this.format = format;
    this.minMax = minMax;
    this.points = []; // {t, v: [..]}
    if (window.ResizeObserver) new ResizeObserver(() => this.draw()).observe(canvas);
  }

  setPoints(points) {
    this.points = points;
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    const dpr = window.devicePixelRatio || 1;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);

    const now = this.points.length ? this.points[this.points.length - 1].t : 0;
    const first = this.points.length ? this.points[0].t : now;
    const windowS = Math.min(MAX_WINDOW_S, Math.max(MIN_WINDOW_S, now - first));
    const shown = this.points.filter((p) => p.t >= now - windowS);
    let max = 0;
    for (const p of shown) for (const v of p.v) if (v != null && v > max) max = v;
    const top = niceCeil(Math.max(max, this.minMax));

    const font = '11px system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif';
    g.font = font;
    const ticks = [0, 0.5, 1].map((f) => [top * f, this.format(top * f)]);
    const left = Math.max(...ticks.map(([, label]) => g.measureText(label).width)) + 8;
    const right = 6, topPad = 6, bottom = 16;
    const pw = Math.max(10, w - left - right);
    const ph = Math.max(10, h - topPad - bottom);
    const x = (t) => left + pw * (1 - (now - t) / windowS);
    const y = (v) => topPad + ph * (1 - v / top);

    // grid and labels
    const muted = css('--muted', '#5a6678');
    const line = css('--line', '#d9dee7');
    g.strokeStyle = line;
    g.lineWidth = 1;
    g.fillStyle = muted;
    g.textBaseline = 'middle';
    g.textAlign = 'right';
    for (const [v, label] of ticks) {
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath();
      g.moveTo(left, yy);
      g.lineTo(left + pw, yy);
      g.stroke();
      g.fillText(label, left - 4, yy);
    }
    g.textBaseline = 'alphabetic';
    g.textAlign = 'left';
    g.fillText(span(windowS), left, h - 3);
    g.textAlign = 'right';
    g.fillText('now', left + pw, h - 3);

    // lines
    this.series.forEach((s, i) => {
      const color = css(s.color, '#1f5fbf');
      g.strokeStyle = color;
      g.fillStyle = color;
      g.lineWidth = 1.75;
      g.lineJoin = 'round';
      let open = false;
      let last = null;
      g.beginPath();
      for (const p of shown) {
        const v = p.v[i];
        if (v == null) {
          open = false;
          continue;
        }
        const px = x(p.t);
        const py = y(Math.min(v, top));
        if (open) g.lineTo(px, py);
        else g.moveTo(px, py);
        open = true;
        last = [px, py];
      }
      g.stroke();
      if (last) {
        g.beginPath();
        g.arc(last[0], last[1], 2.5, 0, 2 * Math.PI);
        g.fill();
      }
    });

    // what a screen reader (and a test) reads
    const latest = this.points.length ? this.points[this.points.length - 1].v : [];
    const said = this.series
      .map((s, i) => `${s.label} ${latest[i] == null ? 'none' : this.format(latest[i])}`)
      .join(', ');
    c.setAttribute('aria-label', `${this.title}, last ${span(windowS).slice(1)}; latest: ${said || 'no data yet'}`);
    c.dataset.points = String(this.points.length);
    c.dataset.latest = latest.length && latest[0] != null ? String(latest[0]) : '';
  }
}
