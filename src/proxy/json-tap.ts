// Looks at a non-streamed upstream body (JSON) on its way through the relay, unchanged, and reads
// its token numbers. Bodies can be large (embeddings, base64), so it keeps only references to the
// first and the last 16 KiB of chunks (no copies while the body passes).
//
// `usage` is read only where the response format puts it: a key of the body's top-level object.
// Content never counts: a tool call whose arguments hold `"usage":{"input_tokens":0}` sits deeper
// (Anthropic's tool_use.input comes before the real usage), and a model's text is inside strings.
// llama-server writes `usage` near the end (chat, completions, messages, responses: found by
// scanning back from the body's final `}`) or near the start (embeddings, rerank: scanned forward
// from the first `{`). Both scans work on bytes (every structural character is ASCII, and UTF-8
// never puts an ASCII byte inside a multi-byte character), skip strings escape-aware with native
// indexOf, track depth, and stop at the key they want; only the usage object itself is decoded.
import type { Tap } from './relay.js';
import type { GenerationRates } from '../usage/estimate.js';
import type { Exchange } from '../usage/exchange.js';

const EDGE = 16 * 1024;
const MAX_TEXT = 1 << 20;
/** a non-streamed prompt array's body is kept for counting its choices up to this size */
const MAX_KEPT_BODY = 16 << 20;

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;

const USAGE = Buffer.from('usage');
const TIMINGS = Buffer.from('timings');
const FROM_END_KEYS: readonly Buffer[] = [USAGE, TIMINGS];
const FROM_START_KEYS: readonly Buffer[] = [USAGE];

function isSpace(c: number | undefined): boolean {
  return c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;
}

/**
 * Strings between structural characters are short (keys, numbers' neighbours, ids): a byte loop
 * finds their quotes faster than a native indexOf call each; a long string (a model's text) goes to
 * indexOf after this many bytes.
 */
const SHORT_SCAN = 48;

/** The last `"` at or before `from` (-1: none). */
function quoteBefore(buf: Buffer, from: number): number {
  const stop = from - SHORT_SCAN;
  for (let i = from; i >= 0; i--) {
    if (buf[i] === QUOTE) return i;
    // (a negative offset would make lastIndexOf count from the end: at 0 there is nothing left)
    if (i === stop) return i === 0 ? -1 : buf.lastIndexOf(QUOTE, i - 1);
  }
  return -1;
}

/** The first `"` at or after `from` (-1: none). */
function quoteAfter(buf: Buffer, from: number): number {
  const stop = from + SHORT_SCAN;
  for (let i = from; i < buf.length; i++) {
    if (buf[i] === QUOTE) return i;
    if (i === stop) return buf.indexOf(QUOTE, i + 1);
  }
  return -1;
}

/** True when `buf[at, at + key.length)` holds `key` (keys are a few bytes: no native call). */
export function holds(buf: Buffer, at: number, key: Buffer): boolean {
  for (let i = 0; i < key.length; i++) if (buf[at + i] !== key[i]) return false;
  return true;
}

/** True when the quote at `at` is escaped (an odd run of backslashes before it, not before `floor`). */
function escaped(buf: Buffer, at: number, floor: number): boolean {
  let b = at - 1;
  while (b >= floor && buf[b] === BACKSLASH) b--;
  return (at - 1 - b) % 2 === 1;
}

/**
 * The object values of the top-level `keys` of the JSON object that ends `buf`, scanning back from
 * its final `}`: `buf` may be only the body's tail. A key is taken only where the depth between it
 * and the final `}` never went below the top level (and never past the object's opening `{`); a
 * string cut by the start of `buf` ends the scan. Going backwards string state is exact, because
 * the scan starts outside any string and inside strings every quote is escaped. Returns one entry
 * per key (a view into `buf`, or undefined).
 */
