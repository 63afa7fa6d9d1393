// The admit hook's branch for a key's budgets in Redis (plugins/admission.ts; cluster/
// shared-budgets.ts): the script runs (async), then the hook runs again from the top for that
// request (its `resume`, BUDGETED), which skips limits and budgets and goes on to the queue.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { budgetError, type BudgetKey } from '../admission/budgets.js';
import { SHARED_STATE_UNAVAILABLE } from '../errors.js';
import { BUDGETED, BUDGET_LOCAL, LOCAL, WAITING, type Hook, type Resume, type Via } from './shared-admit.js';
import { SHARED_DOWN_RETRY_S, type SharedCounting } from './shared-counting.js';
import type { SharedBudgets } from './shared-budgets.js';

export type SharedBudgetsBranch = (
  request: FastifyRequest,
  reply: FastifyReply,
  done: (err?: Error) => void,
  hook: Hook,
  key: BudgetKey,
  tokens: number,
  enforce: boolean,
) => Via;

/**
 * A key's budgets in Redis: WAITING while the script runs (it then answers the refusal, or resumes
 * the hook: BUDGETED, or BUDGET_LOCAL when Redis failed and GATEWAY_REDIS_DOWN=local); LOCAL at
 * once while the link is down (refuse: 503 shared_state_unavailable, WAITING).
 */
export function sharedBudgetsFor(
  shared: SharedCounting,
  budgets: SharedBudgets,
  settledByRecords: boolean,
  resume: Resume,
): SharedBudgetsBranch {
  function refuse(reply: FastifyReply, done: (err?: Error) => void): void {
    reply.header('retry-after', String(SHARED_DOWN_RETRY_S));
    done(SHARED_STATE_UNAVAILABLE);
  }

  return (request, reply, done, hook, key, tokens, enforce) => {
    if (!shared.link.up) {
      if (shared.whenDown === 'refuse') {
        refuse(reply, done);
        return WAITING;
      }
      shared.decidedLocally++;
      return LOCAL;
    }
    const res = reply.raw;
    budgets.admit(key, request.endUser ?? null, request.id, tokens, enforce).then(
      (check) => {
        reply.headers(check.headers);
        if (check.refusal !== undefined) {
          reply.header('retry-after', String(check.refusal.retryAfter));
          return done(budgetError(check.refusal));
        }
        const release = (): void => void budgets.release(request.id);
        if (res.destroyed || request.raw.socket.destroyed)
          release(); // the client left meanwhile
        else if (tokens > 0 && !settledByRecords) res.once('close', release); // no usage records
        resume(request, reply, done, hook, BUDGETED);
      },
      (err: Error) => {
        shared.failed(err, 'budget admit');
        if (shared.whenDown === 'refuse') return refuse(reply, done);
        shared.decidedLocally++;
        resume(request, reply, done, hook, BUDGET_LOCAL);
      },
    );
    return WAITING;
  };
}
