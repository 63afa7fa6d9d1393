// The error table: every error the gateway itself answers with, to a client or to the admin, as a
// response or as the last event of a stream that had already started. Clients are OpenAI SDKs, so
// every one has OpenAI's shape {"error":{"message","type","param","code"}}; upstream
// (llama-server) errors are passed through untouched instead.
//
// Each entry is named (the export), and has a status, a type, a code and a message; a client
// tells errors apart by status and code, so a code means one thing per status. An entry whose
// wording depends on the case (a number of seconds, the field at fault) has a function for its
// message; one with several causes under one code (invalid_json, upstream_timeout) has a wording
// per cause. A 5xx never carries an internal message: its wordings take numbers only (the type of
// `Wording` enforces it) and the rest is fixed text.
//
// The framework-free modules (the key store, the fair queue…) throw their own errors without an
// HTTP status; the plugins and routes map them to entries here.
//
// Over 300 (and 400) lines on purpose: the table is meant to be read whole, in one place — split by
// status it would scatter the one list a client's error codes are checked against.
import type { FastifyReply } from 'fastify';
import { MAX_ECHOED_LENGTH, MAX_ERROR_DETAIL_LENGTH } from './http/client-input.js';

export type ErrorType =
  | 'invalid_request_error'
  | 'invalid_api_key'
  | 'rate_limit_exceeded'
  // OpenAI's type for a spent quota (a 429 that waiting a minute does not cure): budgets.
  | 'insufficient_quota'
  | 'server_error'
  | 'upstream_error';

export class GatewayError extends Error {
  /** The serialized response body, computed once. */
  readonly body: string;

  constructor(
    readonly statusCode: number,
    readonly type: ErrorType,
    readonly code: string,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'GatewayError';
    this.body = JSON.stringify({ error: { message, type, param, code } });
  }
}

const JSON_TYPE = 'application/json; charset=utf-8';

/** Answers with the error (its status and its precomputed body). */
export function sendError(reply: FastifyReply, err: GatewayError): FastifyReply {
  return reply.code(err.statusCode).header('content-type', JSON_TYPE).send(err.body);
}

// ── How entries are written ──────────────────────────────────────────────────────────────────────

type ServerStatus = 500 | 502 | 503 | 504;
/** What a message may be worded from: anything for a 4xx, numbers only for a 5xx. */
type Args<S extends number> = S extends ServerStatus ? number[] : never[];
/** A message: fixed, or worded from its arguments. */
type Wording<S extends number> = string | ((...args: Args<S>) => string);

export interface ErrorEntry {
  /** The export that answers with it. */
  readonly name: string;
  readonly status: number;
  readonly type: ErrorType;
  readonly code: string;
  /** One wording, or one per cause. */
  readonly message: string | ((...args: never[]) => string) | Readonly<Record<string, string | ((...args: never[]) => string)>>;
}

const table: ErrorEntry[] = [];
/** Every entry, in the order written here (test/errors.test.ts checks them). */
export const ERROR_TABLE: readonly ErrorEntry[] = table;

type Param<A extends unknown[]> = string | null | ((...args: A) => string | null);
const paramOf = <A extends unknown[]>(param: Param<A>, args: A): string | null => (typeof param === 'function' ? param(...args) : param);

/** An entry with one fixed message: the error itself, serialized once. */
function fixed<S extends number>(
  name: string,
  status: S,
  type: ErrorType,
  code: string,
  message: string,
  param: string | null = null,
): GatewayError {
  table.push({ name, status, type, code, message });
  return new GatewayError(status, type, code, message, param);
}

/** An entry worded from its arguments. */
function worded<S extends number, A extends unknown[]>(
  name: string,
  status: S,
  type: ErrorType,
  code: string,
  message: ((...args: A) => string) & Wording<S>,
  param: Param<A> = null,
): (...args: A) => GatewayError {
  table.push({ name, status, type, code, message });
  return (...args) => new GatewayError(status, type, code, message(...args), paramOf(param, args));
}

type Built<W> = W extends string ? GatewayError : W extends (...args: infer A) => string ? (...args: A) => GatewayError : never;

