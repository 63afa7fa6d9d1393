// A key's token budgets over calendar periods (issue #15): tokens per day / week / month in the
// operator's time zone (GATEWAY_BUDGET_TZ), hard (refused once spent) or soft (warned), and
// optionally the same per end user under the key. Stored as a JSON document in the key's `budgets`
// column; the same document in the admin API and `keys … --json` (snake_case fields). Counting and
// enforcing them is admission/budgets.ts; the periods are usage/calendar.ts.
import { KeyStoreError, mergeFields } from './key-record.js';

export type BudgetPeriod = 'day' | 'week' | 'month';
export const BUDGET_PERIODS: readonly BudgetPeriod[] = ['day', 'week', 'month'];
export type BudgetMode = 'hard' | 'soft';

export interface PeriodBudgets {
  readonly day?: number | null;
  readonly week?: number | null;
  readonly month?: number | null;
}

export interface KeyBudgets extends PeriodBudgets {
  /** hard: refused once spent (default); soft: only warned */
  readonly mode?: BudgetMode;
  /** the same budgets for each end user under this key (per-user usage) */
  readonly per_user?: PeriodBudgets | null;
}

const PERIOD_FIELDS = new Set<string>(BUDGET_PERIODS);
const KEY_FIELDS = new Set<string>([...BUDGET_PERIODS, 'mode', 'per_user']);

function invalid(message: string, param: string): KeyStoreError {
  return new KeyStoreError('invalid_key_field', message, param);
}

/** The periods of one level (the key's, or per_user's) checked: whole numbers ≥ 1; null/absent dropped. */
function validPeriods(doc: Record<string, unknown>, prefix: string, out: Record<string, unknown>): void {
  for (const p of BUDGET_PERIODS) {
    const v = doc[p];
    if (v === null || v === undefined) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1)
      throw invalid(`${prefix}${p} must be a whole number of tokens ≥ 1 (or null for none)`, `${prefix}${p}`);
    out[p] = v;
  }
}

/**
 * Checks a budgets document (from the admin API or the CLI) and returns it normalised, or null for
 * an empty one. Throws KeyStoreError('invalid_key_field') naming the field (`budgets.month`).
 * A document with only `mode` is kept: `keys set --budget-mode soft` may come before the numbers.
 */
export function validBudgets(budgets: unknown): KeyBudgets | null {
  if (budgets === null || budgets === undefined) return null;
  if (typeof budgets !== 'object' || Array.isArray(budgets)) throw invalid('budgets must be an object', 'budgets');
  const doc = budgets as Record<string, unknown>;
  for (const k of Object.keys(doc))
    if (!KEY_FIELDS.has(k)) throw invalid(`budgets has no field "${k}": use day, week, month, mode, per_user`, `budgets.${k}`);
  const out: Record<string, unknown> = {};
  validPeriods(doc, 'budgets.', out);
  if (doc.mode !== undefined && doc.mode !== null) {
    if (doc.mode !== 'hard' && doc.mode !== 'soft') throw invalid('budgets.mode must be "hard" or "soft"', 'budgets.mode');
    out.mode = doc.mode;
  }
  const perUser = doc.per_user;
  if (perUser !== undefined && perUser !== null) {
    if (typeof perUser !== 'object' || Array.isArray(perUser)) throw invalid('budgets.per_user must be an object', 'budgets.per_user');
    for (const k of Object.keys(perUser))
      if (!PERIOD_FIELDS.has(k)) throw invalid(`budgets.per_user has no field "${k}": use day, week, month`, `budgets.per_user.${k}`);
    const user: Record<string, unknown> = {};
    validPeriods(perUser as Record<string, unknown>, 'budgets.per_user.', user);
    if (Object.keys(user).length > 0) out.per_user = user;
  }
  return Object.keys(out).length === 0 ? null : out;
}

/**
 * Stored budgets merged with changes, field by field (per_user too): a field set to null in
 * `changes` is removed; `changes` null clears them all.
 */
export function mergeBudgets(current: KeyBudgets | null, changes: KeyBudgets | null): KeyBudgets | null {
  if (changes === null) return null;
  return validBudgets(mergeFields(current, changes, 'per_user'));
}

/** True when the document sets any number (a mode alone budgets nothing). */
export function hasBudgets(b: KeyBudgets | null): b is KeyBudgets {
  if (b === null) return false;
  const u = b.per_user;
  return (
    typeof b.day === 'number' ||
    typeof b.week === 'number' ||
    typeof b.month === 'number' ||
    (u != null && (typeof u.day === 'number' || typeof u.week === 'number' || typeof u.month === 'number'))
  );
}

/** The `keys create/set` options that make a budgets document (src/cli/keys.ts). */
export const BUDGET_FLAGS = {
  'budget-day': { type: 'string' },
  'budget-week': { type: 'string' },
  'budget-month': { type: 'string' },
  'budget-mode': { type: 'string' },
  'user-budget-day': { type: 'string' },
  'user-budget-week': { type: 'string' },
  'user-budget-month': { type: 'string' },
} as const;
export const BUDGET_FLAG_NAMES = Object.keys(BUDGET_FLAGS) as (keyof typeof BUDGET_FLAGS)[];

/**
 * The budgets document the flags describe, or undefined when none is given. N, or "none" to
 * remove one (set); mode hard|soft. Throws Error naming the flag (the CLI makes it a usage error).
 */
export function budgetsFromFlags(flags: Partial<Record<keyof typeof BUDGET_FLAGS, string>>): KeyBudgets | undefined {
  const number = (flag: string, text: string): number | null => {
    if (text.trim().toLowerCase() === 'none') return null;
    const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
    if (!Number.isSafeInteger(n) || n < 1) throw new Error(`--${flag} must be a whole number of tokens ≥ 1 (or "none"), got "${text}"`);
    return n;
  };
  const out: Record<string, unknown> = {};
  const user: Record<string, unknown> = {};
  for (const p of BUDGET_PERIODS) {
    const own = flags[`budget-${p}`];
    if (own !== undefined) out[p] = number(`budget-${p}`, own);
    const theirs = flags[`user-budget-${p}`];
    if (theirs !== undefined) user[p] = number(`user-budget-${p}`, theirs);
  }
  const mode = flags['budget-mode'];
  if (mode !== undefined) {
    const m = mode.trim().toLowerCase();
    if (m !== 'hard' && m !== 'soft') throw new Error(`--budget-mode must be hard or soft, got "${mode}"`);
    out.mode = m;
  }
  if (Object.keys(user).length > 0) out.per_user = user;
  return Object.keys(out).length === 0 ? undefined : out;
}
