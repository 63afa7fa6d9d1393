// The request path's counters and histograms, kept as plain numbers and written in Prometheus' text
// format only when scraped. prom-client hashes the label object on every inc()/observe() — also
// through a labels() child — which measured ~5% of the gateway's CPU per request; here a record
// costs one Map lookup and an addition. Process metrics and gauges stay with prom-client.

/** A label value as Prometheus' text format wants it (backslash, double quote and newline escaped). */
export function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === '\\' ? '\\\\' : c === '"' ? '\\"' : '\\n'));
}

function renderLabels(names: readonly string[], values: readonly string[]): string {
  return names.map((name, i) => `${name}="${escapeLabelValue(values[i] ?? '')}"`).join(',');
}

interface CounterSeries {
  readonly labels: string;
  value: number;
}

export class CounterFamily {
  /** series by first, second and third label value (nested maps: no key string built per call) */
  readonly #series = new Map<string, Map<string, Map<string, CounterSeries>>>();
  readonly #all: CounterSeries[] = [];

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly [string] | readonly [string, string] | readonly [string, string, string],
  ) {}

  /** Adds `by` to the series with these label values (in labelNames' order). */
  inc(by: number, a: string, b = '', c = ''): void {
    let byA = this.#series.get(a);
    if (byA === undefined) this.#series.set(a, (byA = new Map<string, Map<string, CounterSeries>>()));
    let byB = byA.get(b);
    if (byB === undefined) byA.set(b, (byB = new Map<string, CounterSeries>()));
    let s = byB.get(c);
    if (s === undefined) {
      s = { labels: renderLabels(this.labelNames, [a, b, c]), value: 0 };
      byB.set(c, s);
      this.#all.push(s);
    }
    s.value += by;
  }

  render(): string {
    let text = `# HELP ${this.name} ${this.help}\n# TYPE ${this.name} counter\n`;
    for (const s of this.#all) text += `${this.name}{${s.labels}} ${s.value}\n`;
    return text;
  }
}

interface HistogramSeries {
  readonly labels: string;
  /** observations per bucket (not cumulative); the last one is above every bound */
  readonly counts: Float64Array;
  sum: number;
  count: number;
}

export class HistogramFamily {
  readonly #series = new Map<string, HistogramSeries>();
  readonly #bounds: readonly number[];

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly [string],
    bounds: readonly number[],
  ) {
    this.#bounds = [...bounds].sort((x, y) => x - y);
  }

  observe(value: number, a: string): void {
    let s = this.#series.get(a);
    if (s === undefined) {
      s = { labels: renderLabels(this.labelNames, [a]), counts: new Float64Array(this.#bounds.length + 1), sum: 0, count: 0 };
      this.#series.set(a, s);
    }
    const bounds = this.#bounds;
    let i = 0;
    while (i < bounds.length && value > bounds[i]!) i++;
    s.counts[i]!++;
    s.sum += value;
    s.count++;
  }

  render(): string {
    const n = this.name;
    let text = `# HELP ${n} ${this.help}\n# TYPE ${n} histogram\n`;
    for (const s of this.#series.values()) {
      let cumulative = 0;
      for (let i = 0; i < this.#bounds.length; i++) {
        cumulative += s.counts[i]!;
        text += `${n}_bucket{${s.labels},le="${this.#bounds[i]}"} ${cumulative}\n`;
      }
      text += `${n}_bucket{${s.labels},le="+Inf"} ${s.count}\n${n}_sum{${s.labels}} ${s.sum}\n${n}_count{${s.labels}} ${s.count}\n`;
    }
    return text;
  }
}
