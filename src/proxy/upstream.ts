// The way to llama-server: two undici connection pools, and `forward()`, which sends a request's
// bytes upstream and streams the answer back.
//   generation pool   generations (chat, completions, embeddings, …): as many connections as the
//                     fair queue lets run at once; no fixed cap of its own (see the constructor).
//   light pool        clients' light calls (token counting, the model list): at most
//                     GATEWAY_LIGHT_SLOTS connections, so a burst of them cannot take llama-server's
//                     HTTP threads.
//   own pool          the gateway's own short calls (get/post: /health, /props, the model list,
//                     the usage completer's token counts): OWN_SLOTS connections of its own, so
//                     clients' slow counts (a 42 MB body takes llama-server a minute) cannot hold
//                     them up. Each such call is bounded as a whole, from when it is queued.
//
// Over 400 lines on purpose: one class owns one server's three pools, its key and its destroyed
// flag, and forward() reads top to bottom as a request goes (send, fail over before the first byte,
// relay); how failures are worded and bodies read lives in upstream-failures.ts, the taps apart.
//
// We call undici directly instead of @fastify/reply-from (DESIGN.md, "Cancellation"): reply-from
// leaves the upstream request running when the client leaves before upstream headers arrive
// (llama-server still processing the prompt or waiting for a slot) and for `stream:false` (the
// whole generation runs on). Here every upstream request carries an AbortSignal tied to the client
// response's `close`, so llama-server frees its slot at once in every phase.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import type { OutgoingHttpHeaders } from 'node:http';
import { Pool, type Dispatcher } from 'undici';
import type { Config } from '../config.js';
import { SHUTTING_DOWN, UPSTREAM_BAD_RESPONSE, UPSTREAM_TIMEOUT, type GatewayError } from '../errors.js';
import { copyResponseHeaders, upstreamRequestHeaders } from './headers.js';
import { needsIncludeUsage, withIncludeUsage, type JsonBody } from './json-body.js';
import { CountingTap, JsonTap } from './json-tap.js';
import { relay, type BrokenEnd, type OnBroken, type Tap } from './relay.js';
import { SseTap, sseErrorEvent, type SseDialect } from './sse-tap.js';
import {
  describeBreak,
  endEarlyStream,
  failureOf,
  inStreamFailure,
  isConnectFailure,
  isLoadingAnswer,
  readErrorBody,
} from './upstream-failures.js';
import { Exchange, tasksOf, type RouteKind } from '../usage/exchange.js';
import { GenerationRates } from '../usage/estimate.js';

export interface UpstreamAnswer {
  readonly statusCode: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly text: string;
}

/**
 * Usage accounting as the proxy sees it (the usage plugin attaches one with watch()). Without
 * one, a proxied request has no Exchange and no tap reads its response.
 */
export interface ExchangeWatcher {
  /** Keep the response text in the exchange (GATEWAY_LOG_BODIES). */
  readonly logBodies: boolean;
  /** A proxied request is on its way upstream: in flight until its record is written. */
  started(exchange: Exchange): void;
  /** Its client left before the response finished. */
  clientClosed(request: FastifyRequest, exchange: Exchange): void;
}

/**
 * A request failed before any byte of llama-server's answer reached the client (issue 14): the
 * connection could not be made or was reset, or llama-server answered 502/503 (503 `loading`: it is
 * loading its model). The callback may give the request another server (a slot already taken there)
 * to try; null leaves the failure as it is. Asked at most once per request (the caller counts).
 */
export type Failover = (request: FastifyRequest, reply: FastifyReply, cause: FailoverCause) => Promise<Upstream | null>;
interface FailoverCause {
  /** llama-server said it is loading its model: the same server will do once it is ready */
  readonly loading: boolean;
  /** for the log: the error code or status */
  readonly reason: string;
}

/** Routes whose work is light (counting tokens, listing models): queued apart, sent on the light pool. */
export const LIGHT_KINDS: ReadonlySet<RouteKind> = new Set<RouteKind>(['count_tokens', 'models']);

