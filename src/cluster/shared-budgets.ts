// Token budgets counted in Redis (GATEWAY_REDIS_URL), so N gateways enforce a key's (and its end
// users') tokens per calendar day/week/month exactly as one would (issue 17). The same rules as
// admission/budgets.ts (process-local, still used without Redis and while it is down), in Lua
// (budget-scripts.ts): one round trip admits (every budget of the key and its user checked; the
// request's hold added), one settles a usage record (hold → real tokens; alerts for a level crossed,
// marked with SET NX so one gateway sends each).
//
// A period's counter starts from the usage table, as in memory: the first admission of a period
// that finds it missing reads the seed (possibly async: PostgreSQL) and calls again with it, and
// the script creates it (a second round trip, once per period and counter; gateways racing there
// all read, the first call to arrive creates it, the others' seeds are dropped). A settle never
// creates a key's counter (its record is in the table the seed reads); an end user's is created at
// their first settled tokens, from the seed their admission read: a made-up user id that only gets
// refused leaves nothing behind.
import type { Redis, Result } from 'ioredis';
import type { Alerts } from '../alerts/events.js';
import {
  headersOf,
  refusalOf,
  stateOf,
  type BudgetCheck,
  type BudgetCount,
  type BudgetKey,
  type BudgetState,
  type Seeder,
  type UserSeeder,
} from '../admission/budgets.js';
import { BUDGET_PERIODS, type BudgetMode, type KeyBudgets, type PeriodBudgets } from '../keys/key-budgets.js';
import type { Calendar } from '../usage/calendar.js';
import { BUDGET_ADMIT, BUDGET_RENEW, BUDGET_SETTLE } from './budget-scripts.js';

declare module 'ioredis' {
  interface RedisCommander<Context> {
    gatewayBudgetAdmit(numKeys: number, ...args: (string | number)[]): Result<number[], Context>;
    gatewayBudgetSettle(numKeys: number, ...args: (string | number)[]): Result<number[], Context>;
    gatewayBudgetRenew(numKeys: number, ...args: (string | number)[]): Result<number, Context>;
  }
}

/** A counter lives this long past its period's end: a request admitted at 23:59 settles after midnight. */
export const COUNTER_MARGIN_MS = 3_600_000;
/** An end user's seeds (one grouped read per key and period) are read again after this. */
const USER_SEEDS_MS = 60_000;
/** Rounds of BUDGET_ADMIT at most: a counter seeded, then (rarely) one that expired meanwhile. */
const MAX_ROUNDS = 3;

/** One budget that applies to a request: its Redis counter and what the script said of it. */
interface Line extends BudgetCount {
  readonly counter: string;
  /** its seed, when this admission read it (-1: not read); a user's counter is made from it at settle */
  seed: number;
}

interface Hold {
  readonly key: BudgetKey;
  readonly mode: BudgetMode;
  readonly member: string;
  /** what the hash holds for it: `tokens:user` */
  readonly value: string;
  readonly at: number;
  readonly lines: readonly Line[];
}

export interface SharedBudgetsOptions {
  readonly client: Redis;
  readonly prefix: string;
  readonly gatewayId: string;
  readonly leaseMs: number;
  readonly calendar: Calendar;
  /** GATEWAY_BUDGET_WARN_AT, ascending */
  readonly warnAt: readonly number[];
  /** where a counter starts (null: no usage table, from 0) */
  readonly seed: Seeder | null;
  readonly seedUsers?: UserSeeder | null | undefined;
  readonly alerts: () => Alerts;
  /** a command that failed outside admission (settle, release, renew): logged, never thrown */
  readonly onError?: (err: Error, what: string) => void;
}

