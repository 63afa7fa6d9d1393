// The fair queue in front of llama-server's slots. At most `maxInflight` requests run upstream at
// once; the rest wait here, and each free slot goes to the waiting key that has the fewest
// requests running (ties: the key served least recently, i.e. round robin). So a key with 1
// request is served next to a key with 50, instead of behind all of them as in llama-server's own
// first-come queue.
// A key holds at most its share of the slots (`keySlots`; default in the gateway: all but one):
// a key at its share waits even when a slot is free, so that slot is there at once for another
// key's request. The queue cannot preempt a running request, so without a share one key could
// hold every slot for as long as its generations run, and other keys' requests time out here.
// Bounded (overall and per key) and with a deadline per waiting request.

export class QueueFull extends Error {
  constructor(readonly scope: 'key' | 'all') {
    super(scope === 'key' ? 'too many waiting requests for this key' : 'the queue is full');
    this.name = 'QueueFull';
  }
}

export class QueueTimeout extends Error {
  constructor() {
    super('waited too long for a free slot');
    this.name = 'QueueTimeout';
  }
}

export class QueueLeft extends Error {
  constructor() {
    super('the client left while waiting');
    this.name = 'QueueLeft';
  }
}

interface Waiter {
  readonly key: string;
  readonly since: number;
  resolve(release: () => void): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout | undefined;
}

/** How many slots one key may hold at once: 'auto' = all but one (at least 1), 'all', or a number. */
export type KeySlots = 'auto' | 'all' | number;

/** One key's share for a slot count (the count changes at run time: llama-server's /props). */
export function keySlotCap(keySlots: KeySlots, slots: number): number {
  if (keySlots === 'all') return slots;
  if (keySlots === 'auto') return Math.max(1, slots - 1);
  return Math.min(keySlots, slots);
}

export interface QueueOptions {
  maxInflight: number;
  maxQueue: number;
  maxQueuePerKey: number;
  timeoutMs: number;
  /** a key's share of the slots (default 'all': no share) */
  keySlots?: KeySlots;
}

export interface Ticket {
  /** true when a slot was free at once: `admitted` is already resolved, nothing to wait for */
  readonly immediate: boolean;
  /** resolves with the release function once the request may go upstream */
  readonly admitted: Promise<() => void>;
  /** the client left: leave the queue (or give the slot back) */
  readonly cancel: () => void;
}

export class FairQueue {
  #maxInflight: number;
  readonly #keySlots: KeySlots;
  /** keySlotCap(#keySlots, #maxInflight), kept in step with #maxInflight */
  #keyCap: number;
  readonly #maxQueue: number;
  readonly #maxPerKey: number;
  readonly #timeoutMs: number;
  #running = 0;
  readonly #runningByKey = new Map<string, number>();
  /** when each key last got a slot (a sequence number); keys with nothing running or waiting are forgotten */
  readonly #lastStart = new Map<string, number>();
  readonly #waiting = new Map<string, Waiter[]>();
  #size = 0;
  #seq = 0;

  constructor(opts: QueueOptions) {
    this.#maxInflight = opts.maxInflight;
    this.#keySlots = opts.keySlots ?? 'all';
    this.#keyCap = keySlotCap(this.#keySlots, opts.maxInflight);
    this.#maxQueue = opts.maxQueue;
    this.#maxPerKey = opts.maxQueuePerKey;
    this.#timeoutMs = opts.timeoutMs;
  }

  get maxInflight(): number {
    return this.#maxInflight;
  }

  /** llama-server's slot count changed (read from /props): admit more at once, or fewer from now on. */
  setMaxInflight(n: number): void {
    this.#maxInflight = Math.max(1, n);
    this.#keyCap = keySlotCap(this.#keySlots, this.#maxInflight);
    this.#dispatch();
  }

  /** The most slots one key holds at once now (its share of maxInflight). */
  get keySlots(): number {
    return this.#keyCap;
  }

  get maxQueuePerKey(): number {
    return this.#maxPerKey;
  }