/** An entry with a wording per cause: one error (or factory) per cause. */
function causes<S extends number, W extends Record<string, Wording<S>>>(
  name: string,
  status: S,
  type: ErrorType,
  code: string,
  wordings: W,
): { [K in keyof W]: Built<W[K]> } {
  table.push({ name, status, type, code, message: wordings });
  const built: Record<string, unknown> = {};
  for (const [cause, w] of Object.entries(wordings)) {
    built[cause] =
      typeof w === 'string'
        ? new GatewayError(status, type, code, w)
        : (...args: number[]) => new GatewayError(status, type, code, (w as (...a: number[]) => string)(...args));
  }
  return built as { [K in keyof W]: Built<W[K]> };
}

const seconds = (ms: number): number => Math.round(ms / 1000);
const echoed = (s: string): string => s.slice(0, MAX_ECHOED_LENGTH);

// ── 401: who is calling ──────────────────────────────────────────────────────────────────────────

// The body the original gateway sent for a missing or wrong key; kept word for word (clients match
// on it), with OpenAI's `param`/`code` added. The admin API's wrong key gets it too.
export const INVALID_API_KEY = fixed('INVALID_API_KEY', 401, 'invalid_api_key', 'invalid_api_key', 'Incorrect API key provided.');

export const KEY_DISABLED = fixed(
  'KEY_DISABLED',
  401,
  'invalid_api_key',
  'key_disabled',
  'This API key has been disabled. Ask the gateway owner to enable it.',
);

export const KEY_EXPIRED = worded(
  'KEY_EXPIRED',
  401,
  'invalid_api_key',
  'key_expired',
  (expiresAt: number) => `This API key expired on ${new Date(expiresAt).toISOString()}. Ask the gateway owner for a new one.`,
);

// ── 403: what a key may do ───────────────────────────────────────────────────────────────────────

export const MODEL_NOT_ALLOWED = worded(
  'MODEL_NOT_ALLOWED',
  403,
  'invalid_request_error',
  'model_not_allowed',
  (model: unknown) =>
    typeof model === 'string'
      ? `This API key may not use the model '${echoed(model)}'.`
      : 'This API key may only use certain models; name one in "model".',
  'model',
);

export const ORIGIN_NOT_ALLOWED = fixed(
  'ORIGIN_NOT_ALLOWED',
  403,
  'invalid_request_error',
  'origin_not_allowed',
  'This API key may not be used from this website (Origin).',
);

/** A llama-server parameter the request policy refuses (policy/params.ts: the table and why). */
export const PARAM_NOT_ALLOWED = worded(
  'PARAM_NOT_ALLOWED',
  403,
  'invalid_request_error',
  'param_not_allowed',
  (name: string, above?: number) =>
    above === undefined
      ? `This API key may not use the parameter '${echoed(name)}' (parameter policy: GATEWAY_PARAM_POLICY or the key's policy); remove it from the request.`
      : `This API key may not set '${echoed(name)}' above ${above} (parameter policy: GATEWAY_PARAM_POLICY or the key's policy).`,
  (name: string, _above?: number) => name,
);

// ── 429: how much, how often ─────────────────────────────────────────────────────────────────────

/** The per-key limits, as admission names them. */
export type RateLimitName = 'requests per minute' | 'tokens per minute' | 'tokens per day' | 'concurrent requests';

const rateLimit = (name: string, limit: RateLimitName): ((max: number, retryAfter: number) => GatewayError) =>
  worded(
    name,
    429,
    'rate_limit_exceeded',
    limit.replace(/ /g, '_'),
    (max: number, retryAfter: number) => `Rate limit reached for this API key: ${max} ${limit}. Try again in ${retryAfter} s.`,
  );

const RATE_LIMITS: Record<RateLimitName, (max: number, retryAfter: number) => GatewayError> = {
  'requests per minute': rateLimit('RATE_LIMITED_RPM', 'requests per minute'),
  'tokens per minute': rateLimit('RATE_LIMITED_TPM', 'tokens per minute'),
  'tokens per day': rateLimit('RATE_LIMITED_TPD', 'tokens per day'),
  'concurrent requests': rateLimit('RATE_LIMITED_CONCURRENCY', 'concurrent requests'),
};

