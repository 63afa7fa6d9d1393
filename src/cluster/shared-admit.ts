// The admit hook's branch for a key's limits in Redis (plugins/admission.ts; cluster/
// shared-limits.ts): the script runs (async), then the hook runs again from the top for that
// request (its `resume`), which goes on with budgets and the queue exactly as the local path does.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { Limits, type KeyLimits } from '../admission/limits.js';
import { RATE_LIMITED, SHARED_STATE_UNAVAILABLE } from '../errors.js';
import type { JsonBody } from '../proxy/json-body.js';
import { SHARED_DOWN_RETRY_S, type SharedCounting } from './shared-counting.js';

/**
 * Where a request's limits are decided: here (LOCAL), already (DECIDED: in Redis, or before it
 * waited for a budget's seed), or not yet (WAITING: a script is running, the hook comes back).
 */
export const LOCAL = 0;
export const DECIDED = 1;
export const WAITING = 2;
/** Resumed after the budgets (limits decided before): decided in Redis, or to decide here (shared-budgets-admit.ts). */
export const BUDGETED = 3;
export const BUDGET_LOCAL = 4;
export type Via = typeof LOCAL | typeof DECIDED | typeof WAITING | typeof BUDGETED | typeof BUDGET_LOCAL;
export type Hook = (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => void;
export type Resume = (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void, hook: Hook, via: Via) => void;

export type SharedLimitsBranch = (
  request: FastifyRequest,
  reply: FastifyReply,
  done: (err?: Error) => void,
  hook: Hook,
  keyId: string,
  l: KeyLimits,
  queued: boolean | 'light' | undefined,
  body: JsonBody | undefined,
  url: string | undefined,
) => Via;

/**
 * A key's limits in Redis: WAITING while the script runs (it then answers the refusal, or resumes
 * the hook: DECIDED, or LOCAL when Redis failed and GATEWAY_REDIS_DOWN=local); LOCAL at once while
 * the link is down (refuse: 503 shared_state_unavailable, WAITING).
 */
export function sharedLimitsFor(
  shared: SharedCounting,
  holdFor: (body: JsonBody, url: string | undefined) => number,
  settledByRecords: boolean,
  resume: Resume,
): SharedLimitsBranch {
  /** Redis does not answer: GATEWAY_REDIS_DOWN=refuse answers 503, local decides here (LOCAL). */
  function redisDown(reply: FastifyReply, done: (err?: Error) => void): Via {
    if (shared.whenDown === 'refuse') {
      reply.header('retry-after', String(SHARED_DOWN_RETRY_S));
      done(SHARED_STATE_UNAVAILABLE);
      return WAITING;
    }
    shared.decidedLocally++;
    return LOCAL;
  }

  return (request, reply, done, hook, keyId, l, queued, body, url) => {
    if (!shared.link.up) return redisDown(reply, done);
    const tokens = queued === true && Limits.holdsTokens(l) && body !== undefined ? holdFor(body, url) : 0;
    const res = reply.raw;
    shared.limits.admit(keyId, l, request.id, tokens).then(
      (a) => {
        if (a.refusal !== undefined) {
          reply.headers(a.headers).header('retry-after', String(a.refusal.retryAfter));
          return done(RATE_LIMITED(a.refusal.limit, a.refusal.max, a.refusal.retryAfter));
        }
        const release = (): void => void shared.limits.release(request.id);
        if (res.destroyed || request.raw.socket.destroyed) {
          a.end(); // the client left while Redis answered (resume() hijacks)
          release();
        } else {
          res.once('close', a.end);
          // Without usage records a hold ends with the response (as in the local path).
          if (tokens > 0 && !settledByRecords) res.once('close', release);
          reply.headers(a.headers);
        }
        resume(request, reply, done, hook, DECIDED);
      },
      (err: Error) => {
        shared.failed(err, 'admit');
        if (redisDown(reply, done) === WAITING) return;
        resume(request, reply, done, hook, LOCAL);
      },
    );
    return WAITING;
  };
}
