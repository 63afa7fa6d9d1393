// Admission: per-key limits, then the fair queue in front of llama-server's slots (DESIGN.md).
// A preHandler in the authenticated scope, after policy: the key is known and the body parsed,
// nothing has gone upstream yet.
//
//   limits   requests/min, tokens/min, tokens/day, concurrent → 429 + Retry-After + x-ratelimit-*
//   queue    at most maxInflight upstream at once; the rest wait, a free slot going to the key with
//            the fewest running; bounded per key (429) and overall (503), with a deadline (503).
//            A client that leaves while waiting leaves the queue and never reaches upstream.
//            A key runs at most its share of the slots (GATEWAY_KEY_SLOTS); the rest of its
//            requests wait, and a free slot goes to another key's request at once.
//   light    token counting and the model list wait in a queue of their own (GATEWAY_LIGHT_SLOTS),
//            same rules, so they never wait behind generations.
import type { OutgoingHttpHeaders } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { KEY_QUEUE_FULL, QUEUE_FULL, QUEUE_TIMEOUT, RATE_LIMITED } from '../errors.js';
import { FairQueue, QueueFull, QueueLeft, type Ticket } from '../admission/fair-queue.js';
import { Limits } from '../admission/limits.js';
import { reserveFor } from '../admission/token-estimate.js';
import { sseErrorEvent } from '../proxy/sse-tap.js';
import type { JsonBody } from './proxy.js';

const QUEUE_FULL_RETRY_S = 5;
const QUEUE_TIMEOUT_RETRY_S = 10;
/** Cloudflare drops a connection silent for ~100 s; a queued stream says something every 15 s. */
export const DEFAULT_QUEUE_PING_MS = 15_000;

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * true: the route's work runs in a llama-server slot, it takes its turn in the fair queue.
     * 'light': a short call (token counting, model list), queued apart in the light queue.
     */
    queued?: boolean | 'light';
  }
}

export interface AdmissionOptions {
  limits: Limits;
  queue: FairQueue;
  /** The light calls' own queue (routes with `queued: 'light'`). */
  lightQueue: FairQueue;
  queueTimeoutMs: number;
  maxQueuePerKey: number;
  /** How often a waiting stream gets a keep-alive comment (and, the first time, its headers). */
  pingMs?: number;
  /** A request whose client left while it waited (for the usage record). */
  onLeftQueue?: (request: FastifyRequest) => void;
  /** Tokens held for a request's completion when it names no max_tokens (GATEWAY_RESERVE_TOKENS). */
  reserveTokens: number;
  /** Usage records settle token holds (GATEWAY_USAGE=on); else a hold ends with its response. */
  settledByRecords?: boolean;
}

/** Routes that read a prompt and generate nothing: they hold only their prompt's tokens. */
const PROMPT_ONLY = new Set(['/v1/embeddings', '/v1/rerank']);

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
      const route = request.routeOptions; // a new object on every read (Fastify 5): read once
      const queued = route.config.queued;
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
        // A key with a token limit holds what this generation may cost until its usage record
        // settles it (app.ts); without usage records the hold ends with the response.
        const body = request.body as JsonBody | undefined;
        if (queued === true && Limits.holdsTokens(l) && body !== undefined) {
          limits.reserve(key.id, request.id, reserveFor(body.raw, body.json, !PROMPT_ONLY.has(route.url ?? ''), opts.reserveTokens), now);
          if (opts.settledByRecords !== true) res.once('close', () => limits.release(request.id));
        }
        reply.headers(limits.headers(key.id, l, now));
      }

      if (queued === undefined || queued === false) return done();
      const light = queued === 'light';
      let ticket: Ticket;
      try {
        ticket = (light ? opts.lightQueue : queue).enter(key.id);
      } catch (err) {
        if (!(err instanceof QueueFull)) throw err;
        reply.header('retry-after', String(QUEUE_FULL_RETRY_S));
        return done(err.scope === 'key' ? KEY_QUEUE_FULL(opts.maxQueuePerKey) : QUEUE_FULL);
      }
      // Leaving while waiting takes the request out of the queue; after admission, the same
      // call gives the slot back (the response finished, or the client left mid-answer).
      res.once('close', ticket.cancel);
      if (ticket.immediate) return done();
      waitForSlot(request, reply, ticket, key.name, light).then(() => done(), done);
    });

    async function waitForSlot(request: FastifyRequest, reply: FastifyReply, ticket: Ticket, keyName: string, light: boolean): Promise<void> {
      const res = reply.raw;
      // A stream that waits long starts early: 200 and SSE headers, then a comment line every
      // pingMs, so proxies (Cloudflare: ~100 s) keep the connection. The proxy then continues it.
      // (Light calls answer JSON even when their body says stream: true.)
      const streamed = !light && (request.body as JsonBody | undefined)?.json.stream === true;
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