/** The key is at one of its limits (the code names which: requests_per_minute, …). */
export const RATE_LIMITED = (limit: RateLimitName, max: number, retryAfter: number): GatewayError => RATE_LIMITS[limit](max, retryAfter);

/**
 * A hard token budget over a calendar period is spent (admission/budgets.ts): the key's, or its end
 * user's under it. Retry-After says when the period resets.
 */
export const BUDGET_EXCEEDED = worded(
  'BUDGET_EXCEEDED',
  429,
  'insufficient_quota',
  'budget_exceeded',
  (who: string, limit: number, period: string, tz: string, used: number, held: number, resets: string) =>
    `${who} token budget is spent: ${limit} tokens per ${period} (${tz}); ${used} used` +
    (held > 0 ? `, ${held} held by requests still running` : '') +
    `. It resets at ${resets}.`,
);

export const KEY_QUEUE_FULL = worded(
  'KEY_QUEUE_FULL',
  429,
  'rate_limit_exceeded',
  'queue_full_for_key',
  (max: number) => `This API key already has ${max} requests waiting for the model server; wait for some to finish.`,
);

export const AUTH_BRAKE = worded(
  'AUTH_BRAKE',
  429,
  'rate_limit_exceeded',
  'too_many_failed_attempts',
  (wait: number) => `Too many requests with a wrong API key from your address; try again in ${wait} s.`,
);

// ── 4xx: the request itself ──────────────────────────────────────────────────────────────────────

export const ROUTE_NOT_FOUND = worded(
  'ROUTE_NOT_FOUND',
  404,
  'invalid_request_error',
  'route_not_found',
  (method: string, url: string) =>
    `No route ${method} ${echoed(url).split(/[?#]/)[0]!}. This gateway serves the OpenAI-compatible /v1 API.`,
);

/** Listed in a routing error: the models a key may use, at most this many named. */
const MODELS_LISTED = 20;
function modelList(models: readonly string[]): string {
  if (models.length === 0) return 'none';
  const named = models.slice(0, MODELS_LISTED).map(echoed).join(', ');
  return models.length > MODELS_LISTED ? `${named} and ${models.length - MODELS_LISTED} more` : named;
}

export const MODEL_NOT_FOUND = worded(
  'MODEL_NOT_FOUND',
  404,
  'invalid_request_error',
  'model_not_found',
  (id: string, available?: readonly string[]) =>
    available === undefined
      ? `The model '${echoed(id)}' does not exist`
      : `The model '${echoed(id)}' does not exist or is not served now. Available to this key: ${modelList(available)}.`,
  'model',
);

/** Several models are served and the body names no model. */
export const MODEL_REQUIRED = worded(
  'MODEL_REQUIRED',
  400,
  'invalid_request_error',
  'model_required',
  (available: readonly string[]) =>
    `This gateway serves several models; say which one in "model". Available to this key: ${modelList(available)}.`,
  'model',
);

// One code, three causes: clients see "the body is not usable JSON" either way.
const INVALID_JSON_CAUSES = causes('INVALID_JSON', 400, 'invalid_request_error', 'invalid_json', {
  parse: (detail: string) =>
    `We could not parse the JSON body of your request. (${detail}) Send a JSON object with Content-Type: application/json.`,
  notObject: 'The request body must be a JSON object.',
  // Bad input the gateway refuses itself rather than forward (issue #12): llama-server answers it
  // with a 500 and its parser's internals.
  notUtf8: 'The request body is not valid UTF-8. JSON must be sent as UTF-8 text (RFC 8259).',
  // Valid JSON to Node, a 500 with parser internals from llama-server (red team, issue #12).
  loneSurrogate: 'The JSON body has a string with a lone surrogate escape (\\ud800–\\udfff without its pair); send valid Unicode.',
  notFinite: 'The JSON body has a number too large for a double (like 1e400); send a finite number.',
});
export const INVALID_JSON = INVALID_JSON_CAUSES.parse;
export const BODY_NOT_OBJECT = INVALID_JSON_CAUSES.notObject;
export const INVALID_UTF8 = INVALID_JSON_CAUSES.notUtf8;
export const LONE_SURROGATE = INVALID_JSON_CAUSES.loneSurrogate;
export const NUMBER_NOT_FINITE = INVALID_JSON_CAUSES.notFinite;

