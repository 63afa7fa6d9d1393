// The fair queue over several llama-servers (issue 14): FairQueue's rules (fair-queue.ts), per model
// and per server. A group is a model (its canonical id); a request names its group and the servers
// that serve it (its candidates), and takes `weight` slots (its llama-server tasks) on ONE of them.
//   - Fairness is per group: a free slot goes to the group's waiting key with the fewest requests
//     running in that group (ties: the key served least recently: round robin). Groups do not wait
//     behind each other: an embedding request never waits behind chat generations on other servers.
//     When a server that several groups share frees a slot, the group whose fairest waiter has
//     waited longest goes first.
//   - A key holds at most keySlotCap(keySlots, usable slots of its request's candidates) slots in a
//     group. The share counts the slots usable now (a loading or down server's do not count), so
//     with one of two servers down a key still cannot take every slot of the other; a request is
//     refused at once (TooManyTasks) only when it could never run: more tasks than the share of
//     every slot, or than the biggest server has.
//   - A server's usable slots: ready/unknown → its slots; loading → 0 (its requests wait, within the
//     deadline); down → 0, unless every candidate of the request is down: then its slots (the
//     request is sent and fails fast, as with one server).
//   - Placement: the preferred server (prompt-cache affinity) if it has room, else the one with the
//     lowest running / (slots · weight). With `preferMs`, a waiter waits for its preferred server
//     alone until preferMs have passed (a timer dispatches again), then takes any.
//   - When the fairest waiter needs more slots than any server has free, the free slots of one
//     server are kept for it (nobody else starts there) so light requests cannot pass it for ever;
//     the other servers go on serving.
// Servers are read live (their slots and state change at run time); changed() must be called when
// they do, to dispatch again and refuse waiters that can never fit any more.
// Over 400 lines on purpose: one class, because the fast path, dispatch, placement and the readings
// all work on the same counters and keep one invariant (see #dispatch) that a split would spread;
// what sits around it (a request's Placement, failover) lives in placement.ts.
import { QueueFull, QueueLeft, QueueTimeout, TooManyTasks, keySlotCap, type KeySlots } from './fair-queue.js';

/** The same states as UpstreamState (upstreams/upstream-set.ts), named here so that admission does not import upstreams. */
export type SlotState = 'unknown' | 'ready' | 'loading' | 'down';

/** One llama-server as the scheduler sees it (UpstreamNode satisfies it). `index` identifies it. */
export interface SlotServer {
  readonly index: number;
  readonly slots: number;
  readonly state: SlotState;
  readonly weight: number;
}

export interface Admission {
  readonly server: SlotServer;
  /** gives the slots back (the same function as the ticket's cancel) */
  release(): void;
}

export interface Ticket {
  /** true when a slot was free at once: `admitted` is already resolved, `server` is set */
  readonly immediate: boolean;
  readonly admitted: Promise<Admission>;
  /** the client left: leave the queue (QueueLeft), or give the slots back */
  readonly cancel: () => void;
  /** it was let run (`admitted` resolved), not only queued: it may have reached llama-server */
  readonly started: boolean;
  /** the server it runs on, once admitted */
  readonly server: SlotServer | undefined;
}

export interface EnterOptions {
  /** the server that served this conversation before (its prompt cache): taken when it has room */
  prefer?: SlotServer;
  /** wait this long for `prefer` alone before taking any server (0: never wait for it) */
  preferMs?: number;
  /** first in its key's line (a failover retry of a request that already waited its turn) */
  front?: boolean;
}

export interface SchedulerOptions {
  maxQueue: number;
  maxQueuePerKey: number;
  timeoutMs: number;
  keySlots: KeySlots;
}

export interface SchedulerSnapshot {
  running: number;
  waiting: number;
  holding: number;
  groups: { group: string; running: number; waiting: number; keys: { key: string; running: number; waiting: number }[] }[];
  servers: { index: number; running: number }[];
}

interface Group {
  readonly name: string;
  /** each key's waiters in order */
  readonly waiting: Map<string, Seat[]>;
  size: number;
  running: number;
  readonly runningByKey: Map<string, number>;
  /** when each key last got a slot (a sequence number); keys with nothing running or waiting are forgotten */
  readonly lastStart: Map<string, number>;
}

