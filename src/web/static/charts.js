// Small line charts on a canvas: a title, the latest value of each series, a y axis from zero
// to a rounded maximum, and the last `points` samples (one a second on the dashboard).

const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} options
   * @param {string} options.title
   * @param {(v: number) => string} [options.format] how values are printed
   * @param {number} [options.points=120] samples kept
   */
  constructor(canvas, { title, format = (v) => v.toLocaleString(), points = 120 }) {
    this.canvas = canvas;
    this.title = title;
    this.format = format;
    this.points = points;
    this.series = new Map(); // name -> (number|null)[]; null is a gap
  }

  /** Adds one sample per series; a series missing from `values` gets a gap. */
  push(values) {
    for (const name of Object.keys(values)) {
      if (!this.series.has(name)) this.series.set(name, new Array(this.length()).fill(null));
    }
    for (const [name, data] of this.series) {
      data.push(values[name] ?? null);
      if (data.length > this.points) data.shift();
    }
    this.draw();
  }

  length() {
    return this.series.values().next().value?.length ?? 0;
  }

  draw() {
    const ratio = window.devicePixelRatio || 1;
    const { width, height } = this.canvas.getBoundingClientRect();
    this.canvas.width = Math.round(width * ratio);
    this.canvas.height = Math.round(height * ratio);
    const g = this.canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.clearRect(0, 0, width, height);

    const pad = { left: 64, right: 12, top: 44, bottom: 12 };
    const plotW = width - pad.left - pad.right;
    const plotH = height - pad.top - pad.bottom;
    const all = [...this.series.values()].flat().filter((v) => v !== null);
    const max = niceCeiling(Math.max(0, ...all));

    // Title and the latest value of each series.
    g.fillStyle = "#111827";
    g.font = "600 13px system-ui, sans-serif";
    g.fillText(this.title, pad.left, 16);
    g.font = "12px system-ui, sans-serif";
    let x = pad.left;
    const labels = [];
    [...this.series].forEach(([name, data], i) => {
      const latest = [...data].reverse().find((v) => v !== null);
      const label = `${name}: ${latest === undefined ? "–" : this.format(latest)}`;
      labels.push(label);
      g.fillStyle = COLOURS[i % COLOURS.length];
      g.fillRect(x, 25, 10, 10);
      g.fillStyle = "#374151";
      g.fillText(label, x + 14, 34);
      x += g.measureText(label).width + 28;
    });
    // What the chart shows now, for screen readers (and tests).
    this.canvas.setAttribute("aria-label", `${this.title}. ${labels.join(", ")}`);

    // Axis: zero, half and max.
    g.strokeStyle = "#e5e7eb";
    g.fillStyle = "#6b7280";
    g.font = "11px system-ui, sans-serif";
    g.textAlign = "right";
    for (const f of [0, 0.5, 1]) {
      const y = pad.top + plotH * (1 - f);
      g.beginPath();
      g.moveTo(pad.left, y);
      g.lineTo(pad.left + plotW, y);
      g.stroke();
      g.fillText(this.format(max * f), pad.left - 6, y + 4);
    }
    g.textAlign = "left";

    // One line per series, right-aligned so the newest sample is at the right edge.
    const step = plotW / Math.max(1, this.points - 1);
    [...this.series.values()].forEach((data, i) => {
      g.strokeStyle = COLOURS[i % COLOURS.length];
      g.lineWidth = 1.75;
      g.beginPath();
      let drawing = false;
      data.forEach((v, j) => {
        if (v === null) {
          drawing = false;
          return;
        }
        const px = pad.left + plotW - (data.length - 1 - j) * step;
        const py = pad.top + plotH * (1 - (max ? v / max : 0));
        if (drawing) g.lineTo(px, py);
        else g.moveTo(px, py);
        drawing = true;
      });
      g.stroke();
    });
  }
}

/** 1, 2 or 5 times a power of ten, at least `v` (and at least 1). */
function niceCeiling(v) {
  if (v <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * power >= v) return m * power;
  return 10 * power;
}