  get running(): number {
    return this.#running;
  }

  get waiting(): number {
    return this.#size;
  }

  waitingFor(key: string): number {
    return this.#waiting.get(key)?.length ?? 0;
  }

  /** Asks for a slot for `key`. Throws QueueFull at once; `admitted` rejects with QueueTimeout. */
  enter(key: string): Ticket {
    // A slot is free and this key is under its share: run now. Others may be waiting, but only
    // keys at their share (#dispatch leaves none else waiting while a slot is free), and this key
    // is not one of them.
    const mine = this.#runningByKey.get(key) ?? 0;
    if (this.#running < this.#maxInflight && mine < this.#keyCap) {
      const release = this.#start(key, mine);
      let released = false;
      return {
        immediate: true,
        admitted: Promise.resolve(release),
        cancel: () => {
          if (!released) release();
          released = true;
        },
      };
    }
    const waiting = this.#waiting.get(key);
    if ((waiting?.length ?? 0) >= this.#maxPerKey) throw new QueueFull('key');
    if (this.#size >= this.#maxQueue) throw new QueueFull('all');
    let waiter!: Waiter;
    let release: (() => void) | undefined;
    const admitted = new Promise<() => void>((resolve, reject) => {
      waiter = {
        key,
        since: this.#seq++,
        resolve: (r) => {
          release = r;
          resolve(r);
        },
        reject,
        timer: undefined,
      };
    });
    waiter.timer = setTimeout(() => {
      if (this.#remove(waiter)) waiter.reject(new QueueTimeout());
    }, this.#timeoutMs); // cleared when the waiter leaves the queue in any way
    if (waiting === undefined) this.#waiting.set(key, [waiter]);
    else waiting.push(waiter);
    this.#size++;
    // Not expected (the fast path above takes a free slot this key may use), but never leave a
    // waiter behind a free slot it may take.
    if (this.#running < this.#maxInflight) this.#dispatch();
    return {
      immediate: false,
      admitted,
      cancel: () => {
        if (this.#remove(waiter)) waiter.reject(new QueueLeft());
        else if (release !== undefined) {
          const r = release;
          release = undefined;
          r();
        }
      },
    };
  }

  /** `running`: what the key runs now (its #runningByKey entry, read by the caller). */
  #start(key: string, running: number): () => void {
    this.#running++;
    this.#runningByKey.set(key, running + 1);
    this.#lastStart.set(key, this.#seq++);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#running--;
      const n = (this.#runningByKey.get(key) ?? 1) - 1;
      if (n === 0) {
        this.#runningByKey.delete(key);
        if (!this.#waiting.has(key)) this.#lastStart.delete(key);
      } else this.#runningByKey.set(key, n);
      this.#dispatch();
    };
  }

  #remove(waiter: Waiter): boolean {
    const list = this.#waiting.get(waiter.key);
    const at = list === undefined ? -1 : list.indexOf(waiter);
    if (at < 0) return false;
    list!.splice(at, 1);
    if (list!.length === 0) this.#waiting.delete(waiter.key);
    this.#size--;
    if (waiter.timer !== undefined) clearTimeout(waiter.timer);
    return true;
  }

  #dispatch(): void {
    while (this.#running < this.#maxInflight && this.#size > 0) {
      let best: Waiter | undefined;
      let bestRunning = Infinity;
      let bestLast = Infinity;
      for (const [key, list] of this.#waiting) {
        const running = this.#runningByKey.get(key) ?? 0;
        if (running >= this.#keyCap) continue; // at its share: waits for one of its own to finish
        const last = this.#lastStart.get(key) ?? -1;
        if (running < bestRunning || (running === bestRunning && last < bestLast)) {
          best = list[0]!;
          bestRunning = running;
          bestLast = last;
        }
      }
      if (best === undefined) return; // every waiting key holds its share; the free slots wait for others
      this.#remove(best);
      best.resolve(this.#start(best.key, bestRunning));
    }
  }
}