/** A released slot kept busy a while longer (Scheduler.hold). */
interface Hold {
  timer: NodeJS.Timeout | undefined;
  readonly release: () => void;
}

/** Set in Scheduler's static block: a Seat's cancel reaches the scheduler's private state through it. */
let cancelSeat: (seat: Seat) => void;

/**
 * One request: its ticket and its place in the queue while it waits. One object, so the fast path
 * allocates it and its cancel function only (`admitted` is made when read).
 */
class Seat implements Ticket {
  readonly cancel = (): void => cancelSeat(this);
  started = false;
  server: SlotServer | undefined = undefined;
  /** given back (release ran) */
  done = false;
  /** in its key's line */
  queued = false;
  promise: Promise<Admission> | undefined = undefined;
  resolve: ((admission: Admission) => void) | undefined = undefined;
  reject: ((err: Error) => void) | undefined = undefined;
  prefer: SlotServer | undefined = undefined;
  /** waits for `prefer` alone (until its preferMs timer) */
  preferring = false;
  /** queue order across groups (front: negative, before everyone) */
  since = 0;
  /** the dispatch pass in which slots were kept for it (it is passed over for the rest of that pass) */
  pass = 0;
  /** the server whose slots were last kept for it (-1: none), preferred on ties so it keeps draining */
  keptOn = -1;
  timer: NodeJS.Timeout | undefined = undefined;
  preferTimer: NodeJS.Timeout | undefined = undefined;

  constructor(
    readonly owner: Scheduler,
    readonly key: string,
    readonly group: Group,
    readonly candidates: readonly SlotServer[],
    readonly weight: number,
    readonly immediate: boolean,
  ) {}

  get admitted(): Promise<Admission> {
    return (this.promise ??= Promise.resolve<Admission>({ server: this.server!, release: this.cancel }));
  }
}

/**
 * What admission, failover, /metrics and the admin view use of the fair queue over the servers'
 * slots: Scheduler (this process's requests), or SharedScheduler (cluster/shared-slots.ts: every
 * gateway's, through Redis) with the same rules.
 */
export interface SlotQueue {
  readonly maxQueuePerKey: number;
  readonly running: number;
  readonly waiting: number;
  readonly holding: number;
  runningOn(server: SlotServer): number;
  waitingFor(key: string): number;
  runningFor(key: string): number;
  waitingIn(group: string): number;
  keySlotsOf(candidates: readonly SlotServer[]): number;
  snapshot(): SchedulerSnapshot;
  enter(key: string, group: string, candidates: readonly SlotServer[], weight?: number, opts?: EnterOptions): Ticket;
  changed(): void;
  hold(release: () => void, ms: number): void;
  close(): void;
}

function everyDown(candidates: readonly SlotServer[]): boolean {
  for (const s of candidates) if (s.state !== 'down') return false;
  return true;
}

/** The slots a server offers now; `allDown`: every candidate of the request is down. */
function usable(s: SlotServer, allDown: boolean): number {
  const state = s.state;
  if (state === 'ready' || state === 'unknown') return s.slots;
  return state === 'down' && allDown ? s.slots : 0;
}

export class Scheduler implements SlotQueue {
  readonly #keySlots: KeySlots;
  readonly #maxQueue: number;
  readonly #maxPerKey: number;
  readonly #timeoutMs: number;
  /** slots taken, on every server */
  #running = 0;
  /** waiting requests, every group */
  #size = 0;
  #seq = 0;
  /** `since` of front waiters: counts down, before every other waiter */
  #frontSeq = -1;
  #pass = 0;
  readonly #groups = new Map<string, Group>();
  readonly #waitingByKey = new Map<string, number>();
  /** by SlotServer.index: every server seen (candidates of a waiter, or one that ran a request) */
  readonly #servers: (SlotServer | undefined)[] = [];
  /** by SlotServer.index: slots taken on it */
  readonly #onServer: (number | undefined)[] = [];
  /** by SlotServer.index: the waiter its free slots are kept for, until the next dispatch */
  readonly #keptFor: (Seat | undefined)[] = [];
  /**
   * Servers several models (groups) use (llama-server's router mode, llama-swap): the first group
   * seen on each, and whether another has come since. On such a server a key also holds at most
   * its share of that server's slots, whatever the model: the per-model share alone would let it
   * hold its share of every model there, i.e. every slot.
   */
  readonly #firstGroupOn: (Group | undefined)[] = [];
  readonly #shared: boolean[] = [];
  /**
   * slots each key holds on each server (kept for every server: one may turn shared while a key
   * already runs there; a Map get and set per start and end)
   */
  readonly #keyOnServer: (Map<string, number> | undefined)[] = [];
  #keeping = 0;
  readonly #holds = new Set<Hold>();

