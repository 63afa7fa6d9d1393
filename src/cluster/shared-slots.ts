// (Over 400 lines, kept whole: every state change of a request's seat — enter, grant, leave, renew,
// fall back — is here, next to the others it races with.)
// The llama-servers' slots shared by several gateways (issue 17): the fair queue of
// admission/scheduler.ts over every gateway's requests, in Redis (GATEWAY_REDIS_URL), with the
// Scheduler's surface (SlotQueue) for admission, failover, /metrics and the admin view.
//
// Design (DESIGN.md "Shared slots"): leases in a sorted set, one waiting line per model, one Lua
// script (cluster/slots-script.ts) that drops what expired and dispatches on every call; a grant
// reaches the waiter's gateway on its pub/sub channel. This process asks once per request
// (ENTER + DISPATCH: a free slot answers at once), gives back once (RELEASE + DISPATCH), and every
// lease/3 renews its leases and waiters in one call, which also tells it of a grant whose message
// was lost. A gateway killed mid-stream stops renewing: its slots are free one lease later.
//
// Redis down (or a call failing): GATEWAY_REDIS_DOWN=local → new requests and this process's
// waiters go to a process-local Scheduler (each gateway counts only its own requests again: with
// N gateways up to N× the slots are sent, and llama-server's own queue takes the excess);
// =refuse → they are refused (503). Requests already running keep running: their leases expire,
// other gateways may fill those slots meanwhile (oversubscription bounded by what this process was
// running), and when Redis answers again the next renewal leases them again, even above the slots,
// so every gateway counts them and the excess drains.
import type { Redis } from 'ioredis';
import { QueueFull, QueueLeft, QueueTimeout, TooManyTasks, type KeySlots } from '../admission/fair-queue.js';
import {
  Scheduler,
  type EnterOptions,
  type SchedulerOptions,
  type SchedulerSnapshot,
  type SlotQueue,
  type SlotServer,
  type Ticket,
} from '../admission/scheduler.js';
import type { RedisLink } from './redis-link.js';
import { defineSlotsScript, slotKeys } from './slots-script.js';
import { SharedSeat, addSeats, most } from './slots-seat.js';

/** A llama-server as the shared slots name it: by its URL, the same on every gateway. */
export interface SharedServer extends SlotServer {
  readonly url: string;
}

export type SlotsLog = { warn(obj: object, msg: string): void };

export interface SharedSlotsOptions extends SchedulerOptions {
  link: RedisLink;
  /** GATEWAY_REDIS_PREFIX */
  prefix: string;
  gatewayId: string;
  /** GATEWAY_SLOT_LEASE_MS */
  leaseMs: number;
  /** GATEWAY_REDIS_DOWN */
  whenDown: 'local' | 'refuse';
  /** every server, as this gateway's discovery follows them (slots, state) */
  servers: () => readonly SharedServer[];
  /** the error a request gets when Redis is down and GATEWAY_REDIS_DOWN=refuse (a 503) */
  refusal: () => Error;
  log: SlotsLog;
}

export class SharedScheduler implements SlotQueue {
  readonly #local: Scheduler;
  readonly #link: RedisLink;
  readonly #client: Redis;
  readonly #sub: Redis;
  readonly #keys: string[];
  readonly #channel: string;
  readonly #channelPrefix: string;
  readonly #gatewayId: string;
  readonly #leaseMs: number;
  readonly #keySlots: KeySlots;
  readonly #maxQueue: number;
  readonly #maxPerKey: number;
  readonly #timeoutMs: number;
  readonly #whenDown: 'local' | 'refuse';
  readonly #servers: () => readonly SharedServer[];
  readonly #refusal: () => Error;
  readonly #log: SlotsLog;
  /** every request of this process that Redis knows of (entering, waiting, running) */
  readonly #seats = new Map<string, SharedSeat>();
  /** entering or waiting */
  #waiting = 0;
  #n = 0;
  /** the servers argument (url\tslots\tstate\tweight lines), rebuilt on changed() */
  #table: string | undefined = undefined;
  #urls: string[] = [];
  readonly #tick: NodeJS.Timeout;
  #closed = false;
  /** renewals in a row that got no answer */
  #renewFailures = 0;