/** The model list holds no token numbers: its bytes are counted, the rest passes unread (unless its text is logged). */
function jsonTapFor(ex: Exchange, rates: GenerationRates): Tap {
  return ex.kind === 'models' && ex.text === null ? new CountingTap(ex) : new JsonTap(ex, rates);
}

function dialectOf(kind: RouteKind): SseDialect {
  return kind === 'messages' ? 'anthropic' : 'openai';
}

const SHORT_CALL_TIMEOUT_MS = 10_000;
/**
 * connections of the gateway's own pool: the usage completer counts at most 2 at once, so one
 * more is always there for /health and /props (GETs of one path share one call)
 */
const OWN_SLOTS = 3;

export interface ShortCallOptions {
  /** ends the call (and its upstream request) when it aborts */
  signal?: AbortSignal;
  /** the whole call, from when it is queued to its body's end (default 10 s) */
  timeoutMs?: number;
}

export class Upstream {
  readonly #pool: Pool;
  readonly #light: Pool;
  readonly #own: Pool;
  /** GETs in flight, by path: concurrent callers (e.g. a burst of public /health) share one. */
  readonly #gets = new Map<string, Promise<UpstreamAnswer>>();
  readonly #basePath: string;
  /** scheme://host:port, for log lines */
  readonly #origin: string;
  readonly #authorization: string | undefined;
  readonly #headersTimeout: number;
  readonly #idleTimeout: number;
  readonly #describeBreak: (err: Error) => GatewayError;
  #watcher: ExchangeWatcher | null = null;
  #destroyed = false;
  /** llama-server's recent speed, read by the taps from its `timings` (for usage estimates) */
  readonly rates = new GenerationRates();
  /** Time from sending a request to llama-server's response headers, in seconds (per-upstream /metrics). */
  onHeaders: ((seconds: number) => void) | null = null;