export const BODY_MISSING = fixed('BODY_MISSING', 400, 'invalid_request_error', 'missing_body', 'This route needs a JSON request body.');

// llama-server crashes outright on very deep nesting (issue #12).
export const BODY_TOO_DEEP = worded(
  'BODY_TOO_DEEP',
  400,
  'invalid_request_error',
  'json_too_deep',
  (max: number) => `The JSON body is nested more than ${max} levels deep (objects and arrays inside each other).`,
);

/** OpenAI's own wording and code for a field of the wrong type. */
export const INVALID_TYPE = worded(
  'INVALID_TYPE',
  400,
  'invalid_request_error',
  'invalid_type',
  (param: string, expected: string, got: unknown) =>
    `Invalid type for '${param}': expected ${expected}, but got ${jsonTypeName(got)} instead.`,
  (param: string) => param,
);

/** OpenAI's own wording and code for an array over its length limit (embeddings: 2,048 inputs). */
export const ARRAY_TOO_LONG = worded(
  'ARRAY_TOO_LONG',
  400,
  'invalid_request_error',
  'array_above_max_length',
  (param: string, max: number, length: number) =>
    `Invalid '${param}': array too long. Expected an array with maximum length ${max}, but got an array with length ${length} instead.`,
  (param: string) => param,
);

/** A GBNF grammar nested deeper than llama-server can parse without crashing. */
export const GRAMMAR_TOO_DEEP = worded(
  'GRAMMAR_TOO_DEEP',
  400,
  'invalid_request_error',
  'grammar_too_deep',
  (max: number) => `Invalid 'grammar': its parentheses nest deeper than ${max} levels.`,
  'grammar',
);

/** OpenAI's own wording and code for a string over its length limit. */
export const STRING_TOO_LONG = worded(
  'STRING_TOO_LONG',
  400,
  'invalid_request_error',
  'string_above_max_length',
  (param: string, max: number, length: number) =>
    `Invalid '${param}': string too long. Expected a string with maximum length ${max}, but got a string with length ${length} instead.`,
  (param: string) => param,
);

// A multipart/form-data upload (/v1/audio/transcriptions) the gateway cannot read (http/form-data.ts).
const INVALID_FORM_CAUSES = causes('INVALID_FORM', 400, 'invalid_request_error', 'invalid_form', {
  noBoundary: 'The Content-Type has no valid boundary; send multipart/form-data; boundary=… as your HTTP library writes it.',
  notClosed: 'The multipart/form-data body ends before its closing boundary (--boundary--): it was cut short or uses another boundary.',
  malformed: 'The multipart/form-data body is not well formed: each part needs CRLF line ends and a Content-Disposition with a name.',
  twoModels: 'The form has more than one "model" field; send one.',
  modelNotUtf8: 'The form\'s "model" field is not valid UTF-8.',
});
export const FORM_NO_BOUNDARY = INVALID_FORM_CAUSES.noBoundary;
export const FORM_NOT_CLOSED = INVALID_FORM_CAUSES.notClosed;
export const FORM_MALFORMED = INVALID_FORM_CAUSES.malformed;
export const FORM_TWO_MODELS = INVALID_FORM_CAUSES.twoModels;
export const FORM_MODEL_NOT_UTF8 = INVALID_FORM_CAUSES.modelNotUtf8;

export const FORM_FILE_MISSING = fixed(
  'FORM_FILE_MISSING',
  400,
  'invalid_request_error',
  'missing_file',
  'The form has no "file" part; send the audio to transcribe as the "file" field (multipart/form-data).',
  'file',
);

/**
 * A request that runs more llama-server tasks at once (a prompt array: one per prompt; `n`: one
 * per choice) than its key may run: it could never start, so it is refused rather than queued.
 */
export const TOO_MANY_TASKS = worded(
  'TOO_MANY_TASKS',
  400,
  'invalid_request_error',
  'too_many_tasks',
  (tasks: number, max: number, _param: 'n' | 'prompt') =>
    `This request runs ${tasks} tasks on the model server at once (one per prompt and choice); this API key may run at most ${max} at once.`,
  (_tasks: number, _max: number, param: 'n' | 'prompt') => param,
);

