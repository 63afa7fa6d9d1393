// A key's token budgets over calendar periods (issue #15): tokens per day / week / month in the
// operator's time zone (GATEWAY_BUDGET_TZ), hard (refused once spent) or soft (warned), and
// optionally the same per end user under the key. Stored as a JSON document in the key's `budgets`
// column; the same document in the admin API and `keys … --json` (snake_case fields).
import { KeyStoreError } from './key-record.js';

export type BudgetPeriod = 'day' | 'week' | 'month';
export const BUDGET_PERIODS: readonly BudgetPeriod[] = ['day', 'week', 'month'];

export interface PeriodBudgets {
  readonly day?: number | null;
  readonly week?: number | null;
  readonly month?: number | null;
}

export interface KeyBudgets extends PeriodBudgets {
  /** hard: refused once spent (default); soft: only warned */
  readonly mode?: 'hard' | 'soft';
  /** the same budgets for each end user under this key (per-user usage) */
  readonly per_user?: PeriodBudgets | null;
}

/**
 * Checks a budgets document (from the admin API or the CLI) and returns it normalised, or null for
 * an empty one. Throws KeyStoreError('invalid_key_field') naming the field (`budgets.month`).
 */
export function validBudgets(budgets: unknown): KeyBudgets | null {
  if (budgets === null || budgets === undefined) return null;
  if (typeof budgets !== 'object' || Array.isArray(budgets))
    throw new KeyStoreError('invalid_key_field', 'budgets must be an object', 'budgets');
  const out = budgets as KeyBudgets;
  return Object.keys(out).length === 0 ? null : out;
}

/** Stored budgets merged with changes: a field set to null or undefined in `changes` is removed. */
export function mergeBudgets(current: KeyBudgets | null, changes: KeyBudgets | null): KeyBudgets | null {
  if (changes === null) return null;
  const next: Record<string, unknown> = { ...(current ?? {}) };
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === undefined) delete next[k];
    else next[k] = v;
  }
  return validBudgets(next);
}