export class SharedBudgets {
  readonly calendar: Calendar;
  readonly #client: Redis;
  readonly #prefix: string;
  readonly #gatewayId: string;
  readonly #leaseMs: number;
  readonly #warnAt: readonly number[];
  readonly #seed: Seeder | null;
  readonly #seedUsers: UserSeeder | null;
  readonly #alerts: () => Alerts;
  readonly #onError: (err: Error, what: string) => void;
  readonly #holds = new Map<string, Hold>();
  /** keys with budgets seen by admission: a record without a hold (a light call) still counts */
  readonly #keys = new Map<string, BudgetKey>();
  /** seeds being read here, by counter: one read per counter however many requests wait */
  readonly #reading = new Map<string, Promise<number>>();
  readonly #userSeeds = new Map<string, { readonly at: number; readonly users: Promise<Map<string, number>> }>();
  #renewal: NodeJS.Timeout | undefined;

  constructor(opts: SharedBudgetsOptions) {
    this.calendar = opts.calendar;
    this.#client = opts.client;
    this.#prefix = opts.prefix;
    this.#gatewayId = opts.gatewayId;
    this.#leaseMs = opts.leaseMs;
    this.#warnAt = opts.warnAt;
    this.#seed = opts.seed;
    this.#seedUsers = opts.seedUsers ?? null;
    this.#alerts = opts.alerts;
    this.#onError = opts.onError ?? (() => {});
    this.#client.defineCommand('gatewayBudgetAdmit', { lua: BUDGET_ADMIT });
    this.#client.defineCommand('gatewayBudgetSettle', { lua: BUDGET_SETTLE });
    this.#client.defineCommand('gatewayBudgetRenew', { lua: BUDGET_RENEW });
  }

  /** Renews this process's holds every lease/3 until close(). */
  start(): void {
    if (this.#renewal !== undefined) return;
    this.#renewal = setInterval(() => void this.renew(), Math.max(100, Math.floor(this.#leaseMs / 3)));
    this.#renewal.unref();
  }

  #key(keyId: string, what: string): string {
    return `${this.#prefix}bud:{${keyId}}:${what}`;
  }

