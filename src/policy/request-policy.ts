// The request policy (issue #15): what a call may ask for, from the gateway-wide defaults
// (GATEWAY_MAX_TOKENS, GATEWAY_PARAM_POLICY, GATEWAY_REMOTE_MEDIA, GATEWAY_MAX_PROMPT_BYTES,
// GATEWAY_MAX_PROMPT_TOKENS) with a key's own policy (keys/key-policy.ts) winning field by field.
// Framework-free: plugins/policy.ts runs it on each request.
//
// Paid at registration, not per request: a key's effective policy is built once per policy
// document (a WeakMap keyed by it: a registry reload brings new documents, the old ones go with
// their entries), and a request to which no rule applies costs a few property reads.
//
// A body is rewritten only when a rule changes it (a token cap clamped or added, a parameter
// removed), and then only the members that change: the client's other bytes are kept as sent
// (editMembers below), as proxy/json-body.ts does for include_usage.
import type { Config } from '../config.js';
import { PARAM_NOT_ALLOWED, PROMPT_TOO_MANY_BYTES, type GatewayError } from '../errors.js';
import type { KeyPolicy, MediaRule } from '../keys/key-policy.js';
import type { JsonBody } from '../proxy/json-body.js';
import type { RouteKind } from '../usage/exchange.js';
import { hasMediaParts } from './media.js';
import { breaks, paramChecks, type ParamCheck } from './params.js';

export interface EffectivePolicy {
  readonly maxTokens: number | null;
  /** the parameters refused or removed (allowed ones are not checked at all) */
  readonly checks: readonly ParamCheck[];
  readonly remoteMedia: MediaRule;
  readonly maxPromptBytes: number | null;
  readonly maxPromptTokens: number | null;
}

export type PolicyDefaults = Pick<Config, 'maxTokens' | 'paramPolicy' | 'remoteMedia' | 'maxPromptBytes' | 'maxPromptTokens'>;

/** The effective policy of each key's policy document (null: the defaults), built once. */
export class RequestPolicies {
  readonly defaults: EffectivePolicy;
  readonly #config: PolicyDefaults;
  readonly #byDocument = new WeakMap<KeyPolicy, EffectivePolicy>();

  constructor(config: PolicyDefaults) {
    this.#config = config;
    this.defaults = {
      maxTokens: config.maxTokens,
      checks: paramChecks(config.paramPolicy),
      remoteMedia: config.remoteMedia,
      maxPromptBytes: config.maxPromptBytes,
      maxPromptTokens: config.maxPromptTokens,
    };
  }

