// Who used what: one Exchange per proxied request, filled on the side while the response passes
// (proxy/json-tap.ts, proxy/sse-tap.ts), then turned into one UsageRecord. Token numbers are llama-server's
// own (`usage` in its bodies and streams), never estimated when a number exists; a request that
// ended without them is completed off the request path (completion.ts) and marked.
import type { Speeds } from './estimate.js';

/**
 * Which API a route speaks; it decides where the token numbers are and how a stream looks.
 * transcriptions: OpenAI's audio upload (multipart); llama-server runs it as a chat completion of
 * an audio model and answers `{"text", "usage"}` (streamed: transcript.text.delta events, the usage
 * in transcript.text.done) — input_tokens/output_tokens, or none; nothing is counted afterwards.
 */
export type RouteKind =
  'chat' | 'completions' | 'embeddings' | 'rerank' | 'responses' | 'messages' | 'count_tokens' | 'models' | 'transcriptions';

export type Outcome = 'ok' | 'client_closed' | 'upstream_error' | 'timeout' | 'rejected_auth' | 'rejected_limit' | 'rejected_policy';

export interface UsageRecord {
  /** request start, ms since epoch */
  ts: number;
  requestId: string;
  keyId: string | null;
  keyName: string | null;
  route: string;
  model: string | null;
  status: number;
  streamed: boolean;
  promptTokens: number | null;
  cachedTokens: number | null;
  completionTokens: number | null;
  /**
   * Some number is not llama-server's own report (the request ended without usage, or a prompt
   * array): `estimate` says which and how.
   */
  estimated: boolean;
  /** How the numbers llama-server did not report were found (only on records with estimated). */
  estimate?: UsageEstimate;
  ttftMs: number | null;
  durationMs: number;
  bytesIn: number;
  bytesOut: number;
  clientIp: string | null;
  userAgent: string | null;
  outcome: Outcome;
  /** who inside the key, as the client said (GATEWAY_END_USER; usage/end-user.ts): accounting only */
  endUser: string | null;
  /** in GATEWAY_PRICE_CURRENCY, set when the record is final (usage/prices.ts); null: no price for the model */
  cost: number | null;
  /** only with GATEWAY_LOG_BODIES=true */
  requestBody?: string;
  responseText?: string;
}

export interface UsageEstimate {
  /**
   * counted: exact, by llama-server's own counting route (input_tokens, count_tokens, /tokenize);
   * partly_counted: the first prompts counted so, the rest (beyond a job's calls) their bytes / 4;
   * bytes: the count failed or timed out: the request body's bytes / 4;
   * count_failed: (older records) the count failed and promptTokens is null.
   */
  prompt?: 'counted' | 'partly_counted' | 'bytes' | 'count_failed';
  /**
   * relayed: a stream's content events sent to the client (one per token); timed: a non-streamed
   * answer's (or a llama-server 5xx's) generation time × llama-server's recent speed, capped by
   * max_tokens; retokenized: the choices of several tasks (a prompt array, `n` > 1): max_tokens
   * for each that stopped there, the others' text counted with /tokenize; unknown: none of these
   * could be had.
   */
  completion?: 'relayed' | 'timed' | 'retokenized' | 'unknown';
}

/** The state of one proxied exchange, mutated by the taps as the answer passes. */
/** What the usage completer needs of the server that answered an exchange (proxy/upstream.ts's Upstream). */
export interface AnsweringServer {
  post(path: string, body: string | Buffer, opts: { signal?: AbortSignal }): Promise<{ statusCode: number; text: string }>;
  readonly rates: { speeds(): Speeds };
}

export class Exchange {
  readonly startedAt = performance.now();
  readonly ts = Date.now();
  status = 0;
  streamed = false;
  promptTokens: number | null = null;
  cachedTokens: number | null = null;
  completionTokens: number | null = null;
  /** content events (≈ tokens) seen in a stream */
  contentEvents = 0;
  firstContentAt = 0;
  bytesOut = 0;
  /**
   * set when the upstream answer failed after it started: 'timeout' (idle), or 'error' (the stream
   * or body broke, or llama-server's own error event ended a 200 stream)
   */
  broken: 'timeout' | 'error' | null = null;
  /** usage objects applied (a stream of several tasks sends one per task) */
  usageEvents = 0;
  /** tasks llama-server runs (tasksOf): one per prompt of a /v1/completions prompt array, times `n` */
  prompts = 1;
  /** keep the whole non-streamed body (a prompt array's choices are counted afterwards; rare) */
  keepBody = false;
  /** the kept body (keepBody), null when not kept or over the cap */
  body: Buffer | null = null;
  /** the gateway added stream_options.include_usage; the usage-only chunk is not the client's */
  stripUsageChunk = false;
  recorded = false;
  /** GATEWAY_LOG_BODIES: the completion's text, gathered as it passes (capped) */
  text: string | null = null;
  /** the llama-server that answered (several servers: its tokens are counted there), set by the proxy */
  server: AnsweringServer | null = null;

