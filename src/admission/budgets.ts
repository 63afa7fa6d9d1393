// Token budgets over calendar periods (issue #15): a key's tokens per day / week / month in the
// operator's time zone (usage/calendar.ts), and the same per end user under the key. Counted the way
// the per-minute limits count (limits.ts): admission holds what a request may cost, its usage record
// settles the hold with llama-server's real numbers. A hard budget refuses a request while used +
// held ≥ the budget, so requests running at once overshoot it by at most what the last one admitted
// really uses (its hold is an upper bound); a soft one never refuses, it only warns.
//
// Each period's count is a named counter in the CounterStore whose name carries the period's start
// (and whose expiry is its end): a new period is a new counter, so nothing carries over and nothing
// is counted twice across a boundary. A request is billed to the period it started in (its record's
// ts is its start: the usage table's SUM over ts ≥ the period's start agrees).
//
// After a restart a counter starts from the usage table (SUM of prompt + completion tokens since the
// period's start, index usage_key_ts), once per key (and user) and period, on its first request:
// the seed adds the records the recorder still holds in memory (written within a second), and the
// records that arrive before the seed are left to it (no counter yet: not added), so none is missed
// or counted twice. Warning levels the seed already passed are taken as sent: a restart does not
// repeat a month's alerts.
//
// End user ids are the client's to choose: a made-up id must cost neither a query nor memory. The
// users under a key start from ONE grouped query per key and period (kept until it ends; records
// for a user without a counter are added there), and a user's counter is made only when a request
// of theirs settles real tokens: refusals and model lists with a new id each leave nothing behind.
//
// Over 400 lines on purpose: holds, seeds (sync or read later: BudgetCheck.pending), settling and
// the alerts are one set of rules over one set of counters; split, a seed rule would be read apart
// from the check it feeds.
import type { Alerts } from '../alerts/events.js';
import { BUDGET_PERIODS, type BudgetMode, type BudgetPeriod, type KeyBudgets, type PeriodBudgets } from '../keys/key-budgets.js';
import { localIso, type Calendar } from '../usage/calendar.js';
import { BUDGET_EXCEEDED, type GatewayError } from '../errors.js';
import type { UsageRecorder } from '../usage/recorder.js';
import type { UsageStore } from '../usage/store.js';
import type { CounterStore } from './counters.js';

/**
 * Tokens a key (or one end user under it) used since `since`: the usage table and records not yet
 * written. SQLite answers at once; a usage table that answers later (PostgreSQL) gives a Promise,
 * and admission waits for it (BudgetCheck.pending) before it decides.
 */
export type Seeder = (keyId: string, since: number, user: string | null) => number | Promise<number>;

/** Every end user's tokens under a key since `since` (users with none may be left out); at once or later. */
export type UserSeeder = (keyId: string, since: number) => Map<string, number> | Promise<Map<string, number>>;

/** The gateway's seeder: the usage table plus the recorder's unwritten records (null: no usage table). */
export function seederFor(store: UsageStore | null, recorder: UsageRecorder | null): Seeder | null {
  if (store === null) return null;
  return (keyId, since, user) => store.tokensSince(keyId, since, user) + (recorder?.pendingTokens(keyId, since, user) ?? 0);
}

/** The gateway's per-user seeder: one grouped query per key and period, plus the unwritten records. */
export function userSeederFor(store: UsageStore | null, recorder: UsageRecorder | null): UserSeeder | null {
  if (store === null) return null;
  return (keyId, since) => {
    const users = store.tokensByUserSince(keyId, since);
    if (recorder !== null) for (const [u, n] of recorder.pendingByUser(keyId, since)) users.set(u, (users.get(u) ?? 0) + n);
    return users;
  };
}

/** The 429 for a spent hard budget: whose (the key's, or its end user's), the period, and its reset. */
export function budgetError(r: BudgetRefusal): GatewayError {
  const who = r.user === null ? "This API key's" : `End user "${r.user.slice(0, 128)}"'s (under this API key)`;
  return BUDGET_EXCEEDED(who, r.limit, r.period, r.tz, r.used, r.held, r.resetsLocal);
}

export interface BudgetKey {
  readonly id: string;
  readonly name: string;
  readonly budgets: KeyBudgets | null;
}

