// How a failed upstream request is told to the client: a status and OpenAI-shaped error before
// the response started (failureOf), an error event in the stream's own dialect after (a stream
// the fair queue started early, or one that broke). Used by the Upstream (upstream.ts).
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import {
  SHUTTING_DOWN,
  UPSTREAM_BAD_RESPONSE,
  UPSTREAM_STATUS_IN_STREAM,
  UPSTREAM_STREAM_BROKEN,
  UPSTREAM_TIMEOUT,
  UPSTREAM_UNREACHABLE,
  upstreamErrorInStream,
  type GatewayError,
  type UpstreamWait,
} from '../errors.js';
import { sseErrorEvent, type SseDialect } from './sse-tap.js';
import type { Exchange } from '../usage/exchange.js';

/** An upstream request that failed before its answer started (undici's error) as the gateway's error. */
export function failureOf(err: unknown, timeoutMs: number, wait: UpstreamWait): GatewayError {
  const code = (err as { code?: string }).code;
  if (code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') return UPSTREAM_TIMEOUT(timeoutMs, wait);
  if ((err as Error).name === 'HTTPParserError' || code?.startsWith('HPE_') === true) return UPSTREAM_BAD_RESPONSE; // not HTTP
  // ECONNREFUSED, ENOTFOUND, ECONNRESET, UND_ERR_SOCKET, UND_ERR_CONNECT_TIMEOUT, …
  return UPSTREAM_UNREACHABLE;
}

/**
 * A request that failed this way never reached llama-server's work (nothing listened, the connection
 * was refused, reset or could not be made in time), so it may be sent to another server.
 * A headers timeout is not one: llama-server may have run the request for minutes.
 */
export function isConnectFailure(err: unknown): boolean {
  const code = (err as { code?: string }).code;
  return (
    code === 'ECONNREFUSED' ||
    code === 'ECONNRESET' ||
    code === 'EPIPE' ||
    code === 'EHOSTUNREACH' ||
    code === 'ENETUNREACH' ||
    code === 'UND_ERR_SOCKET' ||
    code === 'UND_ERR_CONNECT_TIMEOUT' ||
    code === 'UND_ERR_CLOSED'
  );
}

const ERROR_BODY_MAX_BYTES = 64 * 1024;
const ERROR_BODY_MAX_MS = 5000;

/**
 * A 502/503 body read to decide on failover: at most 64 KiB within 5 s (llama-server's are ~100
 * bytes). Beyond either, the body is dropped and '' stands for it: the answer is not "loading".
 */
export async function readErrorBody(body: Readable): Promise<string> {
  const chunks: Buffer[] = [];
  let bytes = 0;
  let timer: NodeJS.Timeout | undefined;
  try {
    const read = (async (): Promise<boolean> => {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        bytes += chunk.length;
        if (bytes > ERROR_BODY_MAX_BYTES) return false;
        chunks.push(chunk);
      }
      return true;
    })();
    read.catch(() => undefined); // destroyed below when late: its end is of no interest
    const late = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), ERROR_BODY_MAX_MS);
      timer.unref();
    });
    const whole = await Promise.race([read, late]).catch(() => false);
    if (!whole) {
      body.destroy();
      return '';
    }
    return Buffer.concat(chunks).toString('utf8');
  } finally {
    clearTimeout(timer);
  }
}

/** llama-server's 503 while it loads its model ({"error":{"message":"Loading model",…}}). */
export function isLoadingAnswer(status: number, text: string): boolean {
  return status === 503 && text.includes('Loading model');
}

/** Ends a stream whose 200 is already sent with an error event (what else can still be said). */
export function endEarlyStream(res: ServerResponse, dialect: SseDialect, err: GatewayError, ex: Exchange | null): void {
  if (ex !== null) ex.broken = err.code === 'upstream_timeout' || err.code === 'queue_timeout' ? 'timeout' : 'error';
  if (!res.destroyed) res.end(sseErrorEvent(dialect, err));
}

/**
 * llama-server's error answer (its status and body) after the stream had started: its own error
 * ({error: {message, type}}) passed on, else its status.
 */
export function inStreamFailure(status: number, text: string): GatewayError {
  try {
    const e = (JSON.parse(text) as { error?: { message?: unknown; type?: unknown } }).error;
    if (typeof e?.message === 'string') return upstreamErrorInStream(e.message, typeof e.type === 'string' ? e.type : 'upstream_error');
  } catch {
    // not JSON
  }
  return UPSTREAM_STATUS_IN_STREAM(status);
}

/** What to tell the client when a stream from upstream breaks after it started. */
export function describeBreak(idleTimeoutMs: number, shuttingDown: () => boolean) {
  return (err: Error): GatewayError => {
    if (shuttingDown()) return SHUTTING_DOWN;
    if ((err as { code?: string }).code === 'UND_ERR_BODY_TIMEOUT') return UPSTREAM_TIMEOUT(idleTimeoutMs, 'stream');
    return UPSTREAM_STREAM_BROKEN;
  };
}
