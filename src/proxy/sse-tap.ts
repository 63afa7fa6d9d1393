// (Over 400 lines, kept whole: the chunk state machine, the searches it makes in each chunk's one
// string and the readers of the events it finds share their offsets; split, each would re-derive them.)
//
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
//
// llama-server itself reports a failure after the 200 as the stream's last event
// (`data: {"error":{…}}`, or `event: error` on /v1/messages): when the stream ends, the tap looks
// at its last event only (a reference to the latest complete events, plus the unfinished one's
// pieces: nothing older is kept) and marks the exchange as an upstream error, so that it is not
// recorded as `ok`.
import type { GatewayError } from '../errors.js';
import type { Tap } from './relay.js';
import { holds, topLevelFromEnd } from './json-tap.js';
import type { GenerationRates } from '../usage/estimate.js';
import { usageInEvent, type Exchange, type RouteKind } from '../usage/exchange.js';

export type SseDialect = 'openai' | 'anthropic';

/**
 * A stream's last event for an error of the table (src/errors.ts), once its 200 is sent: in
 * OpenAI's dialect the error's own body (type and code as a response would have had them), in
 * Anthropic's its `error` event (whose types are Anthropic's: `api_error`).
 */
export function sseErrorEvent(dialect: SseDialect, err: GatewayError): string {
  if (dialect === 'anthropic') {
    return `event: error\ndata: ${JSON.stringify({ type: 'error', error: { type: 'api_error', message: err.message } })}\n\n`;
  }
  return `data: ${err.body}\n\n`;
}

const EVENT_END = Buffer.from('\n\n');
// A chunk of a token stream (a few hundred bytes) is searched as a latin1 string (one byte per
// character, so positions are byte offsets): V8's own String indexOf, without the per-call cost of
// Buffer#indexOf's native binding (measured: ~70% of the tap's time per chunk went to those calls,
// four per chunk). A larger chunk is searched where it is: a copy of every 64 KiB chunk of a big
// stream as a string grew a slow reader's RSS by +20–28 MB instead of +12 (the bench's slow-reader
// target is 20), while the native calls' cost is nothing next to such a chunk's.
const EVENT_END_TEXT = '\n\n';
/** chunks up to this size are searched as a string (a token's chunk is ~200–500 bytes) */
const AS_STRING_MAX = 4096;

/** What a chunk is searched in: the chunk itself, or (small) its latin1 string. */
type Haystack = string | Buffer;

function haystack(bytes: Buffer): Haystack {
  return bytes.length <= AS_STRING_MAX ? bytes.toString('latin1') : bytes;
}

function byteAt(hay: Haystack, i: number): number | undefined {
  return typeof hay === 'string' ? hay.charCodeAt(i) : hay[i];
}
// The needles are written without their opening quote, which is checked apart: a search looks for
// the needle's first character first, and a quote is JSON's most frequent one (measured: −35% per
// chunk for these two searches).
const USAGE = 'usage"';
// One marker per content event (≈ one token) in each API's stream ('"' + marker).
const CONTENT_MARKER: Partial<Record<RouteKind, string>> = {
  chat: 'delta":{"',
  completions: 'finish_reason":null',
  messages: 'type":"content_block_delta"',
  responses: 'type":"response.output_text.delta"',
  transcriptions: 'type":"transcript.text.delta"',
};
const QUOTE = 0x22;
const MAX_CARRY = 1 << 20; // a "partial event" this large is not SSE as llama-server writes it
const MAX_TEXT = 1 << 20;
const ERROR = Buffer.from('error');
const CRLF_EVENT_END = Buffer.from('\n\r\n');
// An event of the shape #readTopLevel reads: `data: {` … `}`, choices first (llama-server's order).
const DATA_OBJECT = 'data: {';
const DATA_PREFIX = 'data: '.length;
const CLOSE_OBJECT = 0x7d;
const CHOICES_EMPTY = '{"choices":[]';
const CHOICES_OBJECT = '{"choices":[{';
const USAGE_KEYS: readonly Buffer[] = [Buffer.from('usage'), Buffer.from('timings')];
const LF = 0x0a;
const CR = 0x0d;

/** Where the next `"` + `needle` within text[from, to) starts its needle (so at ≥ from + 1), or -1. */
function next(text: Haystack, needle: string, from: number, to: number): number {
  for (let at = text.indexOf(needle, from + 1); at >= 0 && at + needle.length <= to; at = text.indexOf(needle, at + needle.length))
    if (byteAt(text, at - 1) === QUOTE) return at;
  return -1;
}