  constructor(
    readonly kind: RouteKind,
    readonly route: string,
    readonly model: string | null,
    readonly bytesIn: number,
  ) {}

  /**
   * Takes the numbers from a `usage` object in whichever shape this route's API uses. A stream of
   * several tasks (a /v1/completions prompt array, `n` > 1) reports each task's usage in its own
   * event: those are summed.
   */
  applyUsage(u: unknown): void {
    if (u === null || typeof u !== 'object') return;
    const o = u as Record<string, unknown>;
    const sum = (this.kind === 'completions' || this.prompts > 1) && this.usageEvents > 0;
    this.usageEvents++;
    const n = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
    if (this.kind === 'messages') {
      // Anthropic: input_tokens excludes cache reads; prompt = all input, like OpenAI's prompt_tokens.
      const input = n(o.input_tokens);
      const cacheRead = n(o.cache_read_input_tokens);
      const cacheCreate = n(o.cache_creation_input_tokens);
      if (input !== null) this.promptTokens = input + (cacheRead ?? 0) + (cacheCreate ?? 0);
      if (cacheRead !== null) this.cachedTokens = cacheRead;
      const output = n(o.output_tokens);
      // A stream's message_start says 0 output tokens before any were made: not a count. Its
      // message_delta has the real (cumulative) one; a stream cut before it has none.
      if (output !== null && (output > 0 || !this.streamed)) this.completionTokens = output;
      return;
    }
    const add = (was: number | null, v: number): number => (sum && was !== null ? was + v : v);
    const prompt = n(o.prompt_tokens) ?? n(o.input_tokens);
    if (prompt !== null) this.promptTokens = add(this.promptTokens, prompt);
    const completion = n(o.completion_tokens) ?? n(o.output_tokens);
    if (completion !== null) this.completionTokens = add(this.completionTokens, completion);
    const details = (o.prompt_tokens_details ?? o.input_tokens_details) as Record<string, unknown> | undefined;
    const cached = details === undefined || details === null ? null : n(details.cached_tokens);
    if (cached !== null) this.cachedTokens = add(this.cachedTokens, cached);
  }
}

/**
 * How many prompts a /v1/completions `prompt` is, the way llama-server splits it: a string, an
 * array of token ids, or an array mixing ids and strings is one prompt; any other array is one
 * prompt per element (each a string, ids, or a mix).
 */
export function promptsOf(prompt: unknown): unknown[] {
  if (!Array.isArray(prompt) || prompt.length === 0) return [prompt];
  let strings = false;
  let numbers = false;
  for (const p of prompt) {
    if (typeof p === 'string') strings = true;
    else if (typeof p === 'number') numbers = true;
    else return prompt;
    if (strings && numbers) return [prompt];
  }
  return numbers ? [prompt] : prompt;
}

/**
 * How many tasks llama-server runs for a chat or /v1/completions request: one per prompt (a
 * /v1/completions prompt array), times `n` (choices per prompt; llama-server reports one task's
 * usage for all of them in a non-streamed answer, and one usage event per task in a stream).
 */
export function tasksOf(kind: RouteKind, json: Record<string, unknown>): number {
  const n = typeof json.n === 'number' && Number.isInteger(json.n) && json.n > 1 ? json.n : 1;
  return (kind === 'completions' && Array.isArray(json.prompt) ? promptsOf(json.prompt).length : 1) * n;
}

/**
 * Where the usage object sits in one streamed event's data, by the event's type: chat and
 * completions chunks carry it at the top level; Anthropic's message_start in `message`, its
 * message_delta at the top level; the Responses API in `response` (response.completed).
 * Read from the parsed event, never from its content.
 */
export function usageInEvent(kind: RouteKind, data: unknown): unknown {
  if (data === null || typeof data !== 'object' || Array.isArray(data)) return undefined;
  const o = data as { type?: unknown; usage?: unknown; message?: { usage?: unknown } | null; response?: { usage?: unknown } | null };
  if (kind === 'messages') return o.type === 'message_start' ? o.message?.usage : o.type === 'message_delta' ? o.usage : undefined;
  if (kind === 'responses') return typeof o.type === 'string' && o.type.startsWith('response.') ? o.response?.usage : undefined;
  return o.usage;
}
