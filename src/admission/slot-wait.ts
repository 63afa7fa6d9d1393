// A request's wait for its slot (plugins/admission.ts's admit hook): the pings that keep a waiting
// stream open, and the answer when the wait ends without a slot (the client left, the queue timed
// out or is full, the model is loading, too many tasks, shared state unavailable).
import { routeConfig } from '../http/route-config.js';
import type { FastifyReply, FastifyRequest } from 'fastify';
import {
  KEY_QUEUE_FULL,
  MODEL_LOADING,
  QUEUE_FULL,
  QUEUE_TIMEOUT,
  SHARED_STATE_UNAVAILABLE,
  TOO_MANY_TASKS,
  type GatewayError,
} from '../errors.js';
import type { JsonBody } from '../proxy/json-body.js';
import { sseErrorEvent } from '../proxy/sse-tap.js';
import { countField } from '../usage/estimate.js';
import { tasksOf } from '../usage/exchange.js';
import { QueueFull, QueueLeft, TooManyTasks, type Ticket as LightTicket } from './fair-queue.js';
import { startPings } from './placement.js';
import type { Ticket } from './scheduler.js';

export const QUEUE_FULL_RETRY_S = 5;
const QUEUE_TIMEOUT_RETRY_S = 10;

/**
 * How many llama-server tasks a request runs at once, so how many slots it takes: one per prompt
 * of a /v1/completions prompt array (counted as llama-server splits it: promptsOf), times `n`
 * (chat and completions). Allocates nothing for the usual body (a string prompt, no n).
 */
export function taskCount(url: string | undefined, json: Record<string, unknown>): number {
  if (url === '/v1/completions') return tasksOf('completions', json);
  return url === '/v1/chat/completions' ? tasksOf('chat', json) : 1;
}

/** The 400 for a request with more tasks than its key may run: names `n` when it asks for several choices. */
export function tooManyTasks(err: TooManyTasks, json: Record<string, unknown> | undefined): GatewayError {
  return TOO_MANY_TASKS(err.tasks, err.max, (countField(json?.n) ?? 1) > 1 ? 'n' : 'prompt');
}

export interface SlotWaitOptions {
  /** How often a waiting stream gets a keep-alive comment (and, the first time, its headers). */
  readonly pingMs: number;
  readonly queueTimeoutMs: number;
  readonly maxQueuePerKey: number;
  /** usage accounting (null: GATEWAY_USAGE=off): a request that left the queue is recorded */
  readonly accounting: { leftQueue(request: FastifyRequest): void } | null;
}

/** Waits for a queued request's slot; throws the error to answer when it gets none. */
export function slotWaiter(opts: SlotWaitOptions) {
  const { pingMs, queueTimeoutMs, maxQueuePerKey, accounting } = opts;
  return async function waitForSlot(
    request: FastifyRequest,
    reply: FastifyReply,
    ticket: Ticket | LightTicket,
    keyName: string,
    light: boolean,
  ): Promise<void> {
    const res = reply.raw;
    // A stream that waits long starts early: 200 and SSE headers, then a comment line every
    // pingMs, so proxies (Cloudflare: ~100 s) keep the connection. The proxy then continues it.
    // (Light calls answer JSON even when their body says stream: true.)
    const streamed = !light && (request.body as JsonBody | undefined)?.json.stream === true;
    const ping = streamed ? startPings(reply, pingMs) : undefined;
    try {
      await ticket.admitted;
    } catch (err) {
      if (err instanceof QueueLeft) {
        request.log.info({ key: keyName }, 'client left while waiting for a slot; never sent upstream');
        accounting?.leftQueue(request);
        reply.hijack(); // nobody to answer
        return;
      }
      // Timed out, or llama-server now has too few slots for this request's tasks; with shared
      // slots also: the key's line is full across the gateways, or Redis failed (=refuse).
      const json = (request.body as JsonBody | undefined)?.json;
      const timeout =
        err instanceof TooManyTasks
          ? tooManyTasks(err, json)
          : err instanceof QueueFull
            ? err.scope === 'key'
              ? KEY_QUEUE_FULL(maxQueuePerKey)
              : QUEUE_FULL
            : err === SHARED_STATE_UNAVAILABLE
              ? SHARED_STATE_UNAVAILABLE
              : (request.target?.nodes.every((n) => n.state === 'loading') ?? false)
                ? MODEL_LOADING(queueTimeoutMs)
                : QUEUE_TIMEOUT(queueTimeoutMs);
      if (res.headersSent) {
        res.end(sseErrorEvent(routeConfig(request).url?.startsWith('/v1/messages') === true ? 'anthropic' : 'openai', timeout));
        return;
      }
      if (err instanceof QueueFull) reply.header('retry-after', String(QUEUE_FULL_RETRY_S));
      else if (!(err instanceof TooManyTasks)) reply.header('retry-after', String(QUEUE_TIMEOUT_RETRY_S));
      throw timeout;
    } finally {
      clearInterval(ping);
    }
  };
}
