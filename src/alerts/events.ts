// What the gateway tells an operator's webhook (GATEWAY_WEBHOOK_URL, issue #15): a key crossed a
// budget's warning level or spent it, was disabled, or expires within a week. Producers (budgets,
// the key registry, the expiry check) call Alerts.emit(); delivery (signed, retried, never on the
// request path) is the webhook sender's job.
import type { BudgetPeriod } from '../keys/key-budgets.js';

interface AlertKey {
  readonly id: string;
  readonly name: string;
}

export type AlertEvent =
  | {
      /** used reached a warning level (GATEWAY_BUDGET_WARN_AT, e.g. 80 and 100 %) of a budget */
      readonly type: 'budget.warning';
      readonly key: AlertKey;
      /** the end user, for a per-user budget under the key */
      readonly user?: string;
      readonly period: BudgetPeriod;
      readonly mode: 'hard' | 'soft';
      readonly percent: number;
      readonly used: number;
      readonly limit: number;
      /** ISO time the period ends (the budget resets) */
      readonly resets_at: string;
    }
  | {
      /** a hard budget is spent: the key's (or user's) requests are refused until resets_at */
      readonly type: 'budget.exhausted';
      readonly key: AlertKey;
      readonly user?: string;
      readonly period: BudgetPeriod;
      readonly used: number;
      readonly limit: number;
      readonly resets_at: string;
    }
  | { readonly type: 'key.disabled'; readonly key: AlertKey }
  | { readonly type: 'key.expiring'; readonly key: AlertKey; readonly expires_at: string };

export interface Alerts {
  /** Queues the event for delivery; returns at once, never throws. */
  emit(event: AlertEvent): void;
}

/** Alerts when no webhook is set: nothing is sent. */
export const NO_ALERTS: Alerts = { emit() {} };