// Media URLs in a message (policy/media.ts): llama-server would download them from inside the
// operator's network, so the key's remote_media rule refuses them or the gateway fetches them itself
// (policy/media-fetch.ts). The reason never quotes the remote answer, only what the gateway saw.
export const REMOTE_MEDIA_REFUSED = worded(
  'REMOTE_MEDIA_REFUSED',
  400,
  'invalid_request_error',
  'remote_media_refused',
  (path: string) =>
    `'${echoed(path)}' is a URL the model server would download; this API key may not send media by URL (remote media rule: refuse). Send the file inline instead: a data: URL (data:image/png;base64,…) or base64 data.`,
  (path: string) => path,
);

export const MEDIA_FETCH_FAILED = worded(
  'MEDIA_FETCH_FAILED',
  400,
  'invalid_request_error',
  'media_fetch_failed',
  (path: string, host: string, reason: string) =>
    `The gateway could not fetch the media at '${echoed(path)}' (host ${echoed(host)}): ${reason}. Send the file inline as a data: URL instead.`,
  (path: string) => path,
);

export const MEDIA_TOO_MANY = worded(
  'MEDIA_TOO_MANY',
  400,
  'invalid_request_error',
  'too_many_media_urls',
  (found: number, max: number) =>
    `This request has ${found} media URLs; the gateway fetches at most ${max} per request (GATEWAY_MEDIA_MAX_COUNT). Send the files inline as data: URLs instead.`,
);

// The request policy's limit on prompt size (policy/request-policy.ts), apart from the body limit
// (413): per key, and in tokens as llama-server counts them.
const PROMPT_TOO_LARGE_CAUSES = causes('PROMPT_TOO_LARGE', 400, 'invalid_request_error', 'prompt_too_large', {
  bytes: (size: number, max: number) =>
    `The request is ${size} bytes; this API key may send prompts of at most ${max} bytes (max_prompt_bytes: the key's policy or GATEWAY_MAX_PROMPT_BYTES).`,
  tokens: (tokens: number, max: number) =>
    `The prompt is ${tokens} tokens; this API key may send prompts of at most ${max} tokens (max_prompt_tokens: the key's policy or GATEWAY_MAX_PROMPT_TOKENS).`,
});
export const PROMPT_TOO_MANY_BYTES = PROMPT_TOO_LARGE_CAUSES.bytes;
export const PROMPT_TOO_MANY_TOKENS = PROMPT_TOO_LARGE_CAUSES.tokens;

function jsonTypeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a decimal';
  if (typeof v === 'boolean') return 'a boolean';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

export const BODY_TOO_LARGE = worded(
  'BODY_TOO_LARGE',
  413,
  'invalid_request_error',
  'request_too_large',
  (limit: number) => `The request body is larger than this gateway's limit of ${limit} bytes (GATEWAY_BODY_LIMIT).`,
);

// Malformed HTTP, answered on the raw socket before Fastify sees a request (http/malformed-http.ts).
export const MALFORMED_REQUEST = fixed(
  'MALFORMED_REQUEST',
  400,
  'invalid_request_error',
  'malformed_request',
  'The request is not valid HTTP/1.1 (a malformed request line, header or chunked body).',
);

export const HEADERS_TOO_LARGE = fixed(
  'HEADERS_TOO_LARGE',
  431,
  'invalid_request_error',
  'headers_too_large',
  'The request headers are larger than this server accepts.',
);

export const REQUEST_RECEIVE_TIMEOUT = fixed(
  'REQUEST_RECEIVE_TIMEOUT',
  408,
  'invalid_request_error',
  'request_timeout',
  'The request was not received in time; send the headers and body without long pauses.',
);

export const MISSING_HOST = fixed('MISSING_HOST', 400, 'invalid_request_error', 'missing_host', 'An HTTP/1.1 request needs a Host header.');

