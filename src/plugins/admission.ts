// Admission: per-key limits, then the fair queue in front of llama-server's slots (DESIGN.md).
// A preHandler in the authenticated scope, after policy: the key is known and the body parsed,
// nothing has gone upstream yet.
//
//   limits   requests/min, tokens/min, tokens/day, concurrent → 429 + Retry-After + x-ratelimit-*
//   queue    at most maxInflight upstream at once; the rest wait, a free slot going to the key with
//            the fewest running; bounded per key (429) and overall (503), with a deadline (503).
//            A client that leaves while waiting leaves the queue and never reaches upstream.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { KEY_QUEUE_FULL, QUEUE_FULL, QUEUE_TIMEOUT, RATE_LIMITED } from '../errors.js';
import { FairQueue, QueueFull, QueueLeft } from '../lib/fair-queue.js';
import { Limits } from '../lib/limits.js';

const QUEUE_FULL_RETRY_S = 5;
const QUEUE_TIMEOUT_RETRY_S = 10;

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route's work runs in a llama-server slot: it takes its turn in the fair queue. */
    queued?: boolean;
  }
}

export interface AdmissionOptions {
  limits: Limits;
  queue: FairQueue;
  queueTimeoutMs: number;
  maxQueuePerKey: number;
  /** A request whose client left while it waited (for the usage record). */
  onLeftQueue?: (request: FastifyRequest) => void;
}

export default fp(
  async function admissionPlugin(app: FastifyInstance, opts: AdmissionOptions) {
    const { limits, queue } = opts;
    app.addHook('preHandler', async (request: FastifyRequest, reply: FastifyReply) => {
      const key = request.apiKey;
      if (key === null) return;
      const res = reply.raw;
      const l = limits.of(key);
      const limited = Limits.any(l);
      if (limited) {
        const now = Date.now();
        const refusal = limits.check(key.id, l, now);
        if (refusal !== undefined) {
          reply.headers(limits.headers(key.id, l, now)).header('retry-after', String(refusal.retryAfter));
          throw RATE_LIMITED(refusal.limit, refusal.max, refusal.retryAfter);
        }
        const end = limits.admit(key.id, now);
        res.once('close', end);
        reply.headers(limits.headers(key.id, l, now));
      }

      if (request.routeOptions.config.queued !== true) return;
      let ticket;
      try {
        ticket = queue.enter(key.id);
      } catch (err) {
        if (!(err instanceof QueueFull)) throw err;
        reply.header('retry-after', String(QUEUE_FULL_RETRY_S));
        throw err.scope === 'key' ? KEY_QUEUE_FULL(opts.maxQueuePerKey) : QUEUE_FULL;
      }
      // Leaving while waiting takes the request out of the queue; after admission, the same
      // call gives the slot back (the response finished, or the client left mid-answer).
      res.once('close', ticket.cancel);
      try {
        await ticket.admitted;
      } catch (err) {
        if (err instanceof QueueLeft) {
          request.log.info({ key: key.name }, 'client left while waiting for a slot; never sent upstream');
          opts.onLeftQueue?.(request);
          reply.hijack(); // nobody to answer
          return;
        }
        reply.header('retry-after', String(QUEUE_TIMEOUT_RETRY_S));
        throw QUEUE_TIMEOUT(opts.queueTimeoutMs);
      }
    });
  },
  { name: 'admission', fastify: '5.x', dependencies: ['auth'] },
);