export function topLevelFromEnd(buf: Buffer, keys: readonly Buffer[]): (Buffer | undefined)[] {
  const found: (Buffer | undefined)[] = new Array<Buffer | undefined>(keys.length).fill(undefined);
  let missing = keys.length;
  let j = buf.length - 1;
  while (j >= 0 && isSpace(buf[j])) j--;
  if (j < 0 || buf[j] !== CLOSE_OBJECT) return found;
  let depth = 1;
  // The latest object value met at the top level: its `{` and its `}`.
  let valueStart = -1;
  let valueEnd = -1;
  let closeAt = -1;
  for (j--; j >= 0;) {
    const c = buf[j]!;
    if (c === QUOTE) {
      let k = j - 1;
      for (;;) {
        if (k < 0) return found; // the string began before what we have
        k = quoteBefore(buf, k);
        if (k < 0) return found;
        if (!escaped(buf, k, 0)) break;
        k--;
      }
      // A string at the top level followed by `:` is a key; its value must be the object just seen.
      if (depth === 1 && valueStart >= 0) {
        let a = j + 1;
        while (isSpace(buf[a])) a++;
        if (buf[a] === COLON) {
          a++;
          while (isSpace(buf[a])) a++;
          if (a === valueStart) {
            for (let i = 0; i < keys.length; i++) {
              const key = keys[i]!;
              if (found[i] === undefined && j - k - 1 === key.length && holds(buf, k + 1, key)) {
                found[i] = buf.subarray(valueStart, valueEnd + 1);
                if (--missing === 0) return found;
              }
            }
          }
        }
      }
      j = k - 1;
      continue;
    }
    if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
      if (depth === 1) closeAt = c === CLOSE_OBJECT ? j : -1;
      depth++;
    } else if (c === OPEN_OBJECT || c === OPEN_ARRAY) {
      depth--;
      if (depth === 0) return found; // the body's opening `{`: nothing before it counts
      if (depth === 1) {
        valueStart = c === OPEN_OBJECT && closeAt >= 0 ? j : -1;
        valueEnd = closeAt;
      }
    }
    j--;
  }
  return found;
}

/**
 * The object values of the top-level `keys` of the JSON object that starts `buf`, scanning forward
 * from its first `{` (for bodies that put usage first: embeddings, rerank). `buf` may be only the
 * body's head: a value cut by its end is not returned.
 */
export function topLevelFromStart(buf: Buffer, keys: readonly Buffer[]): (Buffer | undefined)[] {
  const found: (Buffer | undefined)[] = new Array<Buffer | undefined>(keys.length).fill(undefined);
  let missing = keys.length;
  let i = 0;
  while (isSpace(buf[i])) i++;
  if (buf[i] !== OPEN_OBJECT) return found;
  let depth = 1;
  let want = -1; // the key whose value starts at valueStart
  let valueStart = -1;
  for (i++; i < buf.length;) {
    const c = buf[i]!;
    if (c === QUOTE) {
      let k = i + 1;
      for (;;) {
        k = quoteAfter(buf, k);
        if (k < 0) return found; // cut inside a string
        if (!escaped(buf, k, i + 1)) break;
        k++;
      }
      if (depth === 1) {
        let a = k + 1;
        while (isSpace(buf[a])) a++;
        if (buf[a] === COLON) {
          a++;
          while (isSpace(buf[a])) a++;
          if (buf[a] === OPEN_OBJECT) {
            for (let n = 0; n < keys.length; n++) {
              const key = keys[n]!;
              if (found[n] === undefined && k - i - 1 === key.length && holds(buf, i + 1, key)) {
                want = n;
                valueStart = a;
                break;
              }
            }
          }
          i = a;
          continue;
        }
      }
      i = k + 1;
      continue;
    }
    if (c === OPEN_OBJECT || c === OPEN_ARRAY) depth++;
    else if (c === CLOSE_OBJECT || c === CLOSE_ARRAY) {
      depth--;
      if (depth === 0) return found;
      if (depth === 1 && want >= 0) {
        found[want] = buf.subarray(valueStart, i + 1);
        want = -1;
        if (--missing === 0) return found;
      }
    }
    i++;
  }
  return found;
}

