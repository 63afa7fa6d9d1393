// What a client controls, and how much of it the gateway accepts or keeps (issue #12). Everything a
// request carries that ends up in a usage record, the audit log, a metrics label, a log line or an
// error message is capped here, so that no client can grow the heap, the database or a scrape with
// a huge string, and no query string (where clients put keys: ?api_key=sk-…) reaches a log.
//
// Per field, on purpose:
//   - the body's `model` is refused (400) when longer than MAX_MODEL_LENGTH: it is forwarded and
//     would be kept whole in records and labels; no real model id is that long;
//   - the body's nesting is refused (400) beyond MAX_JSON_DEPTH: llama-server itself crashes
//     (SIGSEGV) on very deep bodies, and the gateway's own re-serialisation overflows the stack;
//   - the user-agent, the path and the client address are only recorded, so they are cut (or, for
//     the address, dropped when it is not an IP) rather than refused.
import net from 'node:net';

/** Longest `model` accepted in a request body (OpenAI's ids are < 100 characters). */
export const MAX_MODEL_LENGTH = 256;
/** Deepest nesting of objects/arrays accepted in a JSON body (`{}` is depth 1). */
export const MAX_JSON_DEPTH = 128;
/**
 * Most items in a body's `input` (embeddings, responses), `prompt` (completions) or `documents`
 * (rerank) array: OpenAI's limit for embeddings inputs. llama-server runs one task per item and
 * does not stop them when the client leaves: 50,000 inputs froze it for minutes (red team).
 */
export const MAX_ARRAY_ITEMS = 2048;
/** The body fields whose arrays are one llama-server task per item. */
export const TASK_ARRAYS = ['input', 'prompt', 'documents'] as const;
/**
 * Deepest nesting of parentheses accepted in a body's `grammar` (GBNF). llama-server b10587 parses
 * it recursively and dies (SIGSEGV, stack overflow) at ~20,000 levels (red team, issue 14): one
 * request would kill the server, and, being a reset before any answer, the next server of the model
 * too through failover. Real grammars nest a few levels.
 */
export const MAX_GRAMMAR_DEPTH = 1000;

/** The deepest nesting of `(` … `)` in a grammar string, stopping as soon as it exceeds `max`. */
export function grammarDeeperThan(grammar: string, max: number): boolean {
  let depth = 0;
  for (let i = 0; i < grammar.length; i++) {
    const c = grammar.charCodeAt(i);
    if (c === 0x28 /* ( */) {
      if (++depth > max) return true;
    } else if (c === 0x29 /* ) */ && depth > 0) depth--;
  }
  return false;
}

/** User-agent characters kept in a usage record. */
export const MAX_USER_AGENT_LENGTH = 300;
/** Path characters kept in a log line or a usage record's route. */
const MAX_LOGGED_PATH_LENGTH = 1024;
/** Characters of a client's string echoed back in an error message. */
export const MAX_ECHOED_LENGTH = 200;
/** Characters of a framework error's message (which may quote the request) kept in an answer or log line. */
export const MAX_ERROR_DETAIL_LENGTH = 500;
/** Longest textual IP address (an IPv6 address with an IPv4 tail: 45 characters). */
const MAX_IP_LENGTH = 45;

/** What a log line shows instead of a query string's names and values (either may be a key). */
const QUERY_REMOVED = '?[query removed]';

/**
 * The request target as a log line or record may show it: the path only, cut at
 * MAX_LOGGED_PATH_LENGTH, with any query string or fragment replaced by a marker. Query values
 * are where clients put keys (?api_key=sk-…), and a bare `?sk-…` makes even a name a secret, so
 * neither is kept; the gateway never forwards a query anyway.
 */
export function loggablePath(url: string): string {
  let end = url.length;
  for (let i = 0; i < url.length; i++) {
    const c = url.charCodeAt(i);
    if (c === 0x3f /* ? */ || c === 0x23 /* # */) {
      end = i;
      break;
    }
  }
  const path = end > MAX_LOGGED_PATH_LENGTH ? `${url.slice(0, MAX_LOGGED_PATH_LENGTH)}…` : url.slice(0, end);
  return end < url.length ? path + QUERY_REMOVED : path;
}

