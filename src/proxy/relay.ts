// Relays llama-server's answer body to the client response, chunk by chunk as it arrives: each
// chunk is written at once (after an optional tap has looked at it), and back-pressure reaches
// upstream (the body is paused until the client drains). This replaces Fastify's reply.send(stream)
// plus a Transform per response: one 'data' listener instead of two pipes, two end-of-stream
// watchers and a Transform (measured: ~10% of the gateway's CPU per small request; see
// BENCHMARKS.md). The listeners are shared functions; a relay's state hangs on its two streams.
//
// Cancellation stays with the proxy: when the client leaves, its abort signal ends the upstream
// request, which destroys the body; the relay then only has to do nothing.
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';

/** Looks at the body on its way (usage accounting). */
export interface Tap {
  /**
   * Returns what to send for this chunk: the chunk itself, other bytes (several pieces, written
   * together, rather than copied into one), or null (nothing yet).
   */
  chunk(chunk: Buffer): Buffer | Buffer[] | null;
  /** The body ended: bytes still held back, if any. */
  end(): Buffer | Buffer[] | null;
}

/**
 * The body broke before it was complete (llama-server died, idle timeout, shutdown) while the
 * client is still there. Returns what to end the response with: bytes for a response already
 * under way (a stream's final error event), an error answer for one not started yet, or null to
 * cut the connection (the only honest signal left once a JSON body is half sent).
 */
export type OnBroken<C> = (err: Error, context: C) => BrokenEnd | null;
export type BrokenEnd = { readonly event: string } | { readonly statusCode: number; readonly body: string };

const RELAY = Symbol('relay');
type Carrier = { [RELAY]?: Relay };

const JSON_ERROR_HEADERS = { 'content-type': 'application/json; charset=utf-8' };

class Relay<C = unknown> {
  constructor(
    readonly source: Readable,
    readonly res: ServerResponse,
    /** status and headers not written yet (they go out with the first bytes), or 0 */
    public status: number,
    public headers: OutgoingHttpHeaders | null,
    readonly tap: Tap | null,
    readonly onBroken: OnBroken<C>,
    readonly context: C,
  ) {}

  head(): void {
    if (this.status !== 0) {
      this.res.writeHead(this.status, this.headers ?? undefined);
      this.status = 0;
      this.headers = null;
    }
  }
}

function onData(this: Readable & Carrier, chunk: Buffer): void {
  const r = this[RELAY]!;
  const res = r.res;
  if (res.destroyed) return; // the client left; the abort signal is ending this body
  const out = r.tap === null ? chunk : r.tap.chunk(chunk);
  if (out === null || out.length === 0) return;
  if (r.status !== 0) r.head();
  if (!(Array.isArray(out) ? writeAll(res, out) : res.write(out))) {
    this.pause();
    res.once('drain', onDrain);
  }
}

/** Several pieces in one socket write; false when the response wants a 'drain' first. */
function writeAll(res: ServerResponse, pieces: readonly Buffer[]): boolean {
  let ok = true;
  res.cork();
  for (const piece of pieces) if (!res.write(piece)) ok = false;
  res.uncork();
  return ok;
}

function onDrain(this: ServerResponse & Carrier): void {
  this[RELAY]?.source.resume();
}

function onEnd(this: Readable & Carrier): void {
  const r = this[RELAY]!;
  const res = r.res;
  if (res.destroyed) return;
  const tail = r.tap === null ? null : r.tap.end();
  if (r.status !== 0) r.head();
  if (Array.isArray(tail)) {
    writeAll(res, tail);
    res.end();
  } else if (tail === null || tail.length === 0) res.end();
  else res.end(tail);
}

function onError(this: Readable & Carrier, err: Error): void {
  const r = this[RELAY]!;
  const res = r.res;
  if (res.destroyed || res.writableEnded) return; // the client left first: nothing to tell
  const last = r.onBroken(err, r.context);
  if (last === null) {
    res.destroy();
  } else if ('event' in last) {
    if (r.status !== 0) r.head();
    res.end(last.event);
  } else if (r.status !== 0) {
    // nothing sent yet: a proper error answer instead of the head llama-server sent
    r.status = 0;
    r.headers = null;
    res.writeHead(last.statusCode, JSON_ERROR_HEADERS);
    res.end(last.body);
  } else {
    res.destroy();
  }
}

/**
 * Relays `source` into `res`. `status`/`headers`: the response head, written with the first
 * bytes (pass 0/null when the head is already out, e.g. a stream the fair queue started early).
 * `onBroken` is called with `context` (shared handlers, no closure per response).
 */
export function relay<C>(
  source: Readable,
  res: ServerResponse,
  status: number,
  headers: OutgoingHttpHeaders | null,
  tap: Tap | null,
  onBroken: OnBroken<C>,
  context: C,
): void {
  // Stored without its context type: the shared listeners only hand the context back to onBroken.
  const r = new Relay<C>(source, res, status, headers, tap, onBroken, context) as unknown as Relay;
  (source as Readable & Carrier)[RELAY] = r;
  (res as ServerResponse & Carrier)[RELAY] = r;
  source.on('data', onData);
  source.on('end', onEnd);
  source.on('error', onError);
  if (res.destroyed) source.destroy();
}
