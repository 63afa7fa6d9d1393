// Per-key limits counted in Redis (GATEWAY_REDIS_URL), so N gateways enforce each key's requests
// per minute, tokens per minute/day and concurrent requests exactly as one would (issue 17). The
// same rules as admission/limits.ts (the process-local ones, still used without Redis and while it
// is down), in Lua scripts (limits-scripts.ts): one round trip admits (every limit checked; the
// request counted, its concurrency entry and its token hold added), one settles a hold with the
// real tokens, one ends a request's concurrency entry.
//
// Concurrency entries and holds are leases: members gatewayId|requestId of a sorted set scored by
// their expiry (Redis time). This process renews its live ones every lease/3 in one call; a
// gateway that dies stops renewing, and its entries are dropped by the next script that looks at
// them once GATEWAY_SLOT_LEASE_MS has passed; a live one's entries dropped while it could not renew
// (a stall, Redis restarted empty) are added again at its next renewal.
import type { Redis, Result } from 'ioredis';
import { Limits, resetText, type KeyLimits, type Refusal } from '../admission/limits.js';
import { ADMIT, RENEW, SETTLE } from './limits-scripts.js';

declare module 'ioredis' {
  interface RedisCommander<Context> {
    gatewayLimitsAdmit(...args: (string | number)[]): Result<number[], Context>;
    gatewayLimitsSettle(...args: (string | number)[]): Result<number, Context>;
    gatewayLimitsRenew(numKeys: number, ...args: (string | number)[]): Result<number, Context>;
  }
}

const LIMIT_NAMES = [undefined, 'requests per minute', 'tokens per minute', 'tokens per day', 'concurrent requests'] as const;

/** What Redis decided for one request: a refusal, or admitted; the x-ratelimit-* headers either way. */
export interface SharedAdmission {
  readonly refusal: Refusal | undefined;
  readonly headers: Record<string, string>;
  /** ends the request's concurrency entry (a no-op when the key has no concurrency limit) */
  readonly end: () => void;
}

interface Hold {
  readonly keyId: string;
  readonly member: string;
  readonly at: number;
  /** the tokens held (renew() adds the hold back with them if Redis lost it) */
  readonly tokens: number;
}

export interface SharedLimitsOptions {
  readonly client: Redis;
  /** GATEWAY_REDIS_PREFIX */
  readonly prefix: string;
  /** app.gatewayId: names this process's entries */
  readonly gatewayId: string;
  /** GATEWAY_SLOT_LEASE_MS: a dead gateway's entries are dropped after this */
  readonly leaseMs: number;
  /** a command that failed outside admission (end, settle, renew): logged, never thrown */
  readonly onError?: (err: Error, what: string) => void;
}

export class SharedLimits {
  readonly #client: Redis;
  readonly #prefix: string;
  readonly #gatewayId: string;
  readonly leaseMs: number;
  readonly #onError: (err: Error, what: string) => void;
  /** this process's live concurrency entries: member → the key's sorted set */
  readonly #active = new Map<string, string>();
  /** this process's live token holds, by request id */
  readonly #holds = new Map<string, Hold>();
  /** keys with a token limit seen here: a record without a hold (a light call) still counts */
  readonly #tokenKeys = new Set<string>();
  #renewal: NodeJS.Timeout | undefined;

  constructor(opts: SharedLimitsOptions) {
    this.#client = opts.client;
    this.#prefix = opts.prefix;
    this.#gatewayId = opts.gatewayId;
    this.leaseMs = opts.leaseMs;
    this.#onError = opts.onError ?? (() => {});
    // defineCommand is idempotent per name on a client (the later definition wins).
    this.#client.defineCommand('gatewayLimitsAdmit', { numberOfKeys: 6, lua: ADMIT });
    this.#client.defineCommand('gatewayLimitsSettle', { numberOfKeys: 4, lua: SETTLE });
    this.#client.defineCommand('gatewayLimitsRenew', { lua: RENEW });
  }

  /** Renews this process's live entries every lease/3 until close(). */
  start(): void {
    if (this.#renewal !== undefined) return;
    this.#renewal = setInterval(() => void this.renew(), Math.max(100, Math.floor(this.leaseMs / 3)));
    this.#renewal.unref();
  }

  /** The Redis key of one of a key's counters (one hash tag per API key: one key slot). */
  #key(keyId: string, what: string): string {
    return `${this.#prefix}lim:{${keyId}}:${what}`;
  }