/** One budget that applies to a request: the key's or its user's, for one period. */
interface Line {
  readonly user: string | null;
  readonly period: BudgetPeriod;
  readonly limit: number;
  readonly end: number;
  /** the counter's name: key, period, the period's start, and the user */
  readonly name: string;
  /** where a user's count starts when their counter is made (null: the key's own, counting already) */
  readonly seeds: UserSeeds | null;
  used: number;
  held: number;
}

/** A spent hard budget, as the 429 says it. */
export interface BudgetRefusal {
  readonly user: string | null;
  readonly period: BudgetPeriod;
  readonly limit: number;
  readonly used: number;
  readonly held: number;
  readonly resetsAt: number;
  /** its reset in the operator's zone, for people */
  readonly resetsLocal: string;
  readonly tz: string;
  /** seconds until it resets (Retry-After) */
  readonly retryAfter: number;
}

/** What admission learns: a refusal, or the budget with the least left (for the x-budget-* headers). */
export interface BudgetCheck {
  readonly refusal: BudgetRefusal | undefined;
  readonly headers: Record<string, string>;
  /**
   * A count this check needs is still being read from the usage table (an async Seeder): nothing
   * was decided or held; admit again once it settles (it rejects when the read failed).
   */
  readonly pending?: Promise<void>;
}

/** One period of a key's budget state (admin API, `keys show`, the console). */
interface PeriodState {
  readonly period: BudgetPeriod;
  readonly limit: number;
  readonly used: number;
  readonly held: number;
  readonly remaining: number;
  readonly resets_at: string;
}

export interface BudgetState {
  readonly tz: string;
  readonly mode: BudgetMode;
  readonly periods: PeriodState[];
  /** the budgets each end user under the key has (their use is per user: `llm-gateway usage --by user`) */
  readonly per_user: PeriodBudgets | null;
}

/** Users under a key in one period without a counter yet: their tokens so far (complete: absent = 0). */
interface UserSeeds {
  readonly start: number;
  readonly end: number;
  readonly complete: boolean;
  readonly users: Map<string, number>;
}

interface Hold {
  readonly keyId: string;
  readonly keyName: string;
  readonly mode: BudgetMode;
  readonly tokens: number;
  readonly at: number;
  readonly lines: readonly Line[];
}

export interface BudgetOptions {
  readonly counters: CounterStore;
  readonly calendar: Calendar;
  /** GATEWAY_BUDGET_WARN_AT: percentages, ascending */
  readonly warnAt: readonly number[];
  /** null: no usage table (nothing to start from) */
  readonly seed: Seeder | null;
  /** every user of a key at once (else each user is asked from `seed`) */
  readonly seedUsers?: UserSeeder | null | undefined;
  /** read at each event: the alerts plugin may decorate after admission is built */
  readonly alerts: () => Alerts;
}

export class Budgets {
  readonly calendar: Calendar;
  readonly #counters: CounterStore;
  readonly #warnAt: readonly number[];
  readonly #seed: Seeder | null;
  readonly #seedUsers: UserSeeder | null;
  /** per key, period and its start: the users not counting yet (see the header) */
  readonly #userSeeds = new Map<string, UserSeeds>();
  readonly #alerts: () => Alerts;
  readonly #holds = new Map<string, Hold>();
  /** keys with budgets seen by admission, by id: a record without a hold (a light call) still counts */
  readonly #keys = new Map<string, BudgetKey>();
  /** seeds still being read (async Seeder), by the counter (or user seeds) they start */
  readonly #seeding = new Map<string, Promise<void>>();

  constructor(opts: BudgetOptions) {
    this.calendar = opts.calendar;
    this.#counters = opts.counters;
    this.#warnAt = opts.warnAt;
    this.#seed = opts.seed;
    this.#seedUsers = opts.seedUsers ?? null;
    this.#alerts = opts.alerts;
  }

