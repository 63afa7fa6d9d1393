// Tokens per day as stacked bars, drawn by uPlot (loaded as a classic script before the modules:
// assets/vendor/uPlot.iife.min.js, ~50 KB). uPlot does not stack by itself: each series is drawn
// as the running sum of the ones below it, the tallest first, so each band shows its own part; the
// legend and tooltips show the series' own numbers.
import type UPlot from 'uplot';

const uPlot = (globalThis as unknown as { uPlot: typeof UPlot }).uPlot;

/** Eight colours that read on light and dark backgrounds (Okabe-Ito, colour-blind safe, plus two). */
const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#CC79A7', '#56B4E9', '#D55E00', '#7f7f7f', '#F0E442'];

export interface StackedSeries {
  label: string;
  values: number[];
}

function cssVar(name: string): string {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function colorOf(i: number): string {
  return PALETTE[i % PALETTE.length]!;
}

/**
 * Draws the chart into `el` (replacing what is there) and calls `onPick(dayIndex)` when a bar is
 * clicked. Returns a function that removes it.
 */
export function stackedBars(
  el: HTMLElement,
  days: string[],
  series: StackedSeries[],
  format: (n: number) => string,
  onPick: (day: number) => void,
): () => void {
  el.replaceChildren();
  const x = days.map((d) => Date.parse(`${d}T12:00:00Z`) / 1000);
  // Running sums, bottom (first series) to top.
  const sums: number[][] = [];
  let below = days.map(() => 0);
  for (const s of series) {
    below = below.map((v, i) => v + (s.values[i] ?? 0));
    sums.push(below);
  }
  const axis = cssVar('--muted') || '#666';
  const grid = cssVar('--grid') || 'rgba(127,127,127,0.2)';
  const bars = uPlot.paths.bars!({ size: [0.7, 48], align: 0 });
  // Drawn tallest (the sum of all) first, so each lower band is painted over it.
  const order = series.map((_, i) => i).reverse();
  const opts: UPlot.Options = {
    width: Math.max(280, el.clientWidth),
    height: 260,
    legend: { show: true },
    cursor: { drag: { x: false, y: false }, points: { show: false } },
    scales: {
      x: { time: true, range: (_u, min, max) => [min - 43_200, max + 43_200] },
      y: { range: (_u, _min, max) => [0, Math.max(1, max * 1.05)] },
    },
    axes: [
      {
        stroke: axis,
        grid: { show: false },
        ticks: { stroke: grid },
        // One tick per day, as many as fit (every day for a week, fewer for 90 days).
        splits: () => x.filter((_, i) => i % Math.ceil(x.length / Math.max(1, Math.floor(el.clientWidth / 56))) === 0),
        values: (_u, splits) => splits.map((s) => new Date(s * 1000).toISOString().slice(5, 10)),
      },
      { stroke: axis, grid: { stroke: grid }, ticks: { stroke: grid }, size: 64, values: (_u, splits) => splits.map(format) },
    ],
    series: [
      { label: 'day', value: (_u, v) => (v == null ? '' : new Date(v * 1000).toISOString().slice(0, 10)) },
      ...order.map((i) => ({
        label: series[i]!.label,
        fill: colorOf(i),
        stroke: colorOf(i),
        width: 0,
        paths: bars,
        points: { show: false },
        value: (_u: UPlot, _v: number | null, _s: number, idx: number | null) => (idx == null ? '' : format(series[i]!.values[idx] ?? 0)),
      })),
    ],
  };
  const data: UPlot.AlignedData = [x, ...order.map((i) => sums[i]!)];
  const plot = new uPlot(opts, data, el);
  const click = (): void => {
    const idx = plot.cursor.idx;
    if (idx !== null && idx !== undefined) onPick(idx);
  };
  plot.over.addEventListener('click', click);
  const resize = new ResizeObserver(() => plot.setSize({ width: Math.max(280, el.clientWidth), height: 260 }));
  resize.observe(el);
  return () => {
    resize.disconnect();
    plot.destroy();
  };
}