  #member(requestId: string): string {
    return `${this.#gatewayId}|${requestId}`;
  }

  /**
   * Checks a key's limits in Redis and, when none refuses, counts the request and holds `hold`
   * tokens (0: none) for it until settle() or release(). Rejects when Redis does not answer (the
   * caller decides by GATEWAY_REDIS_DOWN).
   */
  async admit(keyId: string, l: KeyLimits, requestId: string, hold: number): Promise<SharedAdmission> {
    const member = this.#member(requestId);
    if (Limits.holdsTokens(l)) this.#tokenKeys.add(keyId);
    const active = this.#key(keyId, 'active');
    const r = await this.#client.gatewayLimitsAdmit(
      this.#key(keyId, 'rpm:'),
      this.#key(keyId, 'tpm:'),
      this.#key(keyId, 'tpd:'),
      active,
      this.#key(keyId, 'held'),
      this.#key(keyId, 'heldtok'),
      l.rpm ?? -1,
      l.tpm ?? -1,
      l.tpd ?? -1,
      l.concurrency ?? -1,
      member,
      hold,
      this.leaseMs,
    );
    const [refused = 0, retryMs = 0, requests = 0, minuteLeft = 0, tokens = 0, tokensLeft = 0] = r;
    const headers: Record<string, string> = {};
    if (l.rpm !== null) {
      headers['x-ratelimit-limit-requests'] = String(l.rpm);
      headers['x-ratelimit-remaining-requests'] = String(Math.max(0, l.rpm - requests));
      headers['x-ratelimit-reset-requests'] = resetText(minuteLeft);
    }
    const tokenLimit = l.tpm ?? l.tpd;
    if (tokenLimit !== null) {
      headers['x-ratelimit-limit-tokens'] = String(tokenLimit);
      headers['x-ratelimit-remaining-tokens'] = String(Math.max(0, tokenLimit - tokens));
      headers['x-ratelimit-reset-tokens'] = resetText(tokensLeft);
    }
    const limit = LIMIT_NAMES[refused];
    if (limit !== undefined) {
      const max =
        limit === 'requests per minute'
          ? l.rpm
          : limit === 'tokens per minute'
            ? l.tpm
            : limit === 'tokens per day'
              ? l.tpd
              : l.concurrency;
      return { refusal: { limit, max: max ?? 0, retryAfter: Math.max(1, Math.ceil(retryMs / 1000)) }, headers, end: noop };
    }
    if (hold > 0) this.#holds.set(requestId, { keyId, member, at: Date.now(), tokens: hold });
    if (l.concurrency === null) return { refusal: undefined, headers, end: noop };
    this.#active.set(member, active);
    let done = false;
    const end = (): void => {
      if (done) return;
      done = true;
      this.#active.delete(member);
      this.#client.zrem(active, member).catch((err: Error) => this.#onError(err, 'end'));
    };
    return { refusal: undefined, headers, end };
  }

  /**
   * A usage record: the request's hold (if it holds one here) is replaced by the tokens it used;
   * a key with a token limit counts them even without a hold. One call, or none.
   */
  settle(keyId: string, requestId: string, used: number): Promise<void> {
    const hold = this.#holds.get(requestId);
    if (hold !== undefined) this.#holds.delete(requestId);
    else if (used <= 0 || !this.#tokenKeys.has(keyId)) return Promise.resolve();
    return this.#client
      .gatewayLimitsSettle(
        this.#key(keyId, 'tpm:'),
        this.#key(keyId, 'tpd:'),
        this.#key(keyId, 'held'),
        this.#key(keyId, 'heldtok'),
        hold?.member ?? '',
        Math.max(0, used),
      )
      .then(
        () => undefined,
        (err: Error) => this.#onError(err, 'settle'),
      );
  }

  /** Gives a request's hold back without counting anything (no usage record to settle with). */
  release(requestId: string): Promise<void> {
    const hold = this.#holds.get(requestId);
    if (hold === undefined) return Promise.resolve();
    this.#holds.delete(requestId);
    return this.#client
      .multi()
      .zrem(this.#key(hold.keyId, 'held'), hold.member)
      .hdel(this.#key(hold.keyId, 'heldtok'), hold.member)
      .exec()
      .then(
        () => undefined,
        (err: Error) => this.#onError(err, 'release'),
      );
  }

  /** Live entries of this process (concurrency entries and holds). */
  get live(): number {
    return this.#active.size + this.#holds.size;
  }

  /**
   * Renews every live entry of this process: one call. An entry Redis dropped meanwhile (this
   * process stalled past its lease, Redis restarted) is added again: its request still runs.
   */
  async renew(): Promise<void> {
    if (this.#active.size === 0 && this.#holds.size === 0) return;
    const keys: string[] = [];
    const args: (string | number)[] = [];
    for (const [member, zset] of this.#active) {
      keys.push(zset);
      args.push(member, '');
    }
    for (const hold of this.#holds.values()) {
      keys.push(this.#key(hold.keyId, 'held'), this.#key(hold.keyId, 'heldtok'));
      args.push(hold.member, '', hold.member, hold.tokens);
    }
    try {
      await this.#client.gatewayLimitsRenew(keys.length, ...keys, this.leaseMs, ...args);
    } catch (err) {
      this.#onError(err as Error, 'renew');
    }
  }

  /** Forgets holds older than `maxAgeMs` (a request whose record never came: a safety net). */
  sweep(now: number, maxAgeMs: number): void {
    for (const [requestId, hold] of this.#holds) if (hold.at + maxAgeMs < now) void this.release(requestId);
  }

  /** Stops renewing and gives back what this process still holds (best effort). */
  async close(): Promise<void> {
    clearInterval(this.#renewal);
    this.#renewal = undefined;
    const m = this.#client.multi();
    for (const [member, zset] of this.#active) m.zrem(zset, member);
    for (const hold of this.#holds.values())
      m.zrem(this.#key(hold.keyId, 'held'), hold.member).hdel(this.#key(hold.keyId, 'heldtok'), hold.member);
    this.#active.clear();
    this.#holds.clear();
    await m.exec().catch(() => undefined);
  }
}

function noop(): void {}