  /**
   * Admission's check for a key with budgets: refused when a hard budget (the key's, or its user's)
   * is spent; else `tokens` are held against each of them until settle() or release(). `enforce`
   * false (a model list, a token count): never refused, only told what is left.
   */
  admit(key: BudgetKey, user: string | null, requestId: string, tokens: number, now: number, enforce = true): BudgetCheck {
    const b = key.budgets!;
    this.#keys.set(key.id, key);
    const waits: Promise<void>[] = [];
    const lines = this.#lines(key.id, b, user, now, true, waits);
    if (waits.length > 0) return { refusal: undefined, headers: {}, pending: Promise.all(waits).then(() => undefined) };
    const mode = b.mode ?? 'hard';
    if (mode === 'hard' && enforce) {
      let spent: Line | undefined;
      for (const l of lines) if (l.used + l.held >= l.limit && (spent === undefined || l.end > spent.end)) spent = l;
      if (spent !== undefined) return { refusal: this.#refusal(spent, now), headers: headersOf(lines) };
    }
    if (tokens > 0 && lines.length > 0 && !this.#holds.has(requestId)) {
      this.#holds.set(requestId, { keyId: key.id, keyName: key.name, mode, tokens, at: now, lines });
      for (const l of lines) {
        this.#counters.adjust(`held:${l.name}`, tokens);
        l.held += tokens;
      }
    }
    return { refusal: undefined, headers: headersOf(lines) };
  }

  /**
   * A usage record arrived: its request's hold is replaced by what it used, in the periods it was
   * admitted in. A record with no hold (a light call, a refusal) counts where a counter is running.
   */
  settle(requestId: string, keyId: string, user: string | null, ts: number, tokens: number): void {
    const hold = this.#holds.get(requestId);
    if (hold !== undefined) {
      this.#release(requestId, hold);
      if (tokens > 0) for (const l of hold.lines) this.#add(hold.keyId, hold.keyName, hold.mode, l, tokens);
      return;
    }
    const key = this.#keys.get(keyId);
    if (tokens <= 0 || key === undefined || key.budgets === null) return;
    for (const l of this.#lines(key.id, key.budgets, user, ts, false)) {
      // A user without a counter yet: theirs when it is made (a seed that did not know them knew the rest).
      if (l.seeds !== null && this.#counters.value(l.name, ts) === undefined) {
        if (l.seeds.complete || l.seeds.users.has(l.user!)) l.seeds.users.set(l.user!, (l.seeds.users.get(l.user!) ?? 0) + tokens);
      } else this.#add(key.id, key.name, key.budgets.mode ?? 'hard', l, tokens);
    }
  }

  /** Gives a request's hold back without counting anything (no usage to settle with). */
  release(requestId: string): void {
    const hold = this.#holds.get(requestId);
    if (hold !== undefined) this.#release(requestId, hold);
  }

  /** Forgets holds older than `maxAgeMs` (a request whose record never came: a safety net). */
  sweep(now: number, maxAgeMs: number): void {
    for (const [id, hold] of this.#holds) if (hold.at + maxAgeMs < now) this.#release(id, hold);
    for (const [name, seeds] of this.#userSeeds) if (seeds.end + maxAgeMs < now) this.#userSeeds.delete(name);
  }

  /** The key's own budgets now: used (seeded when needed), held, remaining, reset per period. */
  state(keyId: string, b: KeyBudgets, now: number): BudgetState {
    const lines = this.#lines(
      keyId,
      { day: b.day ?? null, week: b.week ?? null, month: b.month ?? null, mode: b.mode ?? 'hard' },
      null,
      now,
    );
    return stateOf(this.calendar, b, now, (period) => lines.find((l) => l.period === period)!);
  }

  #release(requestId: string, hold: Hold): void {
    this.#holds.delete(requestId);
    for (const l of hold.lines) this.#counters.adjust(`held:${l.name}`, -hold.tokens);
  }

  /**
   * The budgets that apply at `now` with their counts. `seed` false: only the key's whose counter
   * runs (a record that comes before its counter is the seed's to count), and every user's (whose
   * records before their counter go to the period's user seeds).
   */
  #lines(keyId: string, b: KeyBudgets, user: string | null, now: number, seed = true, waits: Promise<void>[] = []): Line[] {
    const out: Line[] = [];
    const add = (limits: PeriodBudgets, who: string | null): void => {
      for (const period of BUDGET_PERIODS) {
        const limit = limits[period];
        if (typeof limit !== 'number') continue;
        const { start, end } = this.calendar.bounds(period, now);
        const base = `budget:${keyId}:${period}:${start}`;
        const name = who === null ? base : `${base}:user:${who}`;
        let used = this.#counters.value(name, now);
        let seeds: UserSeeds | null = null;
        if (who !== null) {
          // An end user: counted from the period's user seeds until a request of theirs settles.
          const all = this.#userSeedsOf(base, keyId, start, end, waits);
          if (all === null && used === undefined) continue; // being read: admission waits (`waits`)
          seeds = all;
          if (used === undefined) used = this.#userSeed(seeds!, keyId, who, waits) ?? 0;
        } else if (used === undefined) {
          if (!seed) continue;
          const mode = b.mode ?? 'hard';
          const from =
            this.#seed === null
              ? 0
              : this.#seedOf(
                  name,
                  () => this.#seed!(keyId, start, who),
                  waits,
                  (v) =>
                    this.#counters.value(name, now) === undefined &&
                    this.#markPassed(name, this.#counters.init(name, v, end), limit, mode, end),
                );
          if (from === undefined) {
            // Still being read (an async Seeder): admission waits; a state() shows 0 meanwhile.
            out.push({ user: who, period, limit, end, name, seeds, used: 0, held: 0 });
            continue;
          }
          used = this.#counters.init(name, from, end);
          this.#markPassed(name, used, limit, mode, end);
        }
        out.push({ user: who, period, limit, end, name, seeds, used, held: this.#counters.gauge(`held:${name}`) });
      }
    };
    add(b, null);
    if (user !== null && b.per_user != null) add(b.per_user, user);
    return out;
  }

  /**
   * A seed's value now, or undefined while it is being read (its promise joins `waits`; once it
   * settles, the next call reads it again from the counter or the seeds it filled in).
   */
  #seedOf<T>(name: string, read: () => T | Promise<T>, waits: Promise<void>[], then: (value: T) => unknown): T | undefined {
    const running = this.#seeding.get(name);
    if (running !== undefined) {
      waits.push(running);
      return undefined;
    }
    const value = read();
    if (!(value instanceof Promise)) return value;
    const done = value.then(
      (v) => {
        this.#seeding.delete(name);
        then(v);
      },
      (err: unknown) => {
        this.#seeding.delete(name);
        throw err;
      },
    );
    done.catch(() => {}); // a state() does not wait: the one that does hears of a failure
    this.#seeding.set(name, done);
    waits.push(done);
    return undefined;
  }

