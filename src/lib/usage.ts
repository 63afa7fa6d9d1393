// Who used what: one Exchange per proxied request, filled on the side while the response passes
// (see usage-tap.ts), then turned into one UsageRecord. Token numbers are llama-server's own
// (`usage` in its bodies and streams), never estimated when a number exists.

/** Which API a route speaks; it decides where the token numbers are and how a stream looks. */
export type RouteKind = 'chat' | 'completions' | 'embeddings' | 'rerank' | 'responses' | 'messages' | 'count_tokens' | 'models';

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
  /** completion tokens counted from delivered chunks (the client left before llama-server reported) */
  estimated: boolean;
  ttftMs: number | null;
  durationMs: number;
  bytesIn: number;
  bytesOut: number;
  clientIp: string | null;
  userAgent: string | null;
  outcome: Outcome;
  /** only with GATEWAY_LOG_BODIES=true */
  requestBody?: string;
  responseText?: string;
}

/** The state of one proxied exchange, mutated by the taps as the answer passes. */
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
  /** set when the upstream stream broke: 'timeout' (idle) or 'error' */
  broken: 'timeout' | 'error' | null = null;
  /** the gateway added stream_options.include_usage; the usage-only chunk is not the client's */
  stripUsageChunk = false;
  recorded = false;
  /** GATEWAY_LOG_BODIES: the completion's text, gathered as it passes (capped) */
  text: string | null = null;

  constructor(
    readonly kind: RouteKind,
    readonly route: string,
    readonly model: string | null,
    readonly bytesIn: number,
  ) {}

  /** Takes the numbers from a `usage` object in whichever shape this route's API uses. */
  applyUsage(u: unknown): void {
    if (u === null || typeof u !== 'object') return;
    const o = u as Record<string, unknown>;
    const n = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null);
    if (this.kind === 'messages') {
      // Anthropic: input_tokens excludes cache reads; prompt = all input, like OpenAI's prompt_tokens.
      const input = n(o.input_tokens);
      const cacheRead = n(o.cache_read_input_tokens);
      const cacheCreate = n(o.cache_creation_input_tokens);
      if (input !== null) this.promptTokens = input + (cacheRead ?? 0) + (cacheCreate ?? 0);
      if (cacheRead !== null) this.cachedTokens = cacheRead;
      const output = n(o.output_tokens);
      // message_start says 0 output tokens; message_delta has the real (cumulative) count.
      if (output !== null && (output > 0 || this.completionTokens === null)) this.completionTokens = output;
      return;
    }
    const prompt = n(o.prompt_tokens) ?? n(o.input_tokens);
    if (prompt !== null) this.promptTokens = prompt;
    const completion = n(o.completion_tokens) ?? n(o.output_tokens);
    if (completion !== null) this.completionTokens = completion;
    const details = (o.prompt_tokens_details ?? o.input_tokens_details) as Record<string, unknown> | undefined;
    const cached = details === undefined || details === null ? null : n(details.cached_tokens);
    if (cached !== null) this.cachedTokens = cached;
  }
}

/**
 * Finds `"usage":{…}` in JSON text and returns it parsed (or undefined). Works on a fragment of a
 * body (its head or tail) as long as the usage object itself is whole.
 */
export function findUsage(text: string): unknown {
  let from = 0;
  for (;;) {
    const at = text.indexOf('"usage"', from);
    if (at < 0) return undefined;
    from = at + 7;
    let i = from;
    for (let c = text.charCodeAt(i); c === 0x20 || c === 0x3a || c === 0x0a || c === 0x09 || c === 0x0d; c = text.charCodeAt(++i)); // space : \n \t \r
    if (text.charCodeAt(i) !== 0x7b) continue; // {
    let depth = 0;
    for (let j = i; j < text.length; j++) {
      const c = text.charCodeAt(j);
      if (c === 0x7b) depth++;
      else if (c === 0x7d && --depth === 0) {
        try {
          return JSON.parse(text.slice(i, j + 1)) as unknown;
        } catch {
          break;
        }
      }
    }
  }
}

/** Where the usage object sits in one streamed event's data. */
export function usageInEvent(data: unknown): unknown {
  if (data === null || typeof data !== 'object') return undefined;
  const o = data as { usage?: unknown; message?: { usage?: unknown }; response?: { usage?: unknown } };
  return o.usage ?? o.message?.usage ?? o.response?.usage;
}

/**
 * The request body with `stream_options.include_usage: true`, so that llama-server reports a chat
 * stream's tokens. The client's other bytes are kept: the option is spliced in before the final
 * `}` when the client sent no stream_options; only a client that sent stream_options (without
 * include_usage) gets its body re-serialised.
 */
export function withIncludeUsage(raw: Buffer, json: Record<string, unknown>): Buffer {
  if (json.stream_options === undefined) {
    let end = raw.length - 1;
    while (end >= 0 && raw[end] !== 0x7d /* } */) end--;
    let before = end - 1;
    while (before >= 0 && (raw[before] === 0x20 || raw[before] === 0x0a || raw[before] === 0x0d || raw[before] === 0x09)) before--;
    const empty = raw[before] === 0x7b; /* { */
    return Buffer.concat([raw.subarray(0, end), Buffer.from(`${empty ? '' : ','}"stream_options":{"include_usage":true}`), raw.subarray(end)]);
  }
  const options = json.stream_options !== null && typeof json.stream_options === 'object' ? json.stream_options : {};
  return Buffer.from(JSON.stringify({ ...json, stream_options: { ...options, include_usage: true } }));
}

/** True when a chat request is a stream whose client did not ask for usage itself. */
export function needsIncludeUsage(json: Record<string, unknown>): boolean {
  if (json.stream !== true) return false;
  const options = json.stream_options as { include_usage?: unknown } | null | undefined;
  return options?.include_usage !== true;
}
