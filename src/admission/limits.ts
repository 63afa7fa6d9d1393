// Per-key limits: requests per minute, tokens per minute, tokens per day, concurrent requests.
// A key's own limits (key database) win; unset ones fall back to the GATEWAY_DEFAULT_* settings.
// Tokens are held before a request runs and settled after, the way a card payment is: admission
// reserves what the request may cost (token-estimate.ts), the usage record replaces the hold with
// llama-server's real numbers. A request is refused while the key's used + held tokens are at its
// budget for the window, so concurrent requests overshoot a limit by at most one request's hold.
// All counts live in a CounterStore.
import type { CounterStore, WindowCount } from './counters.js';

/** A key's limits (null: none of its own); a stored key holds them, admission applies them. */
export interface KeyLimits {
  readonly rpm: number | null;
  readonly tpm: number | null;
  readonly tpd: number | null;
  readonly concurrency: number | null;
}

/** A completion hold until llama-server's /props says its context per slot (its default -c 4096 per slot). */
const DEFAULT_COMPLETION_HOLD = 4096;
export const MINUTE_MS = 60_000;
const DAY_MS = 86_400_000;

type LimitName = 'requests per minute' | 'tokens per minute' | 'tokens per day' | 'concurrent requests';

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

interface Hold {
  readonly keyId: string;
  readonly tokens: number;
  readonly at: number;
}

export class Limits {
  readonly #counters: CounterStore;
  readonly #defaults: KeyLimits;
  /**
   * Tokens held for the answer of a request that names no bound (no max_tokens, or llama-server's
   * n_predict -1): GATEWAY_RESERVE_TOKENS, or with `auto` llama-server's context per slot, the
   * most one generation can reach (read from /props; this until it is known).
   */
  completionHold = DEFAULT_COMPLETION_HOLD;
  /** the tokens each running request holds, by request id (only requests of keys with a token limit) */
  readonly #holds = new Map<string, Hold>();

  constructor(counters: CounterStore, defaults: KeyLimits = NONE) {
    this.#counters = counters;
    this.#defaults = defaults;
  }

  /** The limits that apply to a key (its identity: keys/key-index.ts). */
  of(key: { readonly limits: KeyLimits | null }): KeyLimits {
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
      over('tokens per minute', l.tpm, () => this.#withHeld(keyId, this.#counters.get(`tpm:${keyId}`, MINUTE_MS, now))) ??
      over('tokens per day', l.tpd, () => this.#withHeld(keyId, this.#counters.get(`tpd:${keyId}`, DAY_MS, now))) ??
      (l.concurrency !== null && this.#counters.gauge(`active:${keyId}`) >= l.concurrency
        ? { limit: 'concurrent requests', max: l.concurrency, retryAfter: 1 }
        : undefined)
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

  /** True when the key has a token limit, so its requests hold tokens while they run. */
  static holdsTokens(l: KeyLimits): boolean {
    return l.tpm !== null || l.tpd !== null;
  }

  /** Holds `tokens` for request `requestId` of key `keyId` until settle() (or release()). */
  reserve(keyId: string, requestId: string, tokens: number, now: number): void {
    if (tokens <= 0 || this.#holds.has(requestId)) return;
    this.#holds.set(requestId, { keyId, tokens, at: now });
    this.#counters.adjust(`held:${keyId}`, tokens);
  }

  /** The request ended: its hold is replaced by what it really used (tokens as llama-server counted). */
  settle(keyId: string, requestId: string, used: number, now: number): void {
    this.release(requestId);
    this.addTokens(keyId, used, now);
  }

  /** Gives a request's hold back without counting anything (no usage to settle with). */
  release(requestId: string): void {
    const hold = this.#holds.get(requestId);
    if (hold === undefined) return;
    this.#holds.delete(requestId);
    this.#counters.adjust(`held:${hold.keyId}`, -hold.tokens);
  }

  /** Tokens held now by a key's running requests. */
  held(keyId: string): number {
    return this.#counters.gauge(`held:${keyId}`);
  }

  /**
   * Forgets holds older than `maxAgeMs` (a request whose record never came: a safety net, not the
   * way holds end).
   */
  sweep(now: number, maxAgeMs: number): void {
    for (const [requestId, hold] of this.#holds) if (hold.at + maxAgeMs < now) this.release(requestId);
  }

  #withHeld(keyId: string, c: WindowCount): WindowCount {
    const held = this.#counters.gauge(`held:${keyId}`);
    return held === 0 ? c : { count: c.count + held, resetAt: c.resetAt };
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
      const c = this.#withHeld(
        keyId,
        l.tpm !== null ? this.#counters.get(`tpm:${keyId}`, MINUTE_MS, now) : this.#counters.get(`tpd:${keyId}`, DAY_MS, now),
      );
      out['x-ratelimit-limit-tokens'] = String(tokenLimit);
      out['x-ratelimit-remaining-tokens'] = String(Math.max(0, tokenLimit - c.count));
      out['x-ratelimit-reset-tokens'] = resetText(c.resetAt - now);
    }
    return out;
  }
}
