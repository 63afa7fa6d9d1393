// Prompt-cache affinity (issue 14). llama-server keeps each slot's KV cache of its last prompt (and
// answer) and reuses it when the next prompt shares the prefix (`cached_tokens` in its usage); the
// next turn of a conversation repeats the previous turns, so sending it to the server that served
// the last one skips re-reading all of them. Shuffle routing makes the hit rate collapse (a LiteLLM
// user saw ~95% fall to ~0).
//
// A conversation is recognised by its opening: the key id, the route, the model, and the messages
// up to and including the first user message (system + first user, as most clients send them), or
// the first 1 KiB of a /v1/completions prompt. The opening stays the same on every later turn,
// which only appends. Only a bounded prefix of it is hashed (HASHED_CHARS of each piece, plus each
// piece's full length), so a 40 MB body costs what a 6 KiB one does.
//
// The hash: the bounded opening joined into one string, then one-shot crypto.hash('sha1'), 96 bits
// kept. Measured on 2 KB–200 KB chat bodies (issue 14 report), 1–2.5 µs per request: cheaper than
// createHash('sha1') fed piece by piece (~2–3.5 µs) and than a 53-bit multiply-xor hash in plain JS
// over the same characters (cyrb53, ~1.5–3.5 µs; ~2× that with module-level state). Collisions
// need no resistance: one only sends a request to another server of its own model, and the key id
// is part of every hash, so one key cannot steer another key's conversations.
import { hash } from 'node:crypto';
import type { RouteKind } from '../usage/exchange.js';

/** Conversations remembered (about 100 bytes each); the least recently placed is forgotten first. */
export const AFFINITY_MAX_ENTRIES = 10_000;
/** An opening shorter than this keys nothing: a cache hit on under ~16 tokens saves nothing. */
export const AFFINITY_MIN_OPENING_CHARS = 64;
/** Characters hashed of each piece of the opening (a message's text, the system prompt, the prompt). */
const HASHED_CHARS = 1024;
/** Parts of a message's content read (text parts, image parts…): bounds the work on any body. */
const CONTENT_PARTS = 16;
/** At most this many messages open a conversation (leading system/developer ones, then the first user one). */
const OPENING_MESSAGES = 4;
/** Prompt processing speed assumed when a server's is not known (tokens per second); slow, so waits are generous. */
const DEFAULT_PROMPT_TOKENS_PER_SECOND = 500;
/** The longest a request waits for its own server's slot instead of taking another free one. */
export const AFFINITY_MAX_WAIT_MS = 2000;
/** Characters per token, the usual rough rule for English text and code. */
const CHARS_PER_TOKEN = 4;

// What is being hashed (built by the functions below; a call never interleaves with another).
let opening = '';
/** Characters of text the opening holds (full lengths, not only the hashed prefix). */
let openingChars = 0;

/**
 * Appends the first `max` characters of `s`, then its length: the full length for a piece that
 * later turns repeat whole (a message), only the appended length for one they extend (a prompt).
 */
function feed(s: string, max: number, fullLength = true): void {
  const piece = s.length <= max ? s : s.slice(0, max);
  opening += `${piece}\u0000${fullLength ? s.length : piece.length}\u0000`;
}

/** The text of a message's content: a string, or the `text` of its parts (OpenAI, Responses and Anthropic parts). */
function feedContent(content: unknown): void {
  if (typeof content === 'string') {
    feed(content, HASHED_CHARS);
    openingChars += content.length;
    return;
  }
  if (!Array.isArray(content)) return;
  const n = content.length < CONTENT_PARTS ? content.length : CONTENT_PARTS;
  for (let i = 0; i < n; i++) {
    const part: unknown = content[i];
    if (part === null || typeof part !== 'object') continue;
    const p = part as { type?: unknown; text?: unknown };
    if (typeof p.text === 'string') {
      feed(p.text, HASHED_CHARS);
      openingChars += p.text.length;
    } else if (typeof p.type === 'string') feed(p.type, 64); // an image or file part: its kind, not its bytes
  }
}

/** Leading messages through the first user message (at most OPENING_MESSAGES). */
function feedMessages(messages: unknown): void {
  if (!Array.isArray(messages)) return;
  const n = messages.length < OPENING_MESSAGES ? messages.length : OPENING_MESSAGES;
  for (let i = 0; i < n; i++) {
    const m: unknown = messages[i];
    if (m === null || typeof m !== 'object') return;
    const { role, content } = m as { role?: unknown; content?: unknown };
    if (typeof role === 'string') feed(role, 64);
    feedContent(content);
    if (role === 'user') return;
  }
}