  /** The users under a key in one period not counting yet (one grouped seed per key and period); null while being read. */
  #userSeedsOf(base: string, keyId: string, start: number, end: number, waits: Promise<void>[]): UserSeeds | null {
    let seeds = this.#userSeeds.get(base);
    if (seeds === undefined) {
      if (this.#seedUsers === null) seeds = { start, end, complete: this.#seed === null, users: new Map() };
      else {
        const users = this.#seedOf(
          base,
          () => this.#seedUsers!(keyId, start),
          waits,
          (m) => this.#userSeeds.set(base, { start, end, complete: true, users: m }),
        );
        if (users === undefined) return null;
        seeds = { start, end, complete: true, users };
      }
      this.#userSeeds.set(base, seeds);
    }
    return seeds;
  }

  /**
   * A user's tokens in a period before their counter (without a UserSeeder: asked once from the
   * Seeder); undefined while being read.
   */
  #userSeed(seeds: UserSeeds, keyId: string, user: string, waits: Promise<void>[] = []): number | undefined {
    const known = seeds.users.get(user);
    if (known !== undefined || seeds.complete) return known ?? 0;
    const used = this.#seedOf(
      `${keyId}:${seeds.start}:user:${user}`,
      () => this.#seed!(keyId, seeds.start, user),
      waits,
      (v) => seeds.users.set(user, v),
    );
    if (used !== undefined) seeds.users.set(user, used);
    return used;
  }

  /** Counts `tokens` on a budget's counter and sends the alerts a level crossed calls for. */
  #add(keyId: string, keyName: string, mode: BudgetMode, l: Line, tokens: number): void {
    if (l.seeds !== null && this.#counters.value(l.name, l.end - 1) === undefined) {
      // A user's first settled tokens this period: their counter starts from the seed, which forgets them.
      const start = this.#userSeed(l.seeds, keyId, l.user!) ?? 0;
      l.seeds.users.delete(l.user!);
      this.#markPassed(l.name, this.#counters.init(l.name, start, l.end), l.limit, mode, l.end);
    }
    const used = this.#counters.addUntil(l.name, tokens, l.end);
    const before = used - tokens;
    const alerts = this.#alerts();
    const base = { key: { id: keyId, name: keyName }, ...(l.user === null ? {} : { user: l.user }), period: l.period };
    const resetsAt = new Date(l.end).toISOString();
    for (const percent of this.#warnAt) {
      // A hard budget's 100 % (and beyond) is its exhaustion, said once below.
      if (mode === 'hard' && percent >= 100) break;
      const level = (l.limit * percent) / 100;
      if (used >= level && before < level && this.#first(`${l.name}:warn:${percent}`, l.end))
        alerts.emit({ type: 'budget.warning', ...base, mode, percent, used, limit: l.limit, resets_at: resetsAt });
    }
    if (mode === 'hard' && used >= l.limit && this.#first(`${l.name}:exhausted`, l.end))
      alerts.emit({ type: 'budget.exhausted', ...base, used, limit: l.limit, resets_at: resetsAt });
  }

  /** Levels a freshly seeded count has already passed: taken as sent (before the restart). */
  #markPassed(name: string, used: number, limit: number, mode: BudgetMode, end: number): void {
    for (const percent of this.#warnAt) if (used >= (limit * percent) / 100) this.#first(`${name}:warn:${percent}`, end);
    if (mode === 'hard' && used >= limit) this.#first(`${name}:exhausted`, end);
  }

  /** True the first time `name` is asked in its period (a counter, so several gateways share it). */
  #first(name: string, end: number): boolean {
    return this.#counters.addUntil(`alert:${name}`, 1, end) === 1;
  }

  #refusal(l: Line, now: number): BudgetRefusal {
    return refusalOf(this.calendar, l, now);
  }
}