/** A body's `model` as a record keeps it: strings only, cut at MAX_MODEL_LENGTH. */
export function recordedModel(model: unknown): string | null {
  if (typeof model !== 'string') return null;
  return model.length > MAX_MODEL_LENGTH ? model.slice(0, MAX_MODEL_LENGTH) : model;
}

/** An address taken from a forwarding header, or undefined when it is not an IP address. */
export function forwardedIp(value: string): string | undefined {
  const ip = value.trim();
  return ip.length <= MAX_IP_LENGTH && net.isIP(ip) !== 0 ? ip : undefined;
}

/**
 * True when the JSON text nests objects and arrays deeper than `max` (brackets inside strings do
 * not count). Cheap for the usual body: one that holds no more than `max` opening brackets cannot
 * nest deeper, and counting them is a few native searches (a 1 MB array of token ids: ~30 µs, where
 * a byte loop takes ~2 ms); only bodies with more are scanned, jumping over each string with indexOf.
 */
export function nestedDeeperThan(raw: Buffer, max: number): boolean {
  // Deeper than `max` takes more than `max` opening brackets, so more bytes (no native call at all).
  if (raw.length <= max) return false;
  return hasMoreOpeningBrackets(raw, max) && scanDeeperThan(raw, max);
}

function hasMoreOpeningBrackets(raw: Buffer, max: number): boolean {
  let opens = 0;
  for (let at = raw.indexOf(0x7b /* { */); at !== -1; at = raw.indexOf(0x7b, at + 1)) if (++opens > max) return true;
  for (let at = raw.indexOf(0x5b /* [ */); at !== -1; at = raw.indexOf(0x5b, at + 1)) if (++opens > max) return true;
  return false;
}

function scanDeeperThan(raw: Buffer, max: number): boolean {
  let depth = 0;
  const n = raw.length;
  for (let i = 0; i < n; i++) {
    const c = raw[i];
    if (c === 0x22 /* " */) {
      // To the closing quote: the next one not escaped (preceded by an even run of backslashes).
      for (;;) {
        i = raw.indexOf(0x22, i + 1);
        if (i === -1) return false; // unterminated: JSON.parse refuses it
        let slashes = 0;
        while (raw[i - 1 - slashes] === 0x5c /* \ */) slashes++;
        if (slashes % 2 === 0) break;
      }
    } else if (c === 0x7b || c === 0x5b) {
      if (++depth > max) return true;
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      depth--;
    }
  }
  return false;
}

/** A lone surrogate can only arrive as an escape (isUtf8 refuses one in raw bytes). */
const SURROGATE_ESCAPE = /\\u[dD][89a-fA-F]/;
/** In unicode mode a surrogate pair is one code point: only a lone surrogate matches. */
const LONE_SURROGATE = /[\uD800-\uDFFF]/u;
/** A number that parses to ±Infinity has a 3-digit exponent or over 308 digits. */
const HUGE_NUMBER = /[eE]\+?0*[1-9]\d{2}|\d{309}/;

/**
 * What in a parsed body llama-server would answer with a 500 although Node parsed it: a string
 * with a lone surrogate, a number beyond a double. Walked only when the text could hold one (a
 * regular expression over the text; most bodies have neither).
 */
export function unportableValue(text: string, json: unknown): 'lone_surrogate' | 'not_finite' | undefined {
  const surrogates = SURROGATE_ESCAPE.test(text);
  const huge = HUGE_NUMBER.test(text);
  if (!surrogates && !huge) return undefined;
  return findUnportable(json, surrogates, huge);
}

function findUnportable(v: unknown, surrogates: boolean, huge: boolean): 'lone_surrogate' | 'not_finite' | undefined {
  if (typeof v === 'string') return surrogates && LONE_SURROGATE.test(v) ? 'lone_surrogate' : undefined;
  if (typeof v === 'number') return huge && !Number.isFinite(v) ? 'not_finite' : undefined;
  if (v === null || typeof v !== 'object') return undefined;
  if (Array.isArray(v)) {
    for (const item of v) {
      const found = findUnportable(item, surrogates, huge);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  for (const [key, item] of Object.entries(v)) {
    const found = findUnportable(key, surrogates, false) ?? findUnportable(item, surrogates, huge);
    if (found !== undefined) return found;
  }
  return undefined;
}