  /** The budgets that apply at `now`: the key's, then its user's. */
  #lines(keyId: string, b: KeyBudgets, user: string | null, now: number): Line[] {
    const out: Line[] = [];
    const add = (limits: PeriodBudgets, who: string | null): void => {
      for (const period of BUDGET_PERIODS) {
        const limit = limits[period];
        if (typeof limit !== 'number') continue;
        const { start, end } = this.calendar.bounds(period, now);
        const counter = this.#key(keyId, who === null ? `${period}:${start}` : `${period}:${start}:u:${who}`);
        out.push({ user: who, period, limit, end, counter, seed: -1, used: 0, held: 0 });
      }
    };
    add(b, null);
    if (user !== null && b.per_user != null) add(b.per_user, user);
    return out;
  }

  /**
   * Checks a key's budgets (and its end user's) in Redis; when no hard one is spent, holds `tokens`
   * (0: none) against each until settle() or release(). `enforce` false: never refused (a model
   * list). Rejects when Redis does not answer or a seed cannot be read.
   */
  async admit(key: BudgetKey, user: string | null, requestId: string, tokens: number, enforce = true): Promise<BudgetCheck> {
    this.#keys.set(key.id, key);
    const now = Date.now();
    const lines = this.#lines(key.id, key.budgets!, user, now);
    return this.#run(key, user, requestId, tokens, enforce, now, lines);
  }

  /** The key's own budgets now, as every gateway counts them (seeded when needed): what the admin API shows. */
  async state(key: BudgetKey): Promise<BudgetState> {
    const b = key.budgets!;
    const now = Date.now();
    const lines = this.#lines(key.id, b, null, now);
    await this.#run(key, null, 'state', 0, false, now, lines);
    return stateOf(this.calendar, b, now, (period) => lines.find((l) => l.period === period)!);
  }

  async #run(
    key: BudgetKey,
    user: string | null,
    requestId: string,
    tokens: number,
    enforce: boolean,
    now: number,
    lines: Line[],
  ): Promise<BudgetCheck> {
    const b = key.budgets!;
    if (lines.length === 0) return { refusal: undefined, headers: {} };
    const mode = b.mode ?? 'hard';
    const member = `${this.#gatewayId}|${requestId}`;
    const hold = this.#holds.has(requestId) ? 0 : tokens;
    for (let round = 1; ; round++) {
      const args: (string | number)[] = [this.#key(key.id, 'held'), this.#key(key.id, 'heldtok')];
      for (const l of lines) args.push(l.counter);
      args.push(this.#leaseMs, member, hold, enforce && mode === 'hard' ? 1 : 0, user ?? '', lines.length);
      for (const l of lines) args.push(l.limit, l.user === null ? 0 : 1, l.end + COUNTER_MARGIN_MS, l.seed);
      const r = await this.#client.gatewayBudgetAdmit(2 + lines.length, ...args);
      if (r[0] === -1) {
        if (round === MAX_ROUNDS) throw new Error('budget counters kept vanishing');
        await Promise.all(r.slice(1).map(async (i) => (lines[i - 1]!.seed = await this.#seedOf(key.id, lines[i - 1]!))));
        continue;
      }
      const [spent = 0, keyHeld = 0, userHeld = 0] = r;
      lines.forEach((l, i) => {
        l.used = r[3 + i] ?? 0;
        l.held = l.user === null ? keyHeld : userHeld;
      });
      if (spent > 0) {
        const l = lines[spent - 1]!;
        // the refusal says what was held before this request (it holds nothing)
        return { refusal: refusalOf(this.calendar, l, now), headers: headersOf(lines) };
      }
      if (hold > 0) this.#holds.set(requestId, { key, mode, member, value: `${hold}:${user ?? ''}`, at: now, lines });
      return { refusal: undefined, headers: headersOf(lines) };
    }
  }

  /** A counter's seed: the usage table's tokens since its period's start (read once here at a time). */
  #seedOf(keyId: string, l: Line): Promise<number> {
    let reading = this.#reading.get(l.counter);
    if (reading === undefined) {
      const start = this.calendar.bounds(l.period, l.end - 1).start;
      reading = (l.user === null ? this.#keySeed(keyId, start) : this.#userSeed(keyId, start, l.user)).finally(() =>
        this.#reading.delete(l.counter),
      );
      this.#reading.set(l.counter, reading);
    }
    return reading;
  }

  async #keySeed(keyId: string, start: number): Promise<number> {
    return this.#seed === null ? 0 : this.#seed(keyId, start, null);
  }

  /** An end user's tokens since `start`: from one grouped read per key and period (kept a minute). */
  async #userSeed(keyId: string, start: number, user: string): Promise<number> {
    if (this.#seedUsers === null) return this.#seed === null ? 0 : this.#seed(keyId, start, user);
    const name = `${keyId}:${start}`;
    const now = Date.now();
    let seeds = this.#userSeeds.get(name);
    if (seeds === undefined || seeds.at + USER_SEEDS_MS < now) {
      const users = Promise.resolve(this.#seedUsers(keyId, start));
      users.catch(() => this.#userSeeds.delete(name));
      seeds = { at: now, users };
      this.#userSeeds.set(name, seeds);
    }
    return (await seeds.users).get(user) ?? 0;
  }

  /**
   * A usage record: its request's hold (if held here) is replaced by the tokens it used, in the
   * periods it was admitted in; a record without a hold counts on the counters that exist. One call.
   */
  settle(requestId: string, keyId: string, user: string | null, ts: number, tokens: number): Promise<void> {
    const hold = this.#holds.get(requestId);
    let lines: readonly Line[];
    let key: BudgetKey | undefined;
    let mode: BudgetMode;
    if (hold !== undefined) {
      this.#holds.delete(requestId);
      ({ key, mode, lines } = hold);
    } else {
      key = this.#keys.get(keyId);
      if (tokens <= 0 || key === undefined || key.budgets === null) return Promise.resolve();
      mode = key.budgets.mode ?? 'hard';
      lines = this.#lines(keyId, key.budgets, user, ts);
      if (lines.length === 0) return Promise.resolve();
    }
    const args: (string | number)[] = [this.#key(key.id, 'held'), this.#key(key.id, 'heldtok')];
    for (const l of lines) args.push(l.counter);
    args.push(hold?.member ?? '', Math.max(0, tokens), mode === 'hard' ? 1 : 0, lines.length, this.#warnAt.length, ...this.#warnAt);
    for (const l of lines) args.push(l.limit, l.end + COUNTER_MARGIN_MS, l.user === null ? -1 : l.seed);
    return this.#client.gatewayBudgetSettle(2 + lines.length, ...args).then(
      (r) => this.#alert(key, mode, lines, r),
      (err: Error) => this.#onError(err, 'budget settle'),
    );
  }

  /** The alerts the settle script says this gateway is the one to send. */
  #alert(key: BudgetKey, mode: BudgetMode, lines: readonly Line[], r: number[]): void {
    lines.forEach((l, i) => {
      const [used = -1, warned = 0, exhausted = 0] = r.slice(3 * i, 3 * i + 3);
      if (used < 0 || (warned === 0 && exhausted === 0)) return;
      const alerts = this.#alerts();
      const base = { key: { id: key.id, name: key.name }, ...(l.user === null ? {} : { user: l.user }), period: l.period };
      const resetsAt = new Date(l.end).toISOString();
      this.#warnAt.forEach((percent, j) => {
        if ((warned & (1 << j)) !== 0)
          alerts.emit({ type: 'budget.warning', ...base, mode, percent, used, limit: l.limit, resets_at: resetsAt });
      });
      if (exhausted === 1) alerts.emit({ type: 'budget.exhausted', ...base, used, limit: l.limit, resets_at: resetsAt });
    });
  }

  /** Gives a request's hold back without counting anything (no usage record to settle with). */
  release(requestId: string): Promise<void> {
    const hold = this.#holds.get(requestId);
    if (hold === undefined) return Promise.resolve();
    this.#holds.delete(requestId);
    return this.#client
      .multi()
      .zrem(this.#key(hold.key.id, 'held'), hold.member)
      .hdel(this.#key(hold.key.id, 'heldtok'), hold.member)
      .exec()
      .then(
        () => undefined,
        (err: Error) => this.#onError(err, 'budget release'),
      );
  }

  /** This process's live holds. */
  get live(): number {
    return this.#holds.size;
  }

  /** Renews every hold of this process: one call. */
  async renew(): Promise<void> {
    if (this.#holds.size === 0) return;
    const keys: string[] = [];
    const members: string[] = [];
    for (const hold of this.#holds.values()) {
      keys.push(this.#key(hold.key.id, 'held'), this.#key(hold.key.id, 'heldtok'));
      members.push(hold.member, hold.value);
    }
    try {
      await this.#client.gatewayBudgetRenew(keys.length, ...keys, this.#leaseMs, ...members);
    } catch (err) {
      this.#onError(err as Error, 'budget renew');
    }
  }

  /** Forgets holds older than `maxAgeMs` (a request whose record never came) and old user seeds. */
  sweep(now: number, maxAgeMs: number): void {
    for (const [requestId, hold] of this.#holds) if (hold.at + maxAgeMs < now) void this.release(requestId);
    for (const [name, seeds] of this.#userSeeds) if (seeds.at + USER_SEEDS_MS < now) this.#userSeeds.delete(name);
  }

  /** Stops renewing and gives back what this process still holds (best effort). */
  async close(): Promise<void> {
    clearInterval(this.#renewal);
    this.#renewal = undefined;
    if (this.#holds.size === 0) return;
    const m = this.#client.multi();
    for (const hold of this.#holds.values())
      m.zrem(this.#key(hold.key.id, 'held'), hold.member).hdel(this.#key(hold.key.id, 'heldtok'), hold.member);
    this.#holds.clear();
    await m.exec().catch(() => undefined);
  }
}