  static {
    cancelSeat = (seat) => seat.owner.#cancel(seat);
  }

  constructor(opts: SchedulerOptions) {
    this.#keySlots = opts.keySlots;
    this.#maxQueue = opts.maxQueue;
    this.#maxPerKey = opts.maxQueuePerKey;
    this.#timeoutMs = opts.timeoutMs;
  }

  get maxQueuePerKey(): number {
    return this.#maxPerKey;
  }

  /** Slots taken now, every server (a request counts its weight; holds included). */
  get running(): number {
    return this.#running;
  }

  /** Requests waiting now, every group. */
  get waiting(): number {
    return this.#size;
  }

  /** Released slots still kept busy (hold): counted in `running` until they end. */
  get holding(): number {
    return this.#holds.size;
  }

  runningOn(server: SlotServer): number {
    return this.#onServer[server.index] ?? 0;
  }

  /** What `key` waits with, every group. */
  waitingFor(key: string): number {
    return this.#waitingByKey.get(key) ?? 0;
  }

  /** Slots `key` holds, every group. */
  runningFor(key: string): number {
    let n = 0;
    for (const g of this.#groups.values()) n += g.runningByKey.get(key) ?? 0;
    return n;
  }

  waitingIn(group: string): number {
    return this.#groups.get(group)?.size ?? 0;
  }

  /** A key's share of these servers' slots now (what it may hold at once in their group). */
  keySlotsOf(candidates: readonly SlotServer[]): number {
    return this.#shareOf(candidates, everyDown(candidates));
  }

  /** For /admin/live: every group with its keys (running or waiting), every server seen. */
  snapshot(): SchedulerSnapshot {
    const groups: SchedulerSnapshot['groups'] = [];
    for (const g of this.#groups.values()) {
      const keys: SchedulerSnapshot['groups'][number]['keys'] = [];
      for (const [key, running] of g.runningByKey) keys.push({ key, running, waiting: g.waiting.get(key)?.length ?? 0 });
      for (const [key, list] of g.waiting) if (!g.runningByKey.has(key)) keys.push({ key, running: 0, waiting: list.length });
      groups.push({ group: g.name, running: g.running, waiting: g.size, keys });
    }
    const servers: SchedulerSnapshot['servers'] = [];
    for (const s of this.#servers) if (s !== undefined) servers.push({ index: s.index, running: this.#onServer[s.index] ?? 0 });
    return { running: this.#running, waiting: this.#size, holding: this.#holds.size, groups, servers };
  }

  /**
   * Asks for `weight` slots on one of `candidates` (the servers of `group`) for `key`. Throws
   * QueueFull or TooManyTasks at once; `admitted` rejects with QueueTimeout, QueueLeft (cancel), or
   * TooManyTasks (changed(): the servers shrank below the weight while it waited).
   */
  enter(key: string, group: string, candidates: readonly SlotServer[], weight = 1, opts?: EnterOptions): Ticket {
    if (candidates.length === 0) throw new RangeError('Scheduler.enter: no candidate server');
    const g = this.#groups.get(group) ?? this.#addGroup(group);
    for (const c of candidates) {
      const first = this.#firstGroupOn[c.index];
      if (first === undefined) this.#firstGroupOn[c.index] = g;
      else if (first !== g && this.#shared[c.index] !== true) this.#shared[c.index] = true;
    }
    let prefer = opts?.prefer;
    if (prefer !== undefined && !candidates.includes(prefer)) prefer = undefined;
    const preferring = prefer !== undefined && (opts?.preferMs ?? 0) > 0;
    // A server has room and this key stays within its share: run now. Others may be waiting in the
    // group, but only keys at their share, waiters for another server (preferMs) or for slots kept
    // on a server (#dispatch leaves no other waiter behind a free slot), and this key has none.
    const mine = g.runningByKey.get(key) ?? 0;
    const allDown = everyDown(candidates);
    if ((g.size === 0 || !g.waiting.has(key)) && mine + weight <= this.#shareOf(candidates, allDown)) {
      const server = this.#place(candidates, allDown, weight, prefer, preferring, undefined, key);
      if (server !== undefined) {
        const seat = new Seat(this, key, g, candidates, weight, true);
        this.#start(seat, mine, server);
        return seat;
      }
    }
    const most = this.#most(candidates);
    if (weight > most) throw new TooManyTasks(weight, most);
    if ((this.#waitingByKey.get(key) ?? 0) >= this.#maxPerKey) throw new QueueFull('key');
    if (this.#size >= this.#maxQueue) throw new QueueFull('all');
    const seat = new Seat(this, key, g, candidates, weight, false);
    seat.prefer = prefer;
    seat.preferring = preferring;
    seat.promise = new Promise<Admission>((resolve, reject) => {
      seat.resolve = resolve;
      seat.reject = reject;
    });
    seat.timer = setTimeout(() => {
      if (this.#leave(seat)) seat.reject!(new QueueTimeout());
    }, this.#timeoutMs); // cleared when the waiter leaves the queue in any way
    if (preferring)
      seat.preferTimer = setTimeout(() => {
        seat.preferTimer = undefined;
        seat.preferring = false;
        if (seat.queued) this.#dispatch();
      }, opts!.preferMs);
    const list = g.waiting.get(key);
    if (opts?.front === true) {
      seat.since = this.#frontSeq--;
      if (list === undefined) g.waiting.set(key, [seat]);
      else list.unshift(seat);
    } else {
      seat.since = this.#seq++;
      if (list === undefined) g.waiting.set(key, [seat]);
      else list.push(seat);
    }
    seat.queued = true;
    g.size++;
    this.#size++;
    this.#waitingByKey.set(key, (this.#waitingByKey.get(key) ?? 0) + 1);
    for (const s of candidates) this.#servers[s.index] = s;
    // Not expected to admit it (the fast path took a free slot it could use), but it may be first
    // in its key's line now (front), or be kept slots for: never leave a waiter behind a free slot.
    this.#dispatch();
    return seat;
  }

  /** A server's state or slots changed: refuse waiters that can never fit any more, and dispatch. */
  changed(): void {
    for (const g of this.#groups.values()) {
      if (g.size === 0) continue;
      for (const list of [...g.waiting.values()])
        for (const seat of [...list]) {
          const most = this.#most(seat.candidates);
          if (seat.weight > most && this.#remove(seat)) seat.reject!(new TooManyTasks(seat.weight, most));
        }
    }
    this.#dispatch();
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

  #addGroup(name: string): Group {
    // Kept for good: groups are models, few; the fast path then never allocates one.
    const g: Group = { name, waiting: new Map(), size: 0, running: 0, runningByKey: new Map(), lastStart: new Map() };
    this.#groups.set(name, g);
    return g;
  }

  /** A key's share of the candidates' slots usable now. */
  #shareOf(candidates: readonly SlotServer[], allDown: boolean): number {
    let total = 0;
    for (const s of candidates) total += usable(s, allDown);
    return keySlotCap(this.#keySlots, total);
  }

  /** The most slots one request may ever take on these servers, whatever their state. */
  #most(candidates: readonly SlotServer[]): number {
    let total = 0;
    let biggest = 0;
    for (const s of candidates) {
      total += s.slots;
      if (s.slots > biggest) biggest = s.slots;
    }
    return Math.min(keySlotCap(this.#keySlots, total), biggest);
  }

  /** On a server several models share, the key stays within its share of that server's slots. */
  #withinServerShare(s: SlotServer, key: string, weight: number, allDown: boolean): boolean {
    if (this.#shared[s.index] !== true) return true;
    const mine = this.#keyOnServer[s.index]?.get(key) ?? 0;
    return mine + weight <= keySlotCap(this.#keySlots, usable(s, allDown));
  }

  /** `self` may use slots kept for it; anyone may use a server nothing is kept on. */
  #open(s: SlotServer, self: Seat | undefined): boolean {
    const kept = this.#keptFor[s.index];
    return kept === undefined || kept === self;
  }

  /** Where `weight` slots go now: the preferred server if it has room, else the least loaded with room; undefined: none. */
  #place(
    candidates: readonly SlotServer[],
    allDown: boolean,
    weight: number,
    prefer: SlotServer | undefined,
    preferring: boolean,
    self: Seat | undefined,
    key: string,
  ): SlotServer | undefined {
    if (prefer !== undefined) {
      const cap = usable(prefer, allDown);
      if (
        cap - (this.#onServer[prefer.index] ?? 0) >= weight &&
        this.#open(prefer, self) &&
        this.#withinServerShare(prefer, key, weight, allDown)
      )
        return prefer;
      if (preferring && cap >= weight) return undefined; // it waits for that one (until preferMs)
    }
    let best: SlotServer | undefined;
    let bestLoad = Infinity;
    for (const s of candidates) {
      const running = this.#onServer[s.index] ?? 0;
      if (usable(s, allDown) - running < weight || !this.#open(s, self) || !this.#withinServerShare(s, key, weight, allDown)) continue;
      const size = s.slots * s.weight;
      const load = size > 0 ? running / size : Infinity;
      if (best === undefined || load < bestLoad) {
        best = s;
        bestLoad = load;
      }
    }
    return best;
  }

  /** A waiter that fits nowhere: the server whose free slots to keep for it (the one closest to fitting), if any. */
  #keepTarget(seat: Seat): SlotServer | undefined {
    const allDown = everyDown(seat.candidates);
    const prefer = seat.prefer;
    if (seat.preferring && prefer !== undefined && usable(prefer, allDown) >= seat.weight)
      return usable(prefer, allDown) - (this.#onServer[prefer.index] ?? 0) > 0 && this.#open(prefer, seat) ? prefer : undefined;
    let best: SlotServer | undefined;
    let bestFree = 0;
    for (const s of seat.candidates) {
      const cap = usable(s, allDown);
      // it could never fit there now
      if (cap < seat.weight || !this.#open(s, seat) || !this.#withinServerShare(s, seat.key, seat.weight, allDown)) continue;
      const free = cap - (this.#onServer[s.index] ?? 0);
      if (free > bestFree || (free === bestFree && free > 0 && s.index === seat.keptOn)) {
        best = s;
        bestFree = free;
      }
    }
    return best;
  }

  /** Some server has a free slot nothing is kept on (loading ones aside): else dispatch has nothing to do. */
  #anyFree(): boolean {
    for (const s of this.#servers)
      if (s !== undefined && s.state !== 'loading' && this.#keptFor[s.index] === undefined && s.slots > (this.#onServer[s.index] ?? 0))
        return true;
    return false;
  }

  #start(seat: Seat, mine: number, server: SlotServer): void {
    const w = seat.weight;
    const g = seat.group;
    const i = server.index;
    this.#running += w;
    g.running += w;
    this.#onServer[i] = (this.#onServer[i] ?? 0) + w;
    this.#servers[i] = server;
    g.runningByKey.set(seat.key, mine + w);
    g.lastStart.set(seat.key, this.#seq++);
    const byKey = (this.#keyOnServer[i] ??= new Map());
    byKey.set(seat.key, (byKey.get(seat.key) ?? 0) + w);
    seat.server = server;
    seat.started = true;
  }

  #finish(seat: Seat): void {
    if (seat.done || !seat.started) return;
    seat.done = true;
    const w = seat.weight;
    const g = seat.group;
    const i = seat.server!.index;
    this.#running -= w;
    g.running -= w;
    this.#onServer[i] = (this.#onServer[i] ?? w) - w;
    const byKey = this.#keyOnServer[i]!;
    const left = (byKey.get(seat.key) ?? w) - w;
    if (left <= 0) byKey.delete(seat.key);
    else byKey.set(seat.key, left);
    const n = (g.runningByKey.get(seat.key) ?? w) - w;
    if (n <= 0) {
      g.runningByKey.delete(seat.key);
      if (!g.waiting.has(seat.key)) g.lastStart.delete(seat.key);
    } else g.runningByKey.set(seat.key, n);
    this.#dispatch();
  }

  #cancel(seat: Seat): void {
    if (seat.queued) {
      if (this.#leave(seat)) seat.reject!(new QueueLeft());
    } else this.#finish(seat);
  }

  /** #remove for a waiter leaving on its own: slots kept for it, or its key's next waiter, may start now. */
  #leave(seat: Seat): boolean {
    const list = seat.group.waiting.get(seat.key);
    const wasHead = list !== undefined && list[0] === seat && list.length > 1;
    const kept = seat.keptOn >= 0 && this.#keptFor[seat.keptOn] === seat;
    if (!this.#remove(seat)) return false;
    if (wasHead || kept) this.#dispatch();
    return true;
  }

  #remove(seat: Seat): boolean {
    if (!seat.queued) return false;
    const g = seat.group;
    const list = g.waiting.get(seat.key)!;
    list.splice(list.indexOf(seat), 1);
    if (list.length === 0) {
      g.waiting.delete(seat.key);
      if (!g.runningByKey.has(seat.key)) g.lastStart.delete(seat.key);
    }
    seat.queued = false;
    g.size--;
    this.#size--;
    const n = (this.#waitingByKey.get(seat.key) ?? 1) - 1;
    if (n === 0) this.#waitingByKey.delete(seat.key);
    else this.#waitingByKey.set(seat.key, n);
    if (seat.timer !== undefined) clearTimeout(seat.timer);
    if (seat.preferTimer !== undefined) clearTimeout(seat.preferTimer);
    seat.timer = seat.preferTimer = undefined;
    return true;
  }

  /**
   * Starts waiters while some server has room for one. Each round: in every group, the fairest
   * waiter (fewest running in the group, then least recently served) among those under their share
   * that can start now or be kept slots for; of those, the one that has waited longest starts, or
   * has the free slots of one server kept for it (it then sits out the rest of this pass).
   * Afterwards every free slot is unusable by every waiter (at its share, waiting for another
   * server, or kept), which is what lets enter()'s fast path skip the queue.
   */
  #dispatch(): void {
    if (this.#keeping > 0) {
      this.#keptFor.fill(undefined);
      this.#keeping = 0;
    }
    if (this.#size === 0) return;
    const pass = ++this.#pass;
    while (this.#anyFree()) {
      let best: Seat | undefined;
      let bestServer: SlotServer | undefined;
      let bestFits = false;
      for (const g of this.#groups.values()) {
        if (g.size === 0) continue;
        let head: Seat | undefined;
        let headServer: SlotServer | undefined;
        let headFits = false;
        let headRunning = Infinity;
        let headLast = Infinity;
        for (const [key, list] of g.waiting) {
          const seat = list[0]!;
          if (seat.pass === pass) continue; // slots were kept for it this pass
          const running = g.runningByKey.get(key) ?? 0;
          const last = g.lastStart.get(key) ?? -1;
          if (running > headRunning || (running === headRunning && last >= headLast)) continue; // not fairer
          const allDown = everyDown(seat.candidates);
          if (running + seat.weight > this.#shareOf(seat.candidates, allDown)) continue; // at its share
          let server = this.#place(seat.candidates, allDown, seat.weight, seat.prefer, seat.preferring, seat, key);
          const fits = server !== undefined;
          if (!fits) server = this.#keepTarget(seat);
          if (server === undefined) continue; // nothing it could take or be kept now
          head = seat;
          headServer = server;
          headFits = fits;
          headRunning = running;
          headLast = last;
        }
        if (head !== undefined && (best === undefined || head.since < best.since)) {
          best = head;
          bestServer = headServer;
          bestFits = headFits;
        }
      }
      if (best === undefined) return;
      if (bestFits) {
        const mine = best.group.runningByKey.get(best.key) ?? 0;
        this.#remove(best);
        this.#start(best, mine, bestServer!);
        best.resolve!({ server: bestServer!, release: best.cancel });
      } else {
        // Its turn, but too few slots are free: keep that server's for it until enough are.
        this.#keptFor[bestServer!.index] = best;
        this.#keeping++;
        best.keptOn = bestServer!.index;
        best.pass = pass;
      }
    }
  }
}