  /** `apiKey`: this server's own key (upstreams file); LLM_UPSTREAM_API_KEY when not given, none when empty. */
  constructor(config: Config, baseUrl: string = config.upstreams[0]!, apiKey: string = config.upstreamApiKey) {
    const url = new URL(baseUrl);
    this.#basePath = url.pathname === '/' ? '' : url.pathname;
    this.#origin = url.origin;
    this.#authorization = apiKey === '' ? undefined : `Bearer ${apiKey}`;
    this.#headersTimeout = config.headersTimeoutMs;
    this.#idleTimeout = config.idleTimeoutMs;
    this.#describeBreak = describeBreak(config.idleTimeoutMs, () => this.#destroyed);
    // One connection per request in flight (HTTP/1.1, no pipelining); kept alive between them.
    // The pool's own timeouts are the defaults for forward(); short calls pass their own.
    //
    // No `connections` cap on the generation pool: the fair queue already bounds the requests it
    // carries to maxInflight, and undici opens a connection only when none is idle, so the pool
    // never holds more than the most requests that ran at once in the last few seconds
    // (keep-alive). maxInflight follows llama-server's /props at run time; a pool's cap cannot.
    // A fixed cap below a later slot count would hold requests the queue admitted in undici's own
    // queue, unseen (no fairness, no deadline, no keep-alive comments, not in /metrics); one above
    // it bounds nothing.
    this.#pool = new Pool(url.origin, {
      headersTimeout: config.headersTimeoutMs,
      bodyTimeout: config.idleTimeoutMs,
      connectTimeout: SHORT_CALL_TIMEOUT_MS,
      pipelining: 1,
    });
    // Clients' light calls are not bounded by the generation queue: a hard cap. Calls beyond it
    // wait in undici's queue for a free connection.
    this.#light = new Pool(url.origin, {
      headersTimeout: config.headersTimeoutMs,
      bodyTimeout: config.idleTimeoutMs,
      connectTimeout: SHORT_CALL_TIMEOUT_MS,
      pipelining: 1,
      connections: config.lightSlots,
    });
    // The gateway's own calls: apart from clients' light calls, so they never wait behind them.
    this.#own = new Pool(url.origin, {
      headersTimeout: SHORT_CALL_TIMEOUT_MS,
      bodyTimeout: SHORT_CALL_TIMEOUT_MS,
      connectTimeout: SHORT_CALL_TIMEOUT_MS,
      pipelining: 1,
      connections: OWN_SLOTS,
    });
  }

  /** Usage accounting attaches here once, when it registers (plugins/usage.ts). */
  watch(watcher: ExchangeWatcher): void {
    this.#watcher = watcher;
  }

  /**
   * Sends the request to `path` upstream (the route's canonical path: the client's URL and query
   * never reach llama-server) and replies with llama-server's status, scrubbed headers and body.
   * SSE bodies are relayed chunk by chunk; everything else is streamed as it arrives.
   */
  async forward(
    request: FastifyRequest,
    reply: FastifyReply,
    path: string,
    kind: RouteKind,
    failover?: Failover,
  ): Promise<FastifyReply | undefined> {
    const body = request.body as JsonBody | undefined;
    const dialect = dialectOf(kind);
    let bytes = body?.raw;
    let ex: Exchange | null = null;
    const watcher = this.#watcher;
    if (watcher !== null) {
      const model = body?.json.model;
      ex = new Exchange(kind, path, typeof model === 'string' ? model : null, bytes?.length ?? 0);
      // A chat stream reports its tokens only when asked; ask, and hide the answer from a client
      // that did not (sse-tap.ts drops that one chunk).
      if (kind === 'chat' && body !== undefined && needsIncludeUsage(body.json)) {
        bytes = withIncludeUsage(body.raw, body.json);
        ex.stripUsageChunk = true;
      }
      // A /v1/completions prompt array runs one task per prompt, and `n` (chat, completions) n
      // tasks per prompt; non-streamed, llama-server reports one task's usage, so the body is kept
      // to count every choice (rare). Streamed, each task sends its own usage event.
      if ((kind === 'completions' || kind === 'chat') && body !== undefined) {
        ex.prompts = tasksOf(kind, body.json);
        ex.keepBody = ex.prompts > 1 && body.json.stream !== true;
      }
      if (watcher.logBodies) ex.text = '';
      request.exchange = ex;
      watcher.started(ex);
    }
    const res = reply.raw;
    // undici takes an EventEmitter as `signal`: unlike an AbortController it costs nothing unless
    // used (measured: AbortController/DOMException was ~12% of the gateway's CPU per request).
    const signal = new EventEmitter();
    let aborted = false;
    res.once('close', () => {
      // 'close' follows every response; only one that did not finish means the client left.
      if (res.writableFinished) return;
      aborted = true;
      signal.emit('abort');
      if (ex !== null && watcher !== null) watcher.clientClosed(request, ex);
    });

    // The server asked; another one when this one fails before its answer started (failover).
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    let up: Upstream = this;
    let answer: Dispatcher.ResponseData;
    let failedText: string | null = null; // a 502/503 body read to decide on failover, not retried
    for (;;) {
      const sentAt = up.onHeaders === null ? 0 : performance.now();
      try {
        answer = await (LIGHT_KINDS.has(kind) ? up.#light : up.#pool).request({
          method: request.method,
          path: up.#basePath + path,
          headers: upstreamRequestHeaders(request.headers, request.ip, up.#authorization, body !== undefined && body.form !== true),
          body: bytes,
          signal,
        });
      } catch (err) {
        if (aborted) {
          // Nobody is waiting any more; the abort has already closed the upstream socket.
          request.log.info(
            { key: request.apiKey?.name },
            'client closed the connection before the model server answered; upstream request cancelled',
          );
          return undefined;
        }
        if (failover !== undefined && !up.#destroyed && isConnectFailure(err)) {
          const code = (err as { code?: string }).code ?? 'error';
          const next = await failover(request, reply, { loading: false, reason: code });
          if (aborted) return undefined;
          if (next !== null) {
            request.log.warn(
              { err: { code }, upstream: up.#origin, next: next.#origin },
              'upstream unreachable; request sent to another server',
            );
            up = next;
            continue;
          }
        }
        const failure = up.#toGatewayError(err, request);
        if (res.headersSent) {
          endEarlyStream(res, dialect, failure, ex);
          return undefined;
        }
        throw failure;
      }
      up.onHeaders?.((performance.now() - sentAt) / 1000);
      if (ex !== null) ex.server = up;
      const status = answer.statusCode;
      if ((status === 502 || status === 503) && failover !== undefined) {
        // Its body is small (an error); read it (bounded) to tell loading from failing, then decide.
        const text = await readErrorBody(answer.body);
        // The client left while the body was read: its slot is already given back, so a failover
        // now would take one on another server that nothing would ever give back.
        if (aborted) return undefined;
        const next = await failover(request, reply, { loading: isLoadingAnswer(status, text), reason: String(status) });
        if (aborted) return undefined;
        if (next !== null) {
          request.log.warn(
            { status, upstream: up.#origin, next: next.#origin },
            'upstream answered an error before starting; request sent again',
          );
          up = next;
          continue;
        }
        failedText = text;
      }
      break;
    }

    if (ex !== null) ex.status = answer.statusCode;
    if (failedText !== null) {
      // The error answer whose body was read for the failover decision, passed on as it came.
      if (res.headersSent) {
        if (ex !== null) ex.streamed = true;
        endEarlyStream(res, dialect, inStreamFailure(answer.statusCode, failedText), ex);
        return undefined;
      }
      const type = answer.headers['content-type'];
      if (ex !== null && watcher?.logBodies === true) ex.text = failedText;
      return reply
        .code(answer.statusCode)
        .header('content-type', typeof type === 'string' ? type : 'application/json; charset=utf-8')
        .send(failedText);
    }
    const type = answer.headers['content-type'];
    const sse = typeof type === 'string' && type.startsWith('text/event-stream');
    if (res.headersSent) {
      // The fair queue already started this stream (200 and keep-alive comments while it waited).
      if (ex !== null) ex.streamed = true;
      if (answer.statusCode === 200 && sse) {
        relay(answer.body, res, 0, null, ex === null ? null : new SseTap(ex, this.rates), this.#sseBroken[dialect], request);
        return undefined;
      }
      // Too late for llama-server's status: its error becomes the stream's error event.
      const text = await answer.body.text().catch(() => '');
      endEarlyStream(res, dialect, inStreamFailure(answer.statusCode, text), ex);
      return undefined;
    }
    // From here the proxy writes the response itself (relay.ts); Fastify still runs the
    // onResponse hooks (request log, usage record) when it finishes.
    reply.hijack();
    const headers = reply.getHeaders() as OutgoingHttpHeaders; // CORS, rate-limit headers: set by the gateway's hooks
    const gatewayVary = headers.vary;
    copyResponseHeaders(answer.headers, headers);
    if (gatewayVary !== undefined && answer.headers.vary !== undefined)
      headers.vary = `${String(gatewayVary)}, ${String(answer.headers.vary)}`;
    if (sse) {
      if (ex !== null) ex.streamed = true;
      headers['cache-control'] = 'no-cache';
      headers['x-accel-buffering'] = 'no';
      relay(
        answer.body,
        res,
        answer.statusCode,
        headers,
        ex === null ? null : new SseTap(ex, this.rates),
        this.#sseBroken[dialect],
        request,
      );
      return undefined;
    }
    relay(answer.body, res, answer.statusCode, headers, ex === null ? null : jsonTapFor(ex, this.rates), this.#jsonBroken, request);
    return undefined;
  }

  /** A stream that breaks ends with an error event in its own dialect. */
  readonly #sseBroken: Record<SseDialect, OnBroken<FastifyRequest>> = {
    openai: (err, request) => this.#streamBroke(err, request, 'openai'),
    anthropic: (err, request) => this.#streamBroke(err, request, 'anthropic'),
  };

  #streamBroke(err: Error, request: FastifyRequest, dialect: SseDialect): BrokenEnd {
    request.log.warn({ err: { code: (err as { code?: string }).code, message: err.message } }, 'upstream stream broke');
    const failure = this.#describeBreak(err);
    if (request.exchange !== null) request.exchange.broken = failure.code === 'upstream_timeout' ? 'timeout' : 'error';
    return { event: sseErrorEvent(dialect, failure) };
  }

  /** Half a JSON body cannot be repaired: the connection is cut (or a 502 sent if nothing was). */
  readonly #jsonBroken: OnBroken<FastifyRequest> = (err, request) => {
    request.log.warn({ err: { code: (err as { code?: string }).code, message: err.message } }, 'upstream body broke');
    const timeout = (err as { code?: string }).code === 'UND_ERR_BODY_TIMEOUT';
    if (request.exchange !== null) request.exchange.broken = timeout ? 'timeout' : 'error';
    if (this.#destroyed) return SHUTTING_DOWN;
    return timeout ? UPSTREAM_TIMEOUT(this.#idleTimeout, 'idle') : UPSTREAM_BAD_RESPONSE;
  };

  /**
   * A short GET to llama-server that the gateway reads itself (health, model list, /props), on the
   * gateway's own pool. Concurrent GETs of one path share one upstream call.
   */
  get(path: string): Promise<UpstreamAnswer> {
    let answer = this.#gets.get(path);
    if (answer === undefined) {
      answer = this.#short('GET', path, undefined, {}).finally(() => this.#gets.delete(path));
      this.#gets.set(path, answer);
    }
    return answer;
  }

  /** A short JSON POST to llama-server that the gateway reads itself (token counts), on the gateway's own pool. */
  post(path: string, body: string | Buffer, opts: ShortCallOptions = {}): Promise<UpstreamAnswer> {
    return this.#short('POST', path, body, opts);
  }

  async #short(method: 'GET' | 'POST', path: string, body: string | Buffer | undefined, opts: ShortCallOptions): Promise<UpstreamAnswer> {
    const headers: Record<string, string> = body === undefined ? {} : { 'content-type': 'application/json' };
    if (this.#authorization !== undefined) headers.authorization = this.#authorization;
    const timeoutMs = opts.timeoutMs ?? SHORT_CALL_TIMEOUT_MS;
    // undici's headersTimeout starts at dispatch, not while the call waits for a connection: one
    // timer bounds the whole call (and a caller's signal ends it).
    const signal = new EventEmitter();
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      signal.emit('abort');
    }, timeoutMs);
    timer.unref();
    const outer = opts.signal;
    const onAbort = (): void => {
      signal.emit('abort');
    };
    if (outer !== undefined) {
      if (outer.aborted) onAbort();
      else outer.addEventListener('abort', onAbort, { once: true });
    }
    try {
      if (outer?.aborted === true) throw new Error('aborted');
      const answer = await this.#own.request({ method, path: this.#basePath + path, headers, body, signal });
      return { statusCode: answer.statusCode, headers: answer.headers, text: await answer.body.text() };
    } catch (err) {
      if (timedOut && !this.#destroyed) throw UPSTREAM_TIMEOUT(timeoutMs, 'call');
      throw this.#toGatewayError(err);
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener('abort', onAbort);
    }
  }

  #toGatewayError(err: unknown, request?: FastifyRequest): GatewayError {
    if (this.#destroyed) return SHUTTING_DOWN;
    request?.log.warn({ err: { code: (err as { code?: string }).code, message: (err as Error).message } }, 'upstream request failed');
    return request === undefined ? failureOf(err, SHORT_CALL_TIMEOUT_MS, 'call') : failureOf(err, this.#headersTimeout, 'headers');
  }

  /** Ends every upstream request at once (shutdown after the grace period). Idempotent. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    await Promise.all([this.#pool.destroy(), this.#light.destroy(), this.#own.destroy()]);
  }

  async close(): Promise<void> {
    await Promise.all([this.#pool.close(), this.#light.close(), this.#own.close()]);
  }
}
