// How `llm-gateway keys show` and `keys list` tell a key's token budgets (issue #15). The CLI is
// another process than the gateway: it counts from the usage table (what is written, up to a second
// behind the gateway; requests still running hold nothing here), in the same calendar periods
// (GATEWAY_BUDGET_TZ, .env read).
import type Database from 'better-sqlite3';
import { stateOf, tightestPercent, type BudgetState } from '../admission/budgets.js';
import { ConfigError, SETTINGS, readSetting } from '../config.js';
import { hasBudgets } from '../keys/key-budgets.js';
import type { KeyRecord } from '../keys/key-record.js';
import { Calendar, localIso } from '../usage/calendar.js';
import { UsageStore, type UsageTable } from '../usage/store.js';
import { UsageError } from './common.js';

function calendar(): Calendar {
  try {
    return new Calendar(readSetting(SETTINGS.budgetTz, process.env));
  } catch (err) {
    if (err instanceof ConfigError) throw new UsageError(err.message);
    throw err;
  }
}

/** Budget state per key id, for the keys that have budgets (used: the SQLite file's usage table). */
export function budgetStates(db: Database.Database, keys: readonly KeyRecord[], now = Date.now()): Map<string, BudgetState> {
  const usage = new UsageStore(db);
  return statesOf(keys, now, (keyId, start) => usage.tokensSince(keyId, start));
}

/** The same from any usage table (PostgreSQL's answers later): what each state needs is read first. */
export async function readBudgetStates(usage: UsageTable, keys: readonly KeyRecord[], now = Date.now()): Promise<Map<string, BudgetState>> {
  const asked: [string, number][] = [];
  statesOf(keys, now, (keyId, start) => (asked.push([keyId, start]), 0));
  const used = new Map<string, number>();
  for (const [keyId, start] of asked) used.set(`${keyId} ${start}`, await usage.tokensSince(keyId, start));
  return statesOf(keys, now, (keyId, start) => used.get(`${keyId} ${start}`) ?? 0);
}

function statesOf(
  keys: readonly KeyRecord[],
  now: number,
  tokensSince: (keyId: string, start: number) => number,
): Map<string, BudgetState> {
  const out = new Map<string, BudgetState>();
  const budgeted = keys.filter((k) => hasBudgets(k.budgets));
  if (budgeted.length === 0) return out;
  const cal = calendar();
  for (const k of budgeted)
    out.set(
      k.id,
      stateOf(cal, k.budgets!, now, (_p, start) => ({ used: tokensSince(k.id, start), held: 0 })),
    );
  return out;
}

/** `budget_state` for --json, for a key with budgets (nothing without, as in the admin API). */
export function budgetJson(state: BudgetState | undefined): { budget_state?: BudgetState } {
  return state === undefined ? {} : { budget_state: state };
}

const n = (v: number): string => v.toLocaleString('en-US');

/**
 * `keys show`'s budget lines (none for a key without budgets): one per period (used of limit,
 * percent, reset in the zone), and per user.
 */
export function budgetLines(state: BudgetState | undefined): string {
  if (state === undefined) return ''; // no budgets: nothing to say (as before budgets existed)
  const cal = new Calendar(state.tz);
  const lines = [`\nbudgets:    ${state.mode} (${state.tz})`];
  for (const p of state.periods) {
    const pct = Math.floor((100 * p.used) / p.limit);
    lines.push(
      `  ${p.period.padEnd(6)}${n(p.used)} of ${n(p.limit)} tokens used (${pct}%), ${n(p.remaining)} left; resets ${localIso(cal, Date.parse(p.resets_at))}`,
    );
  }
  const u = state.per_user;
  if (u !== null) {
    const each = (['day', 'week', 'month'] as const).filter((p) => typeof u[p] === 'number').map((p) => `${n(u[p]!)}/${p}`);
    lines.push(`  per end user: ${each.join(', ')} (see: llm-gateway usage --by user)`);
  }
  return lines.join('\n');
}

/** `keys list`'s BUDGET column: the tightest period's share used, e.g. "12% month", or "-". */
export function budgetColumn(state: BudgetState | undefined): string {
  if (state === undefined) return '-';
  const pct = tightestPercent(state);
  if (pct === null) return state.per_user === null ? '-' : 'per user';
  let tight = state.periods[0]!;
  for (const p of state.periods) if (p.used / p.limit > tight.used / tight.limit) tight = p;
  return `${Math.floor(pct)}% ${tight.period}`;
}
