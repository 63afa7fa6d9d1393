// The counting store behind per-key limits: fixed windows (a minute aligned to the clock, a UTC
// day, …), gauges, and named counters that live until a given time (a budget's calendar period,
// admission/budgets.ts: its name carries the period's start, its expiry is the period's end). A
// small interface, so a store shared by several gateway processes (Redis) can replace the
// in-memory one without touching the plugins. (The failed-auth brake keeps its own, bounded
// memory: auth-brake.ts.)

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
  /** Adds `amount` to counter `name`, which lives until `expiresAt`; returns the new value. */
  addUntil(name: string, amount: number, expiresAt: number): number;
  /**
   * Sets counter `name` to `value` until `expiresAt` unless it exists (Redis: SET NX PX); returns
   * its value either way. How a budget's count starts from the usage table.
   */
  init(name: string, value: number, expiresAt: number): number;
  /** Counter `name`'s value; undefined when it was never set or expired before `now`. */
  value(name: string, now: number): number | undefined;
}

interface Named {
  value: number;
  expiresAt: number;
}

interface Window {
  start: number;
  count: number;
}

export class MemoryCounters implements CounterStore {
  readonly #windows = new Map<string, Window>();
  readonly #gauges = new Map<string, number>();
  readonly #named = new Map<string, Named>();

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

  addUntil(name: string, amount: number, expiresAt: number): number {
    const c = this.#named.get(name);
    if (c === undefined) {
      this.#named.set(name, { value: amount, expiresAt });
      return amount;
    }
    c.value += amount;
    return c.value;
  }

  init(name: string, value: number, expiresAt: number): number {
    const c = this.#named.get(name);
    if (c !== undefined) return c.value;
    this.#named.set(name, { value, expiresAt });
    return value;
  }

  value(name: string, now: number): number | undefined {
    const c = this.#named.get(name);
    return c === undefined || c.expiresAt <= now ? undefined : c.value;
  }

  /** Forgets windows that started before `now - keepMs`, and named counters past their expiry (call from a timer). */
  sweep(now: number, keepMs: number): void {
    for (const [name, w] of this.#windows) if (w.start + keepMs < now) this.#windows.delete(name);
    for (const [name, c] of this.#named) if (c.expiresAt + keepMs < now) this.#named.delete(name);
  }
}