/** Occurrences of `"` + `needle` within text[from, to), not overlapping. */
function count(text: Haystack, needle: string, from: number, to: number): number {
  let n = 0;
  for (let at = next(text, needle, from, to); at >= 0; at = next(text, needle, at + needle.length, to)) n++;
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

/**
 * True when the last event in `tail` (the end of a stream) is llama-server's error: an `event:
 * error` line, or data whose top level is an `error` object.
 */
function endsWithError(tail: Buffer): boolean {
  let end = tail.length;
  while (end > 0 && (tail[end - 1] === LF || tail[end - 1] === CR)) end--;
  if (end === 0) return false;
  const start = lastEventStart(tail, end);
  if (!holdsError(tail, start, end)) return false; // the usual last event ([DONE], a final chunk): no parse
  const text = tail.toString('utf8', start, end).replace(/\r/g, '');
  if (/^event: ?error$/m.test(text)) return true;
  const data = parse(eventData(text));
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return false;
  const error = (data as { error?: unknown }).error;
  return error !== null && typeof error === 'object' && (data as { choices?: unknown }).choices === undefined;
}

/**
 * How far back the end check looks byte by byte in JavaScript (the usual last event, `data:
 * [DONE]` or a final chunk, is shorter): no native call per stream for it, three of which cost
 * more than the rest of the check. A longer last event is searched with Buffer#lastIndexOf.
 */
const END_SCAN = 512;

/** Where the last event before `end` starts: after the last "\n\n" or "\n\r\n" (0: none). */
function lastEventStart(tail: Buffer, end: number): number {
  const floor = Math.max(1, end - END_SCAN);
  for (let j = end - 1; j >= floor; j--) {
    if (tail[j] !== LF) continue;
    if (tail[j - 1] === LF || (tail[j - 1] === CR && j >= 2 && tail[j - 2] === LF)) return j + 1;
  }
  if (floor === 1) return 0;
  const lf = tail.lastIndexOf(EVENT_END, end - 1);
  const crlf = tail.lastIndexOf(CRLF_EVENT_END, end - 1);
  return Math.max(lf < 0 ? 0 : lf + 2, crlf < 0 ? 0 : crlf + 3);
}

/** True when tail[start, end) holds `error`. */
function holdsError(tail: Buffer, start: number, end: number): boolean {
  if (end - start > END_SCAN) return tail.subarray(start, end).includes(ERROR);
  for (let i = start; i + ERROR.length <= end; i++) if (holds(tail, i, ERROR)) return true;
  return false;
}

export class SseTap implements Tap {
  readonly #ex: Exchange;
  readonly #rates: GenerationRates | null;
  readonly #marker: string | undefined;
  /**
   * The complete events that ended last (a view into their chunk, or the joined pieces of one that
   * spanned several), for the look at the stream's last event. Only these: a window of the latest
   * chunks (8–16 KiB) kept each chunk alive for ~60 more chunks, past two scavenges, so every chunk
   * of every stream was promoted to the old generation (mark-compact pauses of 5–12 ms during the
   * bench's 100-stream burst, chunk lag p99 14 ms instead of ~3.5 with usage off).
   */
  #lastEvents: Buffer | null = null;
  /**
   * The unfinished event at the end of what came so far: the pieces as they arrived, not copied
   * (a slow reader of big events would otherwise copy every chunk once more). Looked at, and in
   * filtering mode sent, once the event is complete.
   */
  #parts: Buffer[] = [];
  #partsBytes = 0;
  /** an unfinished event too large to hold (not SSE as llama-server writes it): it passes unread */
  #skipping = false;
  /** the last byte seen was "\n" (an event end can straddle two chunks) */
  #lastNewline = false;

  constructor(exchange: Exchange, rates: GenerationRates | null = null) {
    this.#ex = exchange;
    this.#rates = rates;
    this.#marker = CONTENT_MARKER[exchange.kind];
  }

  chunk(chunk: Buffer): Buffer | Buffer[] | null {
    if (chunk.length === 0) return null;
    const strip = this.#ex.stripUsageChunk;
    const text = haystack(chunk);
    // Where the first event that ends in this chunk ends (just after its "\n\n").
    let first: number;
    if (this.#lastNewline && chunk[0] === LF && (this.#partsBytes > 0 || this.#skipping)) first = 1;
    else {
      const at = text.indexOf(EVENT_END_TEXT);
      first = at < 0 ? -1 : at + 2;
    }
    this.#lastNewline = chunk[chunk.length - 1] === LF;

    if (first < 0) {
      // All of it belongs to the unfinished event.
      if (this.#skipping) return this.#sent(chunk);
      this.#hold(chunk);
      if (this.#partsBytes > MAX_CARRY) return this.#sent(this.#giveUp(strip, chunk));
      return strip ? null : this.#sent(chunk);
    }

    // Where the last event that ends in this chunk ends. Usually one event per chunk: no second scan.
    let last = first;
    if (first < chunk.length - 1) {
      const at = text.lastIndexOf(EVENT_END_TEXT);
      if (at + 2 > first) last = at + 2;
    }
    const head = first === chunk.length ? chunk : chunk.subarray(0, first);
    // The event that was unfinished is complete now (or, too large, was passed on unread).
    let headOut: Buffer;
    if (this.#skipping) {
      this.#skipping = false;
      headOut = head;
      this.#lastEvents = head; // the end of the event passed on unread
    } else if (this.#partsBytes === 0) {
      headOut = this.#look(head, strip, text, 0);
      this.#lastEvents = head;
    } else {
      const whole = Buffer.concat([...this.#parts, head], this.#partsBytes + head.length);
      headOut = this.#look(whole, strip);
      this.#lastEvents = whole;
    }
    if (this.#parts.length !== 0) {
      this.#parts = [];
      this.#partsBytes = 0;
    }
    let middleOut: Buffer | null = null;
    if (last > first) {
      const middle = chunk.subarray(first, last);
      middleOut = this.#look(middle, strip, text, first);
      this.#lastEvents = middle;
    }
    let restOut: Buffer | Buffer[] | null = null;
    if (last < chunk.length) {
      const rest = chunk.subarray(last);
      this.#hold(rest);
      if (this.#partsBytes > MAX_CARRY) restOut = this.#giveUp(strip, rest);
    }
    // Unfiltered, the chunk goes on as it came (held pieces were sent when they arrived).
    if (!strip) return this.#sent(chunk);
    if (middleOut === null && restOut === null) return headOut.length > 0 ? this.#sent(headOut) : null; // one event: no array
    const out: Buffer[] = [];
    if (headOut.length > 0) out.push(headOut);
    if (middleOut !== null && middleOut.length > 0) out.push(middleOut);
    if (restOut !== null) out.push(...(Array.isArray(restOut) ? restOut : [restOut]));
    if (out.length === 0) return null;
    return this.#sent(out.length === 1 ? out[0]! : out);
  }

  /** The body ended: an unfinished last event held back for filtering goes out as it is. */
  end(): Buffer | Buffer[] | null {
    if (this.#ex.broken === null) {
      // The last event: the unfinished one's pieces after the complete events that ended last
      // (endsWithError skips trailing newlines: pieces holding only an event end's first "\n" do
      // not hide the event before them).
      const last = this.#lastEvents;
      const held =
        this.#partsBytes === 0 ? null : this.#parts.length === 1 ? this.#parts[0]! : Buffer.concat(this.#parts, this.#partsBytes);
      const tail = held === null ? last : last === null ? held : Buffer.concat([last, held], last.length + held.length);
      if (tail !== null && endsWithError(tail)) this.#ex.broken = 'error';
    }
    this.#lastEvents = null;
    const parts = this.#ex.stripUsageChunk && !this.#skipping ? this.#parts : [];
    this.#parts = [];
    this.#partsBytes = 0;
    if (parts.length === 0) return null;
    return this.#sent(parts.length === 1 ? parts[0]! : parts);
  }

  #hold(piece: Buffer): void {
    this.#parts.push(piece);
    this.#partsBytes += piece.length;
  }

  /**
   * An unfinished event over MAX_CARRY: stop holding it. Returns what of it must go now (not yet
   * counted): all held pieces when filtering, else only the latest (the others went when they came).
   */
  #giveUp(strip: boolean, latest: Buffer): Buffer | Buffer[] {
    const held = this.#parts;
    this.#parts = [];
    this.#partsBytes = 0;
    this.#skipping = true;
    return strip ? held : latest;
  }

  #sent<T extends Buffer | Buffer[]>(out: T): T {
    const sent: Buffer | Buffer[] = out; // a union, not T: Array.isArray narrows it both ways
    if (Array.isArray(sent)) for (const b of sent) this.#ex.bytesOut += b.length;
    else this.#ex.bytesOut += sent.length;
    return out;
  }

  /**
   * Counts and reads the complete events in `region`; returns what of it to send on. `text`: what
   * the chunk `region` lies in is searched in, with `region` from `from` on (else `region`'s own).
   */
  #look(region: Buffer, strip: boolean, text: Haystack = haystack(region), from = 0): Buffer {
    const ex = this.#ex;
    const to = from + region.length;
    const events = this.#marker === undefined ? 0 : count(text, this.#marker, from, to);
    if (events > 0) {
      if (ex.firstContentAt === 0) ex.firstContentAt = performance.now();
      ex.contentEvents += events;
    }
    if (ex.text === null && next(text, USAGE, from, to) < 0) return region;
    return this.#readEvents(ex, region, strip, text, from);
  }

  /**
   * Parses the complete events in `region` for usage (and text); returns what to send on. `text`
   * and `from` as for #look.
   */
  #readEvents(ex: Exchange, region: Buffer, strip: boolean, text: Haystack, from: number): Buffer {
    if (ex.text === null && (ex.kind === 'chat' || ex.kind === 'completions')) {
      const out = this.#readTopLevel(ex, region, strip, text, from);
      if (out !== null) return out;
    }
    const events = region.toString('utf8').split('\n\n');
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
      if (hasUsage) {
        ex.applyUsage(usageInEvent(ex.kind, data));
        // llama-server's speed rides on the same event (chat, completions): for estimates.
        const timings = (data as { timings?: unknown } | undefined)?.timings;
        if (this.#rates !== null && timings !== null && typeof timings === 'object') this.#rates.add(timings);
      }
      // The usage-only chat chunk ({"choices":[], "usage":…}) that only the gateway asked for.
      const usageOnly =
        strip &&
        hasUsage &&
        Array.isArray((data as { choices?: unknown } | undefined)?.choices) &&
        (data as { choices: unknown[] }).choices.length === 0;
      if (usageOnly) dropped = true;
      else if (kept !== undefined) kept += `${event}\n\n`;
    }
    if (kept === undefined || !dropped) return region;
    return Buffer.from(kept, 'utf8');
  }

  /**
   * #readEvents for chat and completions streams as llama-server writes them: each event that
   * mentions usage is one `data: {…}` line whose `usage` and `timings` are top-level keys. Only
   * those two values are read (the scan the non-streamed tap uses, json-tap.ts), not the whole
   * event (~550 bytes of JSON with its id, model and timings: the largest part of the tap's cost
   * per stream), and the usage-only chunk is cut out of the bytes as they came instead of the
   * events being decoded and written again. Returns null, having changed nothing, when an event
   * is not of that shape: the general path reads the region then.
   */
  #readTopLevel(ex: Exchange, region: Buffer, strip: boolean, text: Haystack, from: number): Buffer | null {
    // Searched in `text` (the chunk's string, when small: no native call per search), at `from` +
    // the offset in `region`. Where each event that mentions usage lies: [start, end) pairs of
    // offsets in `region`, end at its "\n\n".
    let spans: number[] | null = null;
    const to = from + region.length;
    for (let at = from; at < to;) {
      const found = text.indexOf(EVENT_END_TEXT, at);
      const end = found < 0 || found >= to ? to : found;
      if (next(text, USAGE, at, end) >= 0) {
        if (!startsWith(text, at, DATA_OBJECT) || byteAt(text, end - 1) !== CLOSE_OBJECT) return null;
        const lf = text.indexOf('\n', at);
        if (lf >= 0 && lf < end) return null; // data on several lines
        // Usage-only: a chunk whose choices are `[]`; one with choices has `[{`. Else: not decided here.
        if (strip && !startsWith(text, at + DATA_PREFIX, CHOICES_EMPTY) && !startsWith(text, at + DATA_PREFIX, CHOICES_OBJECT)) return null;
        (spans ??= []).push(at - from, end - from);
      }
      if (end === to) break;
      at = end + 2;
    }
    if (spans === null) return region;
    let out = region;
    let cut = 0; // bytes cut out of `region` before the span being read
    for (let i = 0; i < spans.length; i += 2) {
      const start = spans[i]!;
      const end = spans[i + 1]!;
      const [usage, timings] = topLevelFromEnd(region.subarray(start + DATA_PREFIX, end), USAGE_KEYS);
      ex.applyUsage(parse(usage?.toString('utf8')));
      // llama-server's speed rides on the same event: for estimates (a copy: the chunk is not kept).
      if (timings !== undefined) this.#rates?.add(Buffer.from(timings));
      if (strip && startsWith(text, from + start + DATA_PREFIX, CHOICES_EMPTY)) {
        // The usage-only chat chunk that only the gateway asked for: out, with its "\n\n".
        const drop = Math.min(end + 2, region.length);
        const before = out.subarray(0, start - cut);
        const after = out.subarray(drop - cut);
        out = after.length === 0 ? before : before.length === 0 ? after : Buffer.concat([before, after], before.length + after.length);
        cut += drop - start;
      }
    }
    return out;
  }
}

/** True when `text` holds `prefix` (ASCII) at `at`. */
function startsWith(text: Haystack, at: number, prefix: string): boolean {
  if (typeof text === 'string') return text.startsWith(prefix, at);
  if (at + prefix.length > text.length) return false;
  for (let i = 0; i < prefix.length; i++) if (text[at + i] !== prefix.charCodeAt(i)) return false;
  return true;
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