  of(policy: KeyPolicy | null | undefined): EffectivePolicy {
    if (policy === null || policy === undefined) return this.defaults;
    let p = this.#byDocument.get(policy);
    if (p === undefined) {
      const d = this.defaults;
      p = {
        maxTokens: policy.max_tokens ?? d.maxTokens,
        checks: policy.params === undefined ? d.checks : paramChecks(this.#config.paramPolicy, policy.params),
        remoteMedia: policy.remote_media ?? d.remoteMedia,
        maxPromptBytes: policy.max_prompt_bytes ?? d.maxPromptBytes,
        maxPromptTokens: policy.max_prompt_tokens ?? d.maxPromptTokens,
      };
      this.#byDocument.set(policy, p);
    }
    return p;
  }
}

// ── The cap on generated tokens ──────────────────────────────────────────────────────────────────

// llama-server (server-task.cpp, params_from_json_cmpl) reads
//   n_predict = n_predict ?? max_completion_tokens ?? max_tokens ?? its --n-predict (default -1)
// where a field that is null or not a number counts as absent (json_value), and -1 (any negative)
// means "until the context is full". The Responses API's max_output_tokens and Anthropic's
// max_tokens become max_tokens in its conversion. So every field it may read is kept within the
// cap (a negative, a non-number or null is set to the cap too), and a body with none gets the
// route's own field set to the cap.
interface CapFields {
  readonly fields: readonly string[];
  readonly add: string;
}
const OPENAI_CAP: CapFields = { fields: ['n_predict', 'max_completion_tokens', 'max_tokens'], add: 'max_tokens' };
const CAP_FIELDS: Partial<Record<RouteKind, CapFields>> = {
  chat: OPENAI_CAP,
  completions: OPENAI_CAP,
  messages: OPENAI_CAP,
  responses: { fields: ['n_predict', 'max_completion_tokens', 'max_tokens', 'max_output_tokens'], add: 'max_output_tokens' },
};

const withinCap = (v: unknown, cap: number): boolean => typeof v === 'number' && v >= 0 && v <= cap;

/**
 * Checks the sync rules (prompt bytes, parameters, the token cap) on a JSON body. Returns the
 * refusal, a rewritten body, or undefined (forwarded as sent).
 */
export function applyRules(p: EffectivePolicy, kind: RouteKind, body: JsonBody): GatewayError | JsonBody | undefined {
  if (p.maxPromptBytes !== null && body.raw.length > p.maxPromptBytes) return PROMPT_TOO_MANY_BYTES(body.raw.length, p.maxPromptBytes);
  if (body.form === true) return undefined; // an audio upload: no parameters, no generation to cap
  const json = body.json;
  let edits: Map<string, unknown> | undefined;
  for (const check of p.checks) {
    const v = json[check.name];
    if (v === undefined || !breaks(check, v)) continue;
    if (check.rule === 'refuse') return PARAM_NOT_ALLOWED(check.name, check.above);
    (edits ??= new Map()).set(check.name, undefined);
  }
  const cap = p.maxTokens;
  const capped = cap === null ? undefined : CAP_FIELDS[kind];
  if (capped !== undefined) {
    let present = false;
    for (const field of capped.fields) {
      const v = json[field];
      if (v === undefined || (edits?.has(field) === true && edits.get(field) === undefined)) continue; // removed above
      present = true;
      if (!withinCap(v, cap!)) (edits ??= new Map()).set(field, cap);
    }
    if (!present) (edits ??= new Map()).set(capped.add, cap);
  }
  return edits === undefined ? undefined : editBody(body, edits);
}

/** The body with `edits` applied (undefined: the member removed); its other bytes as sent. */
function editBody(body: JsonBody, edits: ReadonlyMap<string, unknown>): JsonBody {
  const json: Record<string, unknown> = { ...body.json };
  for (const [k, v] of edits) {
    if (v === undefined) delete json[k];
    else json[k] = v;
  }
  return { raw: editMembers(body.raw, edits), json };
}

// ── Editing a JSON object's top-level members in place ───────────────────────────────────────────

const WS = (c: number | undefined): boolean => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09;

/** The index just past the JSON string starting at `i` (a `"`). */
function stringEnd(raw: Buffer, i: number): number {
  for (i++; i < raw.length; i++) {
    const c = raw[i];
    if (c === 0x5c /* \ */) i++;
    else if (c === 0x22 /* " */) return i + 1;
  }
  return raw.length;
}

/** The index just past the JSON value starting at `i`. */
function valueEnd(raw: Buffer, i: number): number {
  const c = raw[i];
  if (c === 0x22) return stringEnd(raw, i);
  if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
    let depth = 0;
    for (; i < raw.length; i++) {
      const d = raw[i];
      if (d === 0x22) i = stringEnd(raw, i) - 1;
      else if (d === 0x7b || d === 0x5b) depth++;
      else if (d === 0x7d || d === 0x5d) {
        depth--;
        if (depth === 0) return i + 1;
      }
    }
    return raw.length;
  }
  while (i < raw.length && raw[i] !== 0x2c && raw[i] !== 0x7d && !WS(raw[i])) i++;
  return i;
}

/**
 * A JSON object (already parsed: known valid) with some top-level members replaced or removed and
 * the missing ones appended; every other byte as sent. A key given twice (the last wins in
 * JSON.parse and in llama-server) is edited wherever it appears.
 */
