// Admission: per-key limits, then the fair queue in front of llama-server's slots (DESIGN.md).
// A preHandler in the authenticated scope, after policy: the key is known and the body parsed,
// nothing has gone upstream yet.
//
//   limits   requests/min, tokens/min, tokens/day, concurrent → 429 + Retry-After + x-ratelimit-*
//   queue    at most maxInflight upstream at once; the rest wait, a free slot going to the key with
//            the fewest running; bounded per key (429) and overall (503), with a deadline (503).
//            A client that leaves while waiting leaves the queue and never reaches upstream.
import type { OutgoingHttpHeaders } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { KEY_QUEUE_FULL, QUEUE_FULL, QUEUE_TIMEOUT, RATE_LIMITED } from '../errors.js';
import { FairQueue, QueueFull, QueueLeft, type Ticket } from '../lib/fair-queue.js';
import { Limits } from '../lib/limits.js';
import { sseErrorEvent } from '../lib/sse-relay.js';
import type { JsonBody } from './proxy.js';

const QUEUE_FULL_RETRY_S = 5;
const QUEUE_TIMEOUT_RETRY_S = 10;
/** Cloudflare drops a connection silent for ~100 s; a queued stream says something every 15 s. */
export const DEFAULT_QUEUE_PING_MS = 15_000;

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
  /** How often a waiting stream gets a keep-alive comment (and, the first time, its headers). */
  pingMs?: number;
  /** A request whose client left while it waited (for the usage record). */
  onLeftQueue?: (request: FastifyRequest) => void;
}

export default fp(
  async function admissionPlugin(app: FastifyInstance, opts: AdmissionOptions) {
    const { limits, queue } = opts;
    const pingMs = opts.pingMs ?? DEFAULT_QUEUE_PING_MS;
    // A callback hook: the common case (no limit refuses, a slot is free) finishes synchronously,
    // without a promise, a microtask hop or a ping timer per request. Only a request that has to
    // wait takes the async path.
    app.addHook('preHandler', (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => {
      const key = request.apiKey;
      if (key === null) return done();
      const res = reply.raw;
      const l = limits.of(key);
      if (Limits.any(l)) {
        const now = Date.now();
        const refusal = limits.check(key.id, l, now);
        if (refusal !== undefined) {
          reply.headers(limits.headers(key.id, l, now)).header('retry-after', String(refusal.retryAfter));
          return done(RATE_LIMITED(refusal.limit, refusal.max, refusal.retryAfter));
        }
        const end = limits.admit(key.id, now);
        res.once('close', end);
        reply.headers(limits.headers(key.id, l, now));
      }

      if (request.routeOptions.config.queued !== true) return done();
      let ticket: Ticket;
      try {
        ticket = queue.enter(key.id);
      } catch (err) {
        if (!(err instanceof QueueFull)) throw err;
        reply.header('retry-after', String(QUEUE_FULL_RETRY_S));
        return done(err.scope === 'key' ? KEY_QUEUE_FULL(opts.maxQueuePerKey) : QUEUE_FULL);
      }
      // Leaving while waiting takes the request out of the queue; after admission, the same
      // call gives the slot back (the response finished, or the client left mid-answer).
      res.once('close', ticket.cancel);
      if (ticket.immediate) return done();
      waitForSlot(request, reply, ticket, key.name).then(() => done(), done);
    });

    async function waitForSlot(request: FastifyRequest, reply: FastifyReply, ticket: Ticket, keyName: string): Promise<void> {
      const res = reply.raw;
      // A stream that waits long starts early: 200 and SSE headers, then a comment line every
      // pingMs, so proxies (Cloudflare: ~100 s) keep the connection. The proxy then continues it.
      const streamed = (request.body as JsonBody | undefined)?.json.stream === true;
      const ping = streamed
        ? setInterval(() => {
            if (res.destroyed) return;
            if (!res.headersSent) {
              // From here on the response is written by hand (the proxy sees res.headersSent).
              const headers: OutgoingHttpHeaders = { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' };
              for (const [name, value] of Object.entries(reply.getHeaders())) if (value !== undefined) headers[name] = value;
              res.writeHead(200, headers);
            }
            res.write(':\n\n');
          }, pingMs)
        : undefined;
      try {
        await ticket.admitted;
      } catch (err) {
        if (err instanceof QueueLeft) {
          request.log.info({ key: keyName }, 'client left while waiting for a slot; never sent upstream');
          opts.onLeftQueue?.(request);
          reply.hijack(); // nobody to answer
          return;
        }
        const timeout = QUEUE_TIMEOUT(opts.queueTimeoutMs);
        if (res.headersSent) {
          res.end(sseErrorEvent(request.routeOptions.url?.startsWith('/v1/messages') === true ? 'anthropic' : 'openai', timeout.message, 'queue_timeout'));
          return;
        }
        reply.header('retry-after', String(QUEUE_TIMEOUT_RETRY_S));
        throw timeout;
      } finally {
        clearInterval(ping);
      }
    }
  },
  { name: 'admission', fastify: '5.x', dependencies: ['auth'] },
);
