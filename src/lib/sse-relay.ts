// Looks at an upstream SSE body on its way to the client (through the relay, chunk by chunk as it
// arrives, with back-pressure). On the side it reads what usage accounting needs: it counts content
// events (for an estimate if the client leaves) and parses only the events that carry `"usage"`. It
// never holds a chunk back, with one exception: when the gateway itself asked llama-server for
// usage (the client did not), it works at event boundaries so it can drop the usage-only chunk the
// client did not ask for.
//
// If the upstream stream breaks (llama-server crashed, idle timeout, shutdown), the client gets a
// final error event in the stream's own dialect and a clean end instead of a hang or a silently
// truncated answer; OpenAI and Anthropic SDKs raise that event as an API error.
import type { Tap } from './relay.js';
import { usageInEvent, type Exchange, type RouteKind } from './usage.js';

export type SseDialect = 'openai' | 'anthropic';

export function sseErrorEvent(dialect: SseDialect, message: string, code: string): string {
  if (dialect === 'anthropic') {
    return `event: error\ndata: ${JSON.stringify({ type: 'error', error: { type: 'api_error', message } })}\n\n`;
  }
  return `data: ${JSON.stringify({ error: { message, type: 'upstream_error', param: null, code } })}\n\n`;
}

export interface BrokenStream {
  readonly message: string;
  readonly code: string;
}

const EVENT_END = Buffer.from('\n\n');
const USAGE = Buffer.from('"usage"');
// One marker per content event (≈ one token) in each API's stream.
const CONTENT_MARKER: Partial<Record<RouteKind, Buffer>> = {
  chat: Buffer.from('"delta":{"'),
  completions: Buffer.from('"finish_reason":null'),
  messages: Buffer.from('"type":"content_block_delta"'),
  responses: Buffer.from('"type":"response.output_text.delta"'),
};
const MAX_CARRY = 1 << 20; // a "partial event" this large is not SSE as llama-server writes it
const MAX_TEXT = 1 << 20;

function count(haystack: Buffer, needle: Buffer): number {
  let n = 0;
  for (let at = haystack.indexOf(needle); at >= 0; at = haystack.indexOf(needle, at + needle.length)) n++;
  return n;
}

/** The data of each event in `text` (multi-line data joined with \n). */
function eventData(event: string): string | undefined {
  let data: string | undefined;
  for (const line of event.split('\n')) {
    if (line.startsWith('data:')) {
      const value = line.charCodeAt(5) === 0x20 ? line.slice(6) : line.slice(5);
      data = data === undefined ? value : `${data}\n${value}`;
    }
  }
  return data;
}

function parse(data: string | undefined): unknown {
  if (data === undefined || data === '[DONE]') return undefined;
  try {
    return JSON.parse(data) as unknown;
  } catch {
    return undefined;
  }
}

export class SseTap implements Tap {
  readonly #ex: Exchange;
  readonly #marker: Buffer | undefined;
  /** bytes after the last complete event (scanned with the next chunk) */
  #carry: Buffer | null = null;

  constructor(exchange: Exchange) {
    this.#ex = exchange;
    this.#marker = CONTENT_MARKER[exchange.kind];
  }

  chunk(chunk: Buffer): Buffer | null {
    const ex = this.#ex;
    const whole = this.#carry === null ? chunk : Buffer.concat([this.#carry, chunk]);
    const boundary = whole.lastIndexOf(EVENT_END);
    const complete = boundary < 0 ? null : whole.subarray(0, boundary + 2);
    const rest = boundary < 0 ? whole : whole.subarray(boundary + 2);
    this.#carry = rest.length === 0 || rest.length > MAX_CARRY ? null : rest;

    let out: Buffer | null = chunk;
    if (complete !== null) {
      const events = this.#marker === undefined ? 0 : count(complete, this.#marker);
      if (events > 0) {
        if (ex.firstContentAt === 0) ex.firstContentAt = performance.now();
        ex.contentEvents += events;
      }
      const scan = complete.includes(USAGE) || ex.text !== null;
      const kept = scan ? this.#readEvents(ex, complete, ex.stripUsageChunk) : complete;
      // Without filtering the chunk goes on as it came (earlier carried bytes were already sent).
      if (ex.stripUsageChunk) out = kept;
    } else if (ex.stripUsageChunk) {
      out = null; // nothing complete yet; the partial event waits in #carry
    }
    if (ex.stripUsageChunk && this.#carry === null && rest.length > MAX_CARRY) out = whole; // give up filtering
    if (out === null || out.length === 0) return null;
    ex.bytesOut += out.length;
    return out;
  }

  /** The body ended: an unfinished last event held back for filtering goes out as it is. */
  end(): Buffer | null {
    const carry = this.#ex.stripUsageChunk ? this.#carry : null;
    this.#carry = null;
    if (carry !== null) this.#ex.bytesOut += carry.length;
    return carry;
  }

  /** Parses the complete events in `region` for usage (and text); returns what to send on. */
  #readEvents(ex: Exchange, region: Buffer, strip: boolean): Buffer {
    const text = region.toString('utf8');
    const events = text.split('\n\n');
    let kept = strip ? '' : undefined;
    let dropped = false;
    for (let i = 0; i < events.length - 1; i++) {
      const event = events[i]!;
      const hasUsage = event.includes('"usage"');
      if (!hasUsage && ex.text === null) {
        if (kept !== undefined) kept += `${event}\n\n`;
        continue;
      }
      const data = parse(eventData(event));
      if (ex.text !== null && ex.text.length < MAX_TEXT) ex.text += contentText(ex.kind, data);
      if (hasUsage) ex.applyUsage(usageInEvent(data));
      // The usage-only chat chunk ({"choices":[], "usage":…}) that only the gateway asked for.
      const usageOnly = strip && hasUsage && Array.isArray((data as { choices?: unknown } | undefined)?.choices) && (data as { choices: unknown[] }).choices.length === 0;
      if (usageOnly) dropped = true;
      else if (kept !== undefined) kept += `${event}\n\n`;
    }
    if (kept === undefined || !dropped) return region;
    return Buffer.from(kept, 'utf8');
  }
}

/** The text a content event adds (only gathered with GATEWAY_LOG_BODIES). */
function contentText(kind: RouteKind, data: unknown): string {
  if (data === null || typeof data !== 'object') return '';
  const o = data as Record<string, unknown>;
  if (kind === 'chat') {
    const delta = (o.choices as { delta?: { content?: unknown } }[] | undefined)?.[0]?.delta;
    return typeof delta?.content === 'string' ? delta.content : '';
  }
  if (kind === 'completions') {
    const t = (o.choices as { text?: unknown }[] | undefined)?.[0]?.text;
    return typeof t === 'string' ? t : '';
  }
  if (kind === 'messages') {
    const d = o.delta as { text?: unknown } | undefined;
    return o.type === 'content_block_delta' && typeof d?.text === 'string' ? d.text : '';
  }
  if (kind === 'responses') return o.type === 'response.output_text.delta' && typeof o.delta === 'string' ? o.delta : '';
  return '';
}