// Fastify's own request errors (fromFastifyError below).
const INVALID_URL = fixed('INVALID_URL', 400, 'invalid_request_error', 'invalid_url', 'The request path is not a valid URL.');
const PATH_TOO_LONG = fixed('PATH_TOO_LONG', 414, 'invalid_request_error', 'path_too_long', 'A part of the request path is too long.');
// The route's JSON schema refused the body or query (admin API); ajv's message names the field.
const INVALID_BODY = worded('INVALID_BODY', 400, 'invalid_request_error', 'invalid_body', (detail: string) => detail);
const INVALID_CONTENT_LENGTH = fixed(
  'INVALID_CONTENT_LENGTH',
  400,
  'invalid_request_error',
  'invalid_content_length',
  'Content-Length does not match the body that was sent.',
);
// Fastify's code and words, as the gateway has always answered them (admin API without a JSON type).
const UNSUPPORTED_MEDIA_TYPE = fixed(
  'UNSUPPORTED_MEDIA_TYPE',
  415,
  'invalid_request_error',
  'FST_ERR_CTP_INVALID_MEDIA_TYPE',
  'Unsupported Media Type',
);
// Any other 4xx Fastify raises while reading a request (e.g. a body stream that fails mid-way).
const BAD_REQUEST = worded('BAD_REQUEST', 400, 'invalid_request_error', 'bad_request', (detail: string) =>
  detail.slice(0, MAX_ERROR_DETAIL_LENGTH),
);

// ── The admin API ────────────────────────────────────────────────────────────────────────────────
// The key store's refusals (its KeyStoreError codes) carry the store's message and field.

export const KEY_NOT_FOUND = worded('KEY_NOT_FOUND', 404, 'invalid_request_error', 'key_not_found', (message: string) => message);

export const KEY_NAME_TAKEN = worded(
  'KEY_NAME_TAKEN',
  409,
  'invalid_request_error',
  'key_name_taken',
  (message: string) => message,
  'name',
);

export const INVALID_KEY_FIELD = worded(
  'INVALID_KEY_FIELD',
  400,
  'invalid_request_error',
  'invalid_key_field',
  (message: string, _field: string | null) => message,
  (_message: string, field: string | null) => field,
);

// The reason is in the gateway's log (the file path, what SQLite said), not in the answer.
export const KEY_DB_UNUSABLE = fixed(
  'KEY_DB_UNUSABLE',
  500,
  'server_error',
  'db_unusable',
  'The key database cannot be used; the gateway owner will find why in its log.',
);

export const INVALID_PERIOD = worded('INVALID_PERIOD', 400, 'invalid_request_error', 'invalid_period', (message: string) => message);

// ── 5xx: the gateway and the model server (also sent as a stream's last event) ───────────────────

export const QUEUE_FULL = fixed(
  'QUEUE_FULL',
  503,
  'server_error',
  'queue_full',
  'The model server is busy and the waiting line is full; try again shortly.',
);

export const QUEUE_TIMEOUT = worded(
  'QUEUE_TIMEOUT',
  503,
  'server_error',
  'queue_timeout',
  (ms: number) =>
    `The model server stayed busy for ${seconds(ms)} s while this request waited (GATEWAY_QUEUE_TIMEOUT_MS); try again shortly.`,
);

/** The queue deadline passed while every server of the request's model was loading its model. */
export const MODEL_LOADING = worded(
  'MODEL_LOADING',
  503,
  'server_error',
  'model_loading',
  (ms: number) =>
    `The model server was still loading its model after this request waited ${seconds(ms)} s (GATEWAY_QUEUE_TIMEOUT_MS); try again shortly.`,
);

export const SHUTTING_DOWN = fixed(
  'SHUTTING_DOWN',
  503,
  'server_error',
  'shutting_down',
  'The gateway is restarting; retry in a few seconds.',
);

/**
 * Redis (GATEWAY_REDIS_URL) does not answer and GATEWAY_REDIS_DOWN=refuse, or a budget's count
 * cannot be read from the usage table (PostgreSQL down): no decision without the count.
 */
export const SHARED_STATE_UNAVAILABLE = fixed(
  'SHARED_STATE_UNAVAILABLE',
  503,
  'server_error',
  'shared_state_unavailable',
  'The gateway cannot reach the shared store its limits and budgets are counted in; try again shortly.',
);