/** One budget's count as the 429 and the x-budget-* headers need it (here, or from Redis: cluster/shared-budgets.ts). */
export type BudgetCount = Pick<Line, 'user' | 'period' | 'limit' | 'end' | 'used' | 'held'>;

/** The refusal for a spent budget. */
export function refusalOf(calendar: Calendar, l: BudgetCount, now: number): BudgetRefusal {
  return {
    user: l.user,
    period: l.period,
    limit: l.limit,
    used: l.used,
    held: l.held,
    resetsAt: l.end,
    resetsLocal: localIso(calendar, l.end),
    tz: calendar.tz,
    retryAfter: Math.max(1, Math.ceil((l.end - now) / 1000)),
  };
}

/** x-budget-* headers for the budget with the fewest tokens left (ties: the one that resets last). */
export function headersOf(lines: readonly BudgetCount[]): Record<string, string> {
  let tight: BudgetCount | undefined;
  let left = Infinity;
  for (const l of lines) {
    const r = Math.max(0, l.limit - l.used - l.held);
    if (r < left || (r === left && tight !== undefined && l.end > tight.end)) {
      tight = l;
      left = r;
    }
  }
  if (tight === undefined) return {};
  return {
    'x-budget-period': tight.period,
    'x-budget-scope': tight.user === null ? 'key' : 'user',
    'x-budget-limit-tokens': String(tight.limit),
    'x-budget-remaining-tokens': String(left),
    'x-budget-reset': new Date(tight.end).toISOString(),
  };
}

/**
 * A key's budget state from counts per period: the gateway's own (Budgets.state) or, in another
 * process (`keys show`, `keys list`), the usage table's.
 */
export function stateOf(
  calendar: Calendar,
  b: KeyBudgets,
  now: number,
  count: (period: BudgetPeriod, start: number) => { used: number; held: number },
): BudgetState {
  const periods: PeriodState[] = [];
  for (const period of BUDGET_PERIODS) {
    const limit = b[period];
    if (typeof limit !== 'number') continue;
    const { start, end } = calendar.bounds(period, now);
    const { used, held } = count(period, start);
    periods.push({ period, limit, used, held, remaining: Math.max(0, limit - used - held), resets_at: new Date(end).toISOString() });
  }
  return { tz: calendar.tz, mode: b.mode ?? 'hard', periods, per_user: b.per_user ?? null };
}

/** The share of its tightest period a key has used, 0-100+ (keys list's BUDGET column), or null without periods. */
export function tightestPercent(state: BudgetState): number | null {
  let most: number | null = null;
  for (const p of state.periods) {
    const pct = (100 * (p.used + p.held)) / p.limit;
    if (most === null || pct > most) most = pct;
  }
  return most;
}
