// The failed-auth brake: too many wrong credentials (client keys, the admin key) from one address
// within a minute block that address for a while (GATEWAY_AUTH_FAIL_LIMIT, GATEWAY_AUTH_BLOCK_MS).
//
// Its memory is its own and bounded (issue 12): behind a tunnel the address is whatever
// Cf-Connecting-Ip says, so an attacker with many addresses must not grow the heap. Failures are
// counted in fixed windows (the clock's minute): when the minute ends, its whole map is dropped at
// once. A blocked address is kept for its block time. At most `maxAddresses` are kept (counting and
// blocked together): a new one pushes out the oldest that is only counting, and a blocked one only
// when nothing else is left. A Map iterates in insertion order, so "the oldest" is its first entry;
// each map keeps one iterator that walks forward as entries are evicted (asking a Map for its first
// key again and again would walk over every deleted slot at the front each time).
//
// Checking an address that is not blocked is one Map lookup: no allocation on the request path.
//
// Several gateways (GATEWAY_REDIS_URL): each failure is also counted in Redis (onFail:
// cluster/shared-brake.ts), and a block started there reaches every gateway's brake through
// block(). The check stays this Map lookup; the local count still blocks on its own too (and
// alone while Redis is down).

/** Failures are counted per minute (aligned to the clock). */
export const AUTH_WINDOW_MS = 60_000;
/** At most this many addresses are tracked (counting and blocked together). */
export const DEFAULT_AUTH_MAX_ADDRESSES = 100_000;
// An address is short (IPv6 with a zone is < 64); a longer Cf-Connecting-Ip / X-Forwarded-For value
// is cut, so a client cannot make one entry large (cut values share their counter: stricter).
const MAX_ADDRESS_LENGTH = 64;

function addressKey(ip: string): string {
  return ip.length > MAX_ADDRESS_LENGTH ? ip.slice(0, MAX_ADDRESS_LENGTH) : ip;
}

/** A Map and a cursor over its keys, oldest first, for evicting in insertion order. */
class Fifo<V> {
  readonly map = new Map<string, V>();
  #cursor: Iterator<string> | undefined;

  /** Forgets the oldest entry; false when there is none. */
  evictOldest(): boolean {
    if (this.map.size === 0) return false;
    // Every key the cursor passed was deleted here, so its next key is the oldest one left.
    this.#cursor ??= this.map.keys();
    let next = this.#cursor.next();
    if (next.done === true) {
      this.#cursor = this.map.keys();
      next = this.#cursor.next();
    }
    return next.done !== true && this.map.delete(next.value);
  }
}

export class AuthBrake {
  readonly #max: number;
  readonly #blockMs: number;
  readonly #maxAddresses: number;
  /** failures per address in the current minute */
  #counting = new Fifo<number>();
  /** when the current minute ends (ms since epoch) */
  #windowEnd = 0;
  /** blocked addresses → when the block ends */
  readonly #blocked = new Fifo<number>();
  /** told of every failure counted here (the shared count in Redis), or null */
  onFail: ((address: string) => void) | null = null;

  constructor(maxPerMinute: number, blockMs: number, opts: { maxAddresses?: number } = {}) {
    this.#max = maxPerMinute;
    this.#blockMs = blockMs;
    this.#maxAddresses = Math.max(1, opts.maxAddresses ?? DEFAULT_AUTH_MAX_ADDRESSES);
  }

  /** Addresses tracked now (counting and blocked). */
  get size(): number {
    return this.#counting.map.size + this.#blocked.map.size;
  }

  /** Blocked addresses tracked now. */
  get blocked(): number {
    return this.#blocked.map.size;
  }

  /** ms until the address may try again, or 0. */
  blockedFor(ip: string, now: number): number {
    const blocked = this.#blocked.map;
    if (blocked.size === 0) return 0;
    const key = addressKey(ip);
    const until = blocked.get(key);
    if (until === undefined) return 0;
    if (until > now) return until - now;
    blocked.delete(key);
    return 0;
  }

  /** Counts a failure; true when this one started a block. */
  fail(ip: string, now: number): boolean {
    const key = addressKey(ip);
    if (this.blockedFor(key, now) > 0) return false; // already blocked: the block does not grow
    if (this.onFail !== null) this.onFail(key);
    this.#startWindow(now);
    const counting = this.#counting.map;
    const failures = (counting.get(key) ?? 0) + 1;
    if (failures < this.#max) {
      if (failures === 1) this.#makeRoom();
      counting.set(key, failures);
      return false;
    }
    if (!counting.delete(key)) this.#makeRoom();
    this.#blocked.map.set(key, now + this.#blockMs);
    return true;
  }

  /** Blocks an address until `until` (a block another gateway started); a longer one stays. */
  block(ip: string, until: number, now: number): void {
    const key = addressKey(ip);
    const blocked = this.#blocked.map;
    const current = blocked.get(key);
    if (current !== undefined && current >= until) return;
    if (current === undefined && !this.#counting.map.delete(key)) this.#makeRoom();
    blocked.set(key, until);
    if (until <= now) blocked.delete(key);
  }

  /** At the cap: forget the oldest counting address, or the oldest blocked one if none is counting. */
  #makeRoom(): void {
    while (this.size >= this.#maxAddresses && (this.#counting.evictOldest() || this.#blocked.evictOldest()));
  }

  /** Drops what has expired: the last minute's counts, blocks that ended (call from a timer). */
  sweep(now: number): void {
    this.#startWindow(now);
    for (const [key, until] of this.#blocked.map) if (until <= now) this.#blocked.map.delete(key);
  }

  /** A new minute: the last one's counts go, all at once. */
  #startWindow(now: number): void {
    if (now < this.#windowEnd) return;
    if (this.#counting.map.size > 0) this.#counting = new Fifo<number>();
    this.#windowEnd = (Math.floor(now / AUTH_WINDOW_MS) + 1) * AUTH_WINDOW_MS;
  }
}