function start(kind: RouteKind, json: Record<string, unknown>, keyId: string): void {
  opening = '';
  openingChars = 0;
  feed(keyId, 256);
  feed(kind, 64);
  if (typeof json.model === 'string') feed(json.model, 256);
}

function finish(): string | null {
  const text = opening;
  opening = ''; // let the (up to ~5 KiB) string go
  return openingChars < AFFINITY_MIN_OPENING_CHARS ? null : hash('sha1', text, 'base64url').slice(0, 16);
}

/**
 * The affinity key of a request: a short hash of the key id and the conversation's opening, or
 * null when there is nothing worth keying on (no messages, a prompt array or token ids, the
 * routes that keep no cache, an opening under AFFINITY_MIN_OPENING_CHARS).
 *   chat       messages through the first user message (system + first user)
 *   messages   `system`, then messages through the first user message
 *   responses  `instructions`, then input items through the first user one (a string input is
 *              that first user message: turn 1 as a string and turn 2 as a list key alike)
 *   completions the first 1 KiB of the prompt string
 */
export function affinityKey(kind: RouteKind, json: Record<string, unknown>, keyId: string): string | null {
  switch (kind) {
    case 'chat':
      start(kind, json, keyId);
      feedMessages(json.messages);
      break;
    case 'messages':
      start(kind, json, keyId);
      if (json.system !== undefined) {
        feed('system', 64);
        feedContent(json.system);
      }
      feedMessages(json.messages);
      break;
    case 'responses':
      start(kind, json, keyId);
      if (typeof json.instructions === 'string') {
        feed('system', 64);
        feedContent(json.instructions);
      }
      if (typeof json.input === 'string') {
        feed('user', 64);
        feedContent(json.input);
      } else feedMessages(json.input);
      break;
    case 'completions':
      if (typeof json.prompt !== 'string') return null;
      start(kind, json, keyId);
      feed(json.prompt, HASHED_CHARS, false);
      openingChars = json.prompt.length;
      break;
    default: // embeddings, rerank, count_tokens, models: no conversation, no cache to reuse
      return null;
  }
  return finish();
}

/**
 * Which server served each conversation last, by affinity key. Bounded: past `maxEntries` the
 * least recently placed conversation is forgotten (a Map keeps insertion order; set() re-inserts).
 * get() does not refresh: the caller sets the key again once the request is placed.
 */
export class AffinityMap {
  readonly #servers = new Map<string, number>();

  constructor(readonly maxEntries: number = AFFINITY_MAX_ENTRIES) {}

  get size(): number {
    return this.#servers.size;
  }

  /** The index of the server that served this conversation last, if remembered. */
  get(key: string): number | undefined {
    return this.#servers.get(key);
  }

  /** This conversation is now on server `index` (and is the most recently placed). */
  set(key: string, index: number): void {
    const servers = this.#servers;
    servers.delete(key);
    servers.set(key, index);
    if (servers.size > this.maxEntries) {
      const oldest = servers.keys().next();
      if (oldest.done !== true) servers.delete(oldest.value);
    }
  }

  /** Server `index` went down (its caches are gone): forget every conversation placed on it. */
  forget(index: number): void {
    for (const [key, at] of this.#servers) if (at === index) this.#servers.delete(key);
  }

  clear(): void {
    this.#servers.clear();
  }
}

/**
 * How long a request is worth waiting for its own server (the one holding its prompt in cache)
 * before it takes any free one: the prompt processing a cache hit saves,
 *   ms = (promptChars / 4 tokens) / promptTokensPerSecond × 1000, at most AFFINITY_MAX_WAIT_MS,
 * with DEFAULT_PROMPT_TOKENS_PER_SECOND when the server's speed is unknown (null, 0, not finite).
 * promptChars may be the body's byte length: close enough, and known without reading the body.
 * (The saving is over-estimated by the new turn's share of the prompt, which is small on a long
 * conversation, where waiting matters.)
 */
export function preferMs(promptChars: number, promptTokensPerSecond: number | null): number {
  if (!(promptChars > 0)) return 0;
  const speed =
    promptTokensPerSecond !== null && Number.isFinite(promptTokensPerSecond) && promptTokensPerSecond > 0
      ? promptTokensPerSecond
      : DEFAULT_PROMPT_TOKENS_PER_SECOND;
  const ms = Math.round((promptChars / CHARS_PER_TOKEN / speed) * 1000);
  return ms < AFFINITY_MAX_WAIT_MS ? ms : AFFINITY_MAX_WAIT_MS;
}