function parse(bytes: Buffer | undefined): unknown {
  if (bytes === undefined) return undefined;
  try {
    return JSON.parse(bytes.toString('utf8')) as unknown;
  } catch {
    return undefined;
  }
}

function joined(parts: Buffer[], bytes: number): Buffer {
  return parts.length === 1 ? parts[0]! : Buffer.concat(parts, bytes);
}

export class JsonTap implements Tap {
  readonly #ex: Exchange;
  readonly #rates: GenerationRates | null;
  /** the body's first chunks, up to EDGE bytes (the body itself while it is small) */
  #head: Buffer[] = [];
  #headBytes = 0;
  /** the latest chunks holding at least the last EDGE bytes */
  #recent: Buffer[] = [];
  #recentBytes = 0;
  /** a chunk left #recent: it no longer reaches back to the body's start */
  #dropped = false;
  #all: Buffer[] | null;
  #allBytes = 0;
  readonly #allMax: number;

  constructor(exchange: Exchange, rates: GenerationRates | null = null) {
    this.#ex = exchange;
    this.#rates = rates;
    const keep = exchange.text !== null || exchange.keepBody;
    this.#all = keep ? [] : null;
    this.#allMax = exchange.keepBody ? MAX_KEPT_BODY : MAX_TEXT;
  }

  chunk(chunk: Buffer): Buffer {
    this.#ex.bytesOut += chunk.length;
    if (this.#headBytes < EDGE) {
      this.#head.push(chunk);
      this.#headBytes += chunk.length;
    }
    this.#recent.push(chunk);
    this.#recentBytes += chunk.length;
    while (this.#recent.length > 1 && this.#recentBytes - this.#recent[0]!.length >= EDGE) {
      this.#recentBytes -= this.#recent.shift()!.length;
      this.#dropped = true;
    }
    if (this.#all !== null) {
      if (this.#allBytes < this.#allMax) this.#all.push(chunk);
      this.#allBytes += chunk.length;
    }
    return chunk;
  }

  end(): null {
    const ex = this.#ex;
    const firstUsage = ex.kind === 'embeddings' || ex.kind === 'rerank';
    let usage: Buffer | undefined;
    if (firstUsage) usage = topLevelFromStart(joined(this.#head, this.#headBytes), FROM_START_KEYS)[0];
    if (usage === undefined && this.#recent.length > 0) {
      const [u, timings] = topLevelFromEnd(joined(this.#recent, this.#recentBytes), FROM_END_KEYS);
      usage = u;
      if (timings !== undefined) this.#rates?.add(Buffer.from(timings)); // a copy: the chunk is not kept
    }
    // The other direction, when the format put it elsewhere (another llama-server version).
    if (usage === undefined && !firstUsage && this.#dropped)
      usage = topLevelFromStart(joined(this.#head, this.#headBytes), FROM_START_KEYS)[0];
    ex.applyUsage(parse(usage));
    if (this.#all !== null) {
      const whole = this.#allBytes <= this.#allMax;
      const body = Buffer.concat(this.#all);
      if (ex.keepBody) ex.body = whole ? body : null;
      if (ex.text !== null) ex.text = body.toString('utf8', 0, Math.min(body.length, MAX_TEXT));
    }
    this.#head = [];
    this.#recent = [];
    this.#all = null;
    return null;
  }
}

/**
 * The tap for answers that carry no token numbers (the model list): it counts their bytes, which is
 * all their record holds of them, without keeping chunks or scanning the body at its end.
 */
export class CountingTap implements Tap {
  readonly #ex: Exchange;

  constructor(exchange: Exchange) {
    this.#ex = exchange;
  }

  chunk(chunk: Buffer): Buffer {
    this.#ex.bytesOut += chunk.length;
    return chunk;
  }

  end(): null {
    return null;
  }
}
