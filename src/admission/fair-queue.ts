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
// A request weighs the llama-server tasks it runs at once (a /v1/completions prompt array runs
// one per prompt, `n` one per choice): it counts that many slots, running and against its key's
// share. One weighing more than its key's share is refused at once (TooManyTasks), never queued.
// When the fairest waiter needs more slots than are free, the free ones are kept for it (nobody
// else starts) so a heavy request is not passed over for ever by lighter ones.

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

/** A request runs more llama-server tasks at once than its key may: it could never start. */
export class TooManyTasks extends Error {
  constructor(
    readonly tasks: number,
    readonly max: number,
  ) {
    super(`the request runs ${tasks} tasks at once; its key may run ${max}`);
    this.name = 'TooManyTasks';
  }
}

interface Waiter {
  readonly key: string;
  /** slots it takes when it runs: its llama-server tasks */
  readonly weight: number;
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
  /** it was let run (`admitted` resolved), not only queued: it may have reached llama-server */
  readonly started: boolean;
}

/** A released slot kept busy a while longer (FairQueue.hold). */
interface Hold {
  timer: NodeJS.Timeout | undefined;
  readonly release: () => void;
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
  /** #dispatch stopped with free slots kept for a waiter that needs more: no fast path meanwhile */
  #keeping = false;
  /** slots given back late (hold), until their timers fire or close() */
  readonly #holds = new Set<Hold>();

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
    // Fewer slots: a waiter weighing more than the new share could never start; refuse it now.
    for (const list of [...this.#waiting.values()])
      for (const w of [...list]) if (w.weight > this.#keyCap && this.#remove(w)) w.reject(new TooManyTasks(w.weight, this.#keyCap));
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

  /** Released slots still kept busy (hold): counted in `running` until they end. */
  get holding(): number {
    return this.#holds.size;
  }

  /**
   * Asks for `weight` slots (the request's llama-server tasks) for `key`. Throws QueueFull or
   * TooManyTasks at once; `admitted` rejects with QueueTimeout (or TooManyTasks, when the slot
   * count drops below the weight while it waits).
   */
  enter(key: string, weight = 1): Ticket {
    // Slots are free and this key stays within its share: run now. Others may be waiting, but only
    // keys at their share (#dispatch leaves none else waiting while slots are free, unless it keeps
    // them for a heavier waiter: #keeping), and this key is not one of them.
    const mine = this.#runningByKey.get(key) ?? 0;
    if (this.#running + weight <= this.#maxInflight && mine + weight <= this.#keyCap && !this.#keeping) {
      const release = this.#start(key, mine, weight);
      let released = false;
      return {
        immediate: true,
        admitted: Promise.resolve(release),
        cancel: () => {
          if (!released) release();
          released = true;
        },
        started: true,
      };
    }
    if (weight > this.#keyCap) throw new TooManyTasks(weight, this.#keyCap);
    const waiting = this.#waiting.get(key);
    if ((waiting?.length ?? 0) >= this.#maxPerKey) throw new QueueFull('key');
    if (this.#size >= this.#maxQueue) throw new QueueFull('all');
    let waiter!: Waiter;
    let release: (() => void) | undefined;
    let started = false;
    const admitted = new Promise<() => void>((resolve, reject) => {
      waiter = {
        key,
        weight,
        since: this.#seq++,
        resolve: (r) => {
          release = r;
          started = true;
          resolve(r);
        },
        reject,
        timer: undefined,
      };
    });
    waiter.timer = setTimeout(() => {
      if (this.#leave(waiter)) waiter.reject(new QueueTimeout());
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
      get started() {
        return started;
      },
      cancel: () => {
        if (this.#leave(waiter)) waiter.reject(new QueueLeft());
        else if (release !== undefined) {
          const r = release;
          release = undefined;
          r();
        }
      },
    };
  }

  /**
   * Gives `release`'s slots back after `ms` instead of now (unref'd: never keeps the process
   * alive; close() ends every hold). For a slot llama-server is still busy with after the gateway
   * is done with it.
   */
  hold(release: () => void, ms: number): void {
    const hold: Hold = { timer: undefined, release };
    hold.timer = setTimeout(() => {
      this.#holds.delete(hold);
      release();
    }, ms);
    hold.timer.unref();
    this.#holds.add(hold);
  }

  /** Shutdown: ends every hold's timer (their slots are not given back: nothing starts any more). */
  close(): void {
    for (const hold of this.#holds) clearTimeout(hold.timer);
    this.#holds.clear();
  }

  /** `running`: what the key runs now (its #runningByKey entry, read by the caller). */
  #start(key: string, running: number, weight: number): () => void {
    this.#running += weight;
    this.#runningByKey.set(key, running + weight);
    this.#lastStart.set(key, this.#seq++);
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.#running -= weight;
      const n = (this.#runningByKey.get(key) ?? weight) - weight;
      if (n === 0) {
        this.#runningByKey.delete(key);
        if (!this.#waiting.has(key)) this.#lastStart.delete(key);
      } else this.#runningByKey.set(key, n);
      this.#dispatch();
    };
  }

  /** #remove for a waiter leaving on its own: slots kept for it go to the others. */
  #leave(waiter: Waiter): boolean {
    if (!this.#remove(waiter)) return false;
    if (this.#keeping) this.#dispatch();
    return true;
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
    this.#keeping = false;
    while (this.#running < this.#maxInflight && this.#size > 0) {
      let best: Waiter | undefined;
      let bestRunning = Infinity;
      let bestLast = Infinity;
      for (const [key, list] of this.#waiting) {
        const running = this.#runningByKey.get(key) ?? 0;
        const head = list[0]!;
        if (running + head.weight > this.#keyCap) continue; // at its share: waits for one of its own to finish
        const last = this.#lastStart.get(key) ?? -1;
        if (running < bestRunning || (running === bestRunning && last < bestLast)) {
          best = head;
          bestRunning = running;
          bestLast = last;
        }
      }
      if (best === undefined) return; // every waiting key holds its share; the free slots wait for others
      if (this.#running + best.weight > this.#maxInflight) {
        // Its turn, but too few slots are free: keep them for it until enough are.
        this.#keeping = true;
        return;
      }
      this.#remove(best);
      best.resolve(this.#start(best.key, bestRunning, best.weight));
    }
  }
}
