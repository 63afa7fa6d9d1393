// Counting shared through Redis (issue 17), as admission uses it: the shared per-key limits
// (shared-limits.ts) and token budgets (shared-budgets.ts), what to do while Redis does not answer
// (GATEWAY_REDIS_DOWN), and how many admissions were decided by this process alone meanwhile
// (/health, /metrics; a request of a key with limits and budgets counts once for each).
//
// GATEWAY_REDIS_DOWN=local (the default): while the link is down, or when a script fails or times
// out, the request is decided with the process-local counters (admission/limits.ts), as a single
// gateway would; shared counting resumes by itself once Redis answers again. What was counted
// locally during the outage is not merged into Redis afterwards: for that while each gateway
// enforced the limits on its own (N gateways: up to N times a key's limit).
// GATEWAY_REDIS_DOWN=refuse: such a request is answered 503 shared_state_unavailable, Retry-After.
import type { RedisDownRule } from './settings.js';
import type { RedisLink } from './redis-link.js';
import { SharedLimits } from './shared-limits.js';
import { SharedBudgets, type SharedBudgetsOptions } from './shared-budgets.js';

/** Retry-After of a request refused because Redis does not answer (GATEWAY_REDIS_DOWN=refuse). */
export const SHARED_DOWN_RETRY_S = 5;

export interface SharedCountingOptions {
  readonly link: RedisLink;
  readonly prefix: string;
  readonly gatewayId: string;
  readonly leaseMs: number;
  readonly whenDown: RedisDownRule;
  readonly log: { warn(obj: object, msg: string): void };
  /** token budgets: the calendar, warning levels, seeders and alerts (cluster/shared-budgets.ts) */
  readonly budgets: Omit<SharedBudgetsOptions, 'client' | 'prefix' | 'gatewayId' | 'leaseMs' | 'onError'>;
}

export class SharedCounting {
  readonly link: RedisLink;
  readonly limits: SharedLimits;
  readonly budgets: SharedBudgets;
  readonly whenDown: RedisDownRule;
  /** admissions decided with this process's counters because Redis did not answer (since start) */
  decidedLocally = 0;
  /** commands that failed while the link was up (a timeout, a script error), since start */
  failures = 0;
  readonly #log: { warn(obj: object, msg: string): void };
  #lastFailureLog = 0;

  constructor(opts: SharedCountingOptions) {
    this.link = opts.link;
    this.whenDown = opts.whenDown;
    this.#log = opts.log;
    this.limits = new SharedLimits({
      client: opts.link.client,
      prefix: opts.prefix,
      gatewayId: opts.gatewayId,
      leaseMs: opts.leaseMs,
      onError: (err, what) => this.failed(err, what),
    });
    this.limits.start();
    this.budgets = new SharedBudgets({
      ...opts.budgets,
      client: opts.link.client,
      prefix: opts.prefix,
      gatewayId: opts.gatewayId,
      leaseMs: opts.leaseMs,
      onError: (err, what) => this.failed(err, what),
    });
    this.budgets.start();
  }

  /** A command failed: counted, and logged at most every 10 s (the link logs its own ups and downs). */
  failed(err: Error, what: string): void {
    this.failures++;
    const now = Date.now();
    if (this.link.up && now - this.#lastFailureLog > 10_000) {
      this.#lastFailureLog = now;
      this.#log.warn({ redis: 'error', what, error: err.message }, 'a Redis command for shared counting failed');
    }
  }

  /** /health's "redis": the link's state and what the gateway does while it is down. */
  status(): Record<string, unknown> {
    return { ...this.link.status(), when_down: this.whenDown, decided_locally: this.decidedLocally };
  }

  async close(): Promise<void> {
    await Promise.all([this.limits.close(), this.budgets.close()]);
  }
}