  constructor(opts: SharedSlotsOptions) {
    this.#local = new Scheduler(opts);
    this.#link = opts.link;
    this.#client = opts.link.client;
    defineSlotsScript(this.#client);
    this.#keys = slotKeys(opts.prefix);
    this.#channelPrefix = `${opts.prefix}{slots}:grants:`;
    this.#gatewayId = opts.gatewayId;
    this.#channel = this.#channelPrefix + opts.gatewayId;
    this.#leaseMs = opts.leaseMs;
    this.#keySlots = opts.keySlots;
    this.#maxQueue = opts.maxQueue;
    this.#maxPerKey = opts.maxQueuePerKey;
    this.#timeoutMs = opts.timeoutMs;
    this.#whenDown = opts.whenDown;
    this.#servers = opts.servers;
    this.#refusal = opts.refusal;
    this.#log = opts.log;
    // Grants come on a channel of this gateway's own (a pub/sub connection of its own).
    const sub = opts.link.duplicate();
    this.#sub = sub;
    sub.on('error', () => {}); // the link says when Redis is down
    sub.on('message', (_channel: string, message: string) => this.#onGrants(message));
    sub.on('ready', () => void sub.subscribe(this.#channel).catch(() => {}));
    this.#tick = setInterval(() => this.#renew(), Math.max(50, Math.floor(opts.leaseMs / 3)));
    this.#tick.unref();
    opts.link.onChange((state) => {
      if (state === 'up') this.#renew();
      else this.#down();
    });
  }

  get maxQueuePerKey(): number {
    return this.#maxPerKey;
  }

  get running(): number {
    let n = this.#local.running;
    for (const seat of this.#seats.values()) if (seat.state === 'running') n += seat.weight;
    return n;
  }

  get waiting(): number {
    return this.#local.waiting + this.#waiting;
  }

  get holding(): number {
    return this.#local.holding;
  }

  /** This process's requests on `server` (the other gateways' are in their own /metrics). */
  runningOn(server: SlotServer): number {
    let n = this.#local.runningOn(server);
    for (const seat of this.#seats.values()) if (seat.state === 'running' && seat.server === server) n += seat.weight;
    return n;
  }

  waitingFor(key: string): number {
    let n = this.#local.waitingFor(key);
    for (const seat of this.#seats.values()) if (seat.key === key && seat.state !== 'running') n++;
    return n;
  }

  runningFor(key: string): number {
    let n = this.#local.runningFor(key);
    for (const seat of this.#seats.values()) if (seat.key === key && seat.state === 'running') n += seat.weight;
    return n;
  }

  waitingIn(group: string): number {
    let n = this.#local.waitingIn(group);
    for (const seat of this.#seats.values()) if (seat.group === group && seat.state !== 'running') n++;
    return n;
  }

  keySlotsOf(candidates: readonly SlotServer[]): number {
    return this.#local.keySlotsOf(candidates);
  }

  /** This process's requests, shared and (while Redis was down) local ones together. */
  snapshot(): SchedulerSnapshot {
    return addSeats(this.#local.snapshot(), this.#seats.values());
  }

  enter(key: string, group: string, candidates: readonly SlotServer[], weight = 1, opts?: EnterOptions): Ticket {
    if (!this.#link.up) {
      if (this.#whenDown === 'local') return this.#local.enter(key, group, candidates, weight, opts);
      throw this.#refusal();
    }
    if (candidates.length === 0) throw new RangeError('SharedScheduler.enter: no candidate server');
    const max = most(this.#keySlots, candidates);
    if (weight > max) throw new TooManyTasks(weight, max);
    if (this.#waiting >= this.#maxQueue) throw new QueueFull('all');
    const seat = new SharedSeat(this.#onCancel, `${this.#gatewayId}|${++this.#n}`, key, group, candidates, weight, opts);
    this.#seats.set(seat.id, seat);
    this.#waiting++;
    seat.timer = setTimeout(() => {
      if (this.#leave(seat)) seat.reject(new QueueTimeout());
    }, this.#timeoutMs);
    const prefer = opts?.prefer;
    const wait = prefer === undefined || !candidates.includes(prefer) ? 0 : (opts?.preferMs ?? 0);
    // Redis has no timer: when the wait for the preferred server is over, dispatch again.
    if (wait > 0) seat.preferTimer = setTimeout(() => this.#dispatch(), wait + 1);
    this.#enterShared(seat);
    return seat;
  }

  changed(): void {
    this.#table = undefined;
    this.#local.changed();
    let waiters = false;
    for (const seat of [...this.#seats.values()]) {
      if (seat.state !== 'waiting' && seat.state !== 'entering') continue;
      const max = most(this.#keySlots, seat.candidates);
      if (seat.weight > max && this.#leave(seat)) seat.reject(new TooManyTasks(seat.weight, max));
      else waiters = true;
    }
    if (waiters) this.#dispatch();
  }

  hold(release: () => void, ms: number): void {
    this.#local.hold(release, ms);
  }

  /** Shutdown: every lease of this process is given back (best effort: else it expires). */
  close(): void {
    this.#closed = true;
    clearInterval(this.#tick);
    this.#local.close();
    for (const seat of this.#seats.values()) {
      clearTimeout(seat.timer);
      clearTimeout(seat.preferTimer);
      if (this.#link.up) this.#call('release', '', seat.id).catch(() => {});
    }
    this.#seats.clear();
    this.#sub.disconnect();
  }

  #call(op: string, caller: string, ...args: (string | number)[]): Promise<string[]> {
    return this.#client.gatewaySlots(
      ...this.#keys,
      op,
      caller,
      this.#leaseMs,
      this.#channelPrefix,
      String(this.#keySlots),
      this.#serverTable(),
      ...args,
    );
  }

  #serverTable(): string {
    if (this.#table !== undefined) return this.#table;
    const lines: string[] = [];
    const urls: string[] = [];
    for (const s of this.#servers()) {
      lines.push(`${s.url}\t${s.slots}\t${s.state}\t${s.weight}`);
      urls[s.index] = s.url;
    }
    this.#urls = urls;
    return (this.#table = lines.join('\n'));
  }

  #urlOf(server: SlotServer): string {
    this.#serverTable();
    return this.#urls[server.index] ?? '';
  }

  #enterShared(seat: SharedSeat): void {
    const o = seat.opts;
    const prefer = o?.prefer === undefined || !seat.candidates.includes(o.prefer) ? '' : this.#urlOf(o.prefer);
    const preferMs = prefer === '' ? 0 : Math.max(0, Math.round(o?.preferMs ?? 0));
    this.#call(
      'enter',
      seat.id,
      seat.id,
      seat.group,
      seat.key,
      seat.weight,
      seat.candidates.map((s) => this.#urlOf(s)).join(' '),
      prefer,
      preferMs,
      o?.front === true ? 1 : 0,
      this.#maxPerKey,
    ).then(
      (reply) => {
        if (seat.state !== 'entering' && seat.state !== 'waiting') return; // left meanwhile (its release follows), or granted
        if (reply[0] === 'granted') this.#grant(seat, reply[1] ?? '');
        else if (reply[0] === 'waiting') seat.state = 'waiting';
        else if (this.#leave(seat, false)) seat.reject(new QueueFull('key'));
      },
      () => {
        if (seat.state === 'entering' || seat.state === 'waiting') this.#fallBack(seat);
      },
    );
  }

  #grant(seat: SharedSeat, url: string): void {
    const server = seat.candidates.find((s) => this.#urlOf(s) === url) ?? seat.candidates[0]!;
    this.#unwait(seat);
    seat.run(server);
    seat.resolve({ server, release: seat.cancel });
  }

  /** Out of the waiting count and its timers. */
  #unwait(seat: SharedSeat): void {
    this.#waiting--;
    clearTimeout(seat.timer);
    clearTimeout(seat.preferTimer);
    seat.timer = seat.preferTimer = undefined;
  }

  /** A waiter leaves (deadline, client gone, refused): out of Redis too. false: it was not waiting. */
  #leave(seat: SharedSeat, tell = true): boolean {
    if (seat.state !== 'entering' && seat.state !== 'waiting') return false;
    this.#unwait(seat);
    seat.state = 'done';
    this.#seats.delete(seat.id);
    if (tell) this.#release(seat.id);
    return true;
  }

  #release(id: string): void {
    if (this.#link.up) this.#call('release', '', id).catch(() => {}); // else its lease or place expires
  }

  #dispatch(): void {
    if (this.#link.up && !this.#closed) this.#call('dispatch', '').catch(() => {});
  }

  readonly #onCancel = (seat: SharedSeat): void => this.#cancel(seat);

  #cancel(seat: SharedSeat): void {
    if (seat.state === 'local') seat.local!.cancel();
    else if (seat.state === 'running') {
      seat.state = 'done';
      this.#seats.delete(seat.id);
      this.#release(seat.id);
    } else if (this.#leave(seat)) seat.reject(new QueueLeft());
  }

  /** Grants published for this gateway: `id\turl` lines. */
  #onGrants(message: string): void {
    for (const line of message.split('\n')) {
      if (line === '') continue;
      const tab = line.indexOf('\t');
      const seat = this.#seats.get(line.slice(0, tab));
      if (seat !== undefined && (seat.state === 'entering' || seat.state === 'waiting')) this.#grant(seat, line.slice(tab + 1));
    }
  }

  /** Every lease/3: renew this process's leases and waiters, hear of missed grants, re-enter lost waiters. */
  #renew(): void {
    if (this.#closed || this.#seats.size === 0 || !this.#link.up) return;
    const running: string[] = [];
    const waiting: string[] = [];
    for (const seat of this.#seats.values()) {
      if (seat.state === 'running') running.push(`${seat.id}\t${this.#urlOf(seat.server!)}\t${seat.group}\t${seat.key}\t${seat.weight}`);
      else if (seat.state === 'waiting') waiting.push(seat.id);
    }
    this.#call('renew', '', running.join('\n'), waiting.join('\n')).then(
      (lines) => {
        this.#renewFailures = 0;
        for (const line of lines) {
          const [id = '', what, url = ''] = line.split('\t');
          const seat = this.#seats.get(id);
          if (seat === undefined || seat.state !== 'waiting') continue;
          if (what === 'granted') this.#grant(seat, url);
          else {
            // Its place expired (Redis was out of reach for longer than a lease): in line again.
            seat.state = 'entering';
            this.#enterShared(seat);
          }
        }
      },
      () => {
        // No answer within the command timeout while the connection stays open (a partition
        // without a reset, a hung Redis): the link stays up, no grant comes, and the waiters' places
        // expire in Redis. Twice in a row: they go on as if Redis were down (local, or refused),
        // instead of waiting out the queue deadline. Leases expire by themselves.
        if (++this.#renewFailures === 2) this.#down();
      },
    );
  }

  /** Redis went down: waiters go on in this process (local) or are refused; running requests run on. */
  #down(): void {
    if (this.#closed) return;
    let moved = 0;
    for (const seat of [...this.#seats.values()])
      if (seat.state === 'entering' || seat.state === 'waiting') {
        this.#fallBack(seat);
        moved++;
      }
    this.#log.warn(
      { redis: 'down', waiters: moved, whenDown: this.#whenDown },
      this.#whenDown === 'local'
        ? 'llama-server slots are counted per gateway process until Redis is back (GATEWAY_REDIS_DOWN=local): several gateways may send more than the slots, llama-server queues the excess'
        : 'requests that need a llama-server slot are refused (503) until Redis is back (GATEWAY_REDIS_DOWN=refuse)',
    );
  }

  /** A waiter Redis cannot serve: on in the process-local scheduler, or refused. */
  #fallBack(seat: SharedSeat): void {
    if (!this.#leave(seat)) return;
    if (this.#whenDown === 'refuse') {
      seat.reject(this.#refusal());
      return;
    }
    let ticket: Ticket;
    try {
      ticket = this.#local.enter(seat.key, seat.group, seat.candidates, seat.weight, seat.opts);
    } catch (err) {
      seat.reject(err as Error);
      return;
    }
    seat.local = ticket;
    seat.state = 'local';
    ticket.admitted.then((a) => seat.resolve({ server: a.server, release: seat.cancel }), seat.reject);
  }
}
