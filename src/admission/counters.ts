// The counting store behind per-key limits: fixed windows (a minute aligned to the clock, a UTC
// day, …) and gauges. A small interface, so a store shared by several gateway processes (Redis) can
// replace the in-memory one without touching the plugins. (The failed-auth brake keeps its own,
// bounded memory: auth-brake.ts.)

export interface WindowCount {
  /** the count in the current window */
  readonly count: number;
  /** ms since epoch when the current window ends */
  readonly resetAt: number;
}

export interface CounterStore {
  /** Adds `amount` to counter `name` in the window of length `windowMs` that holds `now`. */
  add(name: string, windowMs: number, amount: number, now: number): WindowCount;
  /** The counter's value in the window that holds `now` (0 if none). */
  get(name: string, windowMs: number, now: number): WindowCount;
  /** Adds `delta` to gauge `name` (concurrent requests) and returns the new value. */
  adjust(name: string, delta: number): number;
  gauge(name: string): number;
}

interface Window {
  start: number;
  count: number;
}

export class MemoryCounters implements CounterStore {
  readonly #windows = new Map<string, Window>();
  readonly #gauges = new Map<string, number>();

  add(name: string, windowMs: number, amount: number, now: number): WindowCount {
    const start = Math.floor(now / windowMs) * windowMs;
    let w = this.#windows.get(name);
    if (w === undefined || w.start !== start) {
      w = { start, count: 0 };
      this.#windows.set(name, w);
    }
    w.count += amount;
    return { count: w.count, resetAt: start + windowMs };
  }

  get(name: string, windowMs: number, now: number): WindowCount {
    const start = Math.floor(now / windowMs) * windowMs;
    const w = this.#windows.get(name);
    return { count: w !== undefined && w.start === start ? w.count : 0, resetAt: start + windowMs };
  }

  adjust(name: string, delta: number): number {
    const value = (this.#gauges.get(name) ?? 0) + delta;
    if (value <= 0) this.#gauges.delete(name);
    else this.#gauges.set(name, value);
    return Math.max(0, value);
  }

  gauge(name: string): number {
    return this.#gauges.get(name) ?? 0;
  }

  /** Forgets windows that started before `now - keepMs` (call from a timer). */
  sweep(now: number, keepMs: number): void {
    for (const [name, w] of this.#windows) if (w.start + keepMs < now) this.#windows.delete(name);
  }
}
