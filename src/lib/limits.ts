// Per-key limits: requests per minute, tokens per minute, tokens per day, concurrent requests.
// A key's own limits (key database) win; unset ones fall back to the GATEWAY_DEFAULT_* settings.
// Tokens are llama-server's numbers, added when a request finishes; a request is refused when the
// key is already at its budget for the window. All counts live in a CounterStore.
import type { CounterStore, WindowCount } from './counters.js';
import type { KeyIdentity, KeyLimits } from './key-index.js';

export const MINUTE_MS = 60_000;
export const DAY_MS = 86_400_000;

export type LimitName = 'requests per minute' | 'tokens per minute' | 'tokens per day' | 'concurrent requests';

export interface Refusal {
  readonly limit: LimitName;
  readonly max: number;
  /** seconds until the window resets (Retry-After) */
  readonly retryAfter: number;
}

const NONE: KeyLimits = { rpm: null, tpm: null, tpd: null, concurrency: null };

/** "1s", "45s", "6m0s", "2h3m4s": OpenAI's x-ratelimit-reset-* format. */
export function resetText(ms: number): string {
  const total = Math.max(1, Math.ceil(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  if (h > 0) return `${h}h${m}m${s}s`;
  if (m > 0) return `${m}m${s}s`;
  return `${s}s`;
}

export class Limits {
  readonly #counters: CounterStore;
  readonly #defaults: KeyLimits;

  constructor(counters: CounterStore, defaults: KeyLimits = NONE) {
    this.#counters = counters;
    this.#defaults = defaults;
  }

  /** The limits that apply to a key. */
  of(key: KeyIdentity): KeyLimits {
    const own = key.limits ?? NONE;
    const d = this.#defaults;
    return { rpm: own.rpm ?? d.rpm, tpm: own.tpm ?? d.tpm, tpd: own.tpd ?? d.tpd, concurrency: own.concurrency ?? d.concurrency };
  }

  static any(l: KeyLimits): boolean {
    return l.rpm !== null || l.tpm !== null || l.tpd !== null || l.concurrency !== null;
  }

  /** The first limit the key is already at, or undefined. Counts nothing. */
  check(keyId: string, l: KeyLimits, now: number): Refusal | undefined {
    const over = (name: LimitName, max: number | null, w: () => WindowCount): Refusal | undefined => {
      if (max === null) return undefined;
      const c = w();
      return c.count >= max ? { limit: name, max, retryAfter: Math.max(1, Math.ceil((c.resetAt - now) / 1000)) } : undefined;
    };
    return (
      over('requests per minute', l.rpm, () => this.#counters.get(`rpm:${keyId}`, MINUTE_MS, now)) ??
      over('tokens per minute', l.tpm, () => this.#counters.get(`tpm:${keyId}`, MINUTE_MS, now)) ??
      over('tokens per day', l.tpd, () => this.#counters.get(`tpd:${keyId}`, DAY_MS, now)) ??
      (l.concurrency !== null && this.#counters.gauge(`active:${keyId}`) >= l.concurrency ? { limit: 'concurrent requests', max: l.concurrency, retryAfter: 1 } : undefined)
    );
  }

  /** Counts an admitted request; returns the function that ends it (concurrency). */
  admit(keyId: string, now: number): () => void {
    this.#counters.add(`rpm:${keyId}`, MINUTE_MS, 1, now);
    this.#counters.adjust(`active:${keyId}`, 1);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#counters.adjust(`active:${keyId}`, -1);
    };
  }

  /** Adds a finished request's tokens (prompt + completion, as llama-server reported them). */
  addTokens(keyId: string, tokens: number, now: number): void {
    if (tokens <= 0) return;
    this.#counters.add(`tpm:${keyId}`, MINUTE_MS, tokens, now);
    this.#counters.add(`tpd:${keyId}`, DAY_MS, tokens, now);
  }

  /** OpenAI's x-ratelimit-* headers for a key with limits (tokens: per minute, else per day). */
  headers(keyId: string, l: KeyLimits, now: number): Record<string, string> {
    const out: Record<string, string> = {};
    if (l.rpm !== null) {
      const c = this.#counters.get(`rpm:${keyId}`, MINUTE_MS, now);
      out['x-ratelimit-limit-requests'] = String(l.rpm);
      out['x-ratelimit-remaining-requests'] = String(Math.max(0, l.rpm - c.count));
      out['x-ratelimit-reset-requests'] = resetText(c.resetAt - now);
    }
    const tokenLimit = l.tpm ?? l.tpd;
    if (tokenLimit !== null) {
      const c = l.tpm !== null ? this.#counters.get(`tpm:${keyId}`, MINUTE_MS, now) : this.#counters.get(`tpd:${keyId}`, DAY_MS, now);
      out['x-ratelimit-limit-tokens'] = String(tokenLimit);
      out['x-ratelimit-remaining-tokens'] = String(Math.max(0, tokenLimit - c.count));
      out['x-ratelimit-reset-tokens'] = resetText(c.resetAt - now);
    }
    return out;
  }
}

/** Failed-auth brake: too many failures from one address in a minute blocks it for a while. */
export class AuthBrake {
  readonly #counters: CounterStore;
  readonly #max: number;
  readonly #blockMs: number;

  constructor(counters: CounterStore, maxPerMinute: number, blockMs: number) {
    this.#counters = counters;
    this.#max = maxPerMinute;
    this.#blockMs = blockMs;
  }

  /** ms until the address may try again, or 0. */
  blockedFor(ip: string, now: number): number {
    const until = this.#counters.markedUntil(`authblock:${ip}`, now);
    return until === 0 ? 0 : until - now;
  }

  /** Counts a failure; true when this one started a block. */
  fail(ip: string, now: number): boolean {
    const c = this.#counters.add(`authfail:${ip}`, MINUTE_MS, 1, now);
    if (c.count >= this.#max && this.#counters.markedUntil(`authblock:${ip}`, now) === 0) {
      this.#counters.mark(`authblock:${ip}`, now + this.#blockMs);
      return true;
    }
    return false;
  }
}