/** Several llama-servers and none has told its models yet (the first seconds after start). */
export const UPSTREAMS_STARTING = fixed(
  'UPSTREAMS_STARTING',
  503,
  'server_error',
  'upstreams_starting',
  'The gateway has not yet heard from its model servers which models they serve; retry in a few seconds.',
);

export const INTERNAL = fixed('INTERNAL', 500, 'server_error', 'internal_error', 'The gateway hit an internal error.');

export const UPSTREAM_UNREACHABLE = fixed(
  'UPSTREAM_UNREACHABLE',
  502,
  'upstream_error',
  'upstream_unreachable',
  'The gateway could not reach the model server (llama-server). It may be stopped or starting up; try again shortly.',
);

export const UPSTREAM_BAD_RESPONSE = fixed(
  'UPSTREAM_BAD_RESPONSE',
  502,
  'upstream_error',
  'upstream_bad_response',
  'The model server (llama-server) sent a response the gateway could not use.',
);

/** A stream from llama-server broke off (crash, reset) after it started. */
export const UPSTREAM_STREAM_BROKEN = fixed(
  'UPSTREAM_STREAM_BROKEN',
  502,
  'upstream_error',
  'upstream_stream_broken',
  'The model server (llama-server) closed the stream before it was complete.',
);

/**
 * llama-server answered an error after the gateway had started the stream (it waited in the
 * queue), in a body that is not its usual JSON error; see upstreamErrorInStream.
 */
export const UPSTREAM_STATUS_IN_STREAM = worded(
  'UPSTREAM_STATUS_IN_STREAM',
  502,
  'upstream_error',
  'upstream_error',
  (status: number) => `The model server answered ${status}.`,
);

// One code, a wording per wait: llama-server's answer did not start (a gateway's own short call,
// or a proxied request), or its body stopped coming (a JSON body, a stream).
const UPSTREAM_TIMEOUTS = causes('UPSTREAM_TIMEOUT', 504, 'upstream_error', 'upstream_timeout', {
  call: (ms: number) => `The model server (llama-server) did not answer within ${seconds(ms)} s.`,
  headers: (ms: number) => `The model server (llama-server) did not answer within ${seconds(ms)} s (GATEWAY_HEADERS_TIMEOUT_MS).`,
  idle: (ms: number) => `The model server (llama-server) did not answer within ${seconds(ms)} s (GATEWAY_IDLE_TIMEOUT_MS).`,
  stream: (ms: number) => `The model server sent nothing for ${seconds(ms)} s (GATEWAY_IDLE_TIMEOUT_MS); the stream was ended.`,
});
export type UpstreamWait = keyof typeof UPSTREAM_TIMEOUTS;
export const UPSTREAM_TIMEOUT = (ms: number, wait: UpstreamWait = 'call'): GatewayError => UPSTREAM_TIMEOUTS[wait](ms);

/**
 * Not an entry: llama-server's own error, passed through. When it comes after the gateway has
 * started the stream (the request waited in the queue), it can only be the stream's last event:
 * llama-server's message, with its error type as the code.
 */
export function upstreamErrorInStream(message: string, upstreamType: string): GatewayError {
  return new GatewayError(502, 'upstream_error', upstreamType, message);
}

/** Fastify's own request errors, answered in OpenAI shape. */
export function fromFastifyError(err: { code?: string; statusCode?: number; message: string }, bodyLimit: number): GatewayError {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return BODY_TOO_LARGE(bodyLimit);
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return BODY_MISSING;
    case 'FST_ERR_BAD_URL':
      return INVALID_URL;
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return PATH_TOO_LONG;
    case 'FST_ERR_VALIDATION':
      return INVALID_BODY(err.message);
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return INVALID_CONTENT_LENGTH;
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return UNSUPPORTED_MEDIA_TYPE;
    default:
      break;
  }
  const status = err.statusCode ?? 500;
  if (status === 503) return SHUTTING_DOWN; // Fastify's answer to requests that arrive while closing
  // Fastify's messages may quote the request (a Content-Type, a URL): cut them.
  if (status >= 400 && status < 500) return BAD_REQUEST(err.message);
  return INTERNAL;
}