export function editMembers(raw: Buffer, edits: ReadonlyMap<string, unknown>): Buffer {
  const parts: Buffer[] = [];
  const seen = new Set<string>();
  let i = raw.indexOf(0x7b) + 1;
  const head = raw.subarray(0, i);
  let kept = 0;
  let tail = i;
  for (;;) {
    const start = i;
    while (WS(raw[i])) i++;
    if (raw[i] !== 0x22) {
      tail = start; // the closing }
      break;
    }
    const keyEnd = stringEnd(raw, i);
    const key = JSON.parse(raw.toString('utf8', i, keyEnd)) as string;
    i = keyEnd;
    while (WS(raw[i]) || raw[i] === 0x3a /* : */) i++;
    const vStart = i;
    const vEnd = valueEnd(raw, i);
    i = vEnd;
    while (WS(raw[i])) i++;
    const end = raw[i] === 0x2c ? i + 1 : i;
    if (!edits.has(key)) parts.push(raw.subarray(start, vEnd));
    else {
      seen.add(key);
      const v = edits.get(key);
      if (v !== undefined) parts.push(Buffer.concat([raw.subarray(start, vStart), Buffer.from(JSON.stringify(v))]));
    }
    kept = parts.length;
    if (end === i) {
      tail = vEnd;
      break;
    }
    i = end;
  }
  const out: Buffer[] = [head];
  for (let n = 0; n < kept; n++) {
    if (n > 0) out.push(COMMA);
    out.push(parts[n]!);
  }
  for (const [k, v] of edits) {
    if (v === undefined || seen.has(k)) continue;
    if (kept++ > 0) out.push(COMMA);
    out.push(Buffer.from(`${JSON.stringify(k)}:${JSON.stringify(v)}`));
  }
  out.push(raw.subarray(tail));
  return Buffer.concat(out);
}
const COMMA = Buffer.from(',');

// ── Prompt tokens ────────────────────────────────────────────────────────────────────────────────

/** llama-server's own counting route for the chat-like APIs: the body as sent, `{input_tokens}` back. */
const COUNT_ROUTE: Partial<Record<RouteKind, string>> = {
  chat: '/v1/chat/completions/input_tokens',
  responses: '/v1/responses/input_tokens',
  messages: '/v1/messages/count_tokens',
};

/** How to count a request's prompt tokens with llama-server: a call, or a number already known. */
export type PromptCount = { readonly path: string; readonly body: string | Buffer; readonly known: number } | { readonly known: number };

/**
 * True when the prompt may exceed `max` tokens and has to be counted. Text has at least one byte
 * per token, so a body of fewer bytes than the limit cannot hold more tokens (the chat template's
 * few tokens are more than paid for by the body's JSON syntax). Media is not text: a body with an
 * image, audio or a document part is counted whatever its size (hasMediaParts).
 */
export function mayExceed(p: EffectivePolicy, kind: RouteKind, body: JsonBody): boolean {
  if (p.maxPromptTokens === null || body.form === true || kind === 'count_tokens') return false;
  return body.raw.length > p.maxPromptTokens || hasMediaParts(kind, body.json);
}

/** Texts and token ids of a /v1/completions prompt, embeddings input or rerank query + documents. */
function collect(v: unknown, texts: unknown[], ids: { n: number }): void {
  if (typeof v === 'string') texts.push(v);
  else if (typeof v === 'number') ids.n++;
  else if (Array.isArray(v)) for (const item of v) collect(item, texts, ids);
  else if (v !== null && typeof v === 'object') {
    // llama-server's multimodal prompt object {prompt_string, multimodal_data}
    const s = (v as { prompt_string?: unknown }).prompt_string;
    texts.push(typeof s === 'string' ? s : JSON.stringify(v));
  }
}

/** How to count this request's prompt (see PromptCount). */
export function promptCount(kind: RouteKind, body: JsonBody): PromptCount {
  const path = COUNT_ROUTE[kind];
  if (path !== undefined) return { path, body: body.raw, known: 0 };
  const json = body.json;
  const texts: unknown[] = [];
  const ids = { n: 0 };
  if (kind === 'rerank') collect([json.query, json.documents ?? json.texts], texts, ids);
  else collect(kind === 'embeddings' ? (json.input ?? json.content) : json.prompt, texts, ids);
  // /tokenize joins an array of texts and ids into one prompt (tokenize_mixed): one call for all.
  return texts.length === 0 ? { known: ids.n } : { path: '/tokenize', body: JSON.stringify({ content: texts }), known: ids.n };
}

/** The token count in a counting route's answer, or undefined when it has none. */
export function countedTokens(path: string, text: string): number | undefined {
  let answer: { input_tokens?: unknown; tokens?: unknown };
  try {
    answer = JSON.parse(text) as typeof answer;
  } catch {
    return undefined;
  }
  if (answer === null || typeof answer !== 'object') return undefined;
  if (path === '/tokenize') return Array.isArray(answer.tokens) ? answer.tokens.length : undefined;
  return typeof answer.input_tokens === 'number' ? answer.input_tokens : undefined;
}
