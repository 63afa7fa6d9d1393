// The errors the gateway itself answers with. Clients are OpenAI SDKs, so every one has OpenAI's
// shape {"error":{"message","type","param","code"}}; upstream (llama-server) errors are passed
// through untouched instead. A 5xx never carries an internal message.
import { MAX_ECHOED_LENGTH, MAX_ERROR_DETAIL_LENGTH } from './http/client-input.js';

export class GatewayError extends Error {
  /** The serialized response body, computed once. */
  readonly body: string;

  constructor(
    readonly statusCode: number,
    readonly type: string,
    readonly code: string | null,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'GatewayError';
    this.body = JSON.stringify({ error: { message, type, param, code } });
  }
}

// The body the original gateway sent for a missing or wrong key; kept word for word (clients match
// on it), with OpenAI's `param`/`code` added.
export const INVALID_API_KEY = new GatewayError(401, 'invalid_api_key', 'invalid_api_key', 'Incorrect API key provided.');

export const KEY_DISABLED = new GatewayError(401, 'invalid_api_key', 'key_disabled', 'This API key has been disabled. Ask the gateway owner to enable it.');

export const KEY_EXPIRED = (expiresAt: number): GatewayError =>
  new GatewayError(401, 'invalid_api_key', 'key_expired', `This API key expired on ${new Date(expiresAt).toISOString()}. Ask the gateway owner for a new one.`);

export const MODEL_NOT_ALLOWED = (model: unknown): GatewayError =>
  new GatewayError(
    403,
    'invalid_request_error',
    'model_not_allowed',
    typeof model === 'string' ? `This API key may not use the model '${model.slice(0, MAX_ECHOED_LENGTH)}'.` : 'This API key may only use certain models; name one in "model".',
    'model',
  );

export const ORIGIN_NOT_ALLOWED = new GatewayError(403, 'invalid_request_error', 'origin_not_allowed', 'This API key may not be used from this website (Origin).');

export const RATE_LIMITED = (limit: string, max: number, retryAfter: number): GatewayError =>
  new GatewayError(429, 'rate_limit_exceeded', limit.replace(/ /g, '_'), `Rate limit reached for this API key: ${max} ${limit}. Try again in ${retryAfter} s.`);

export const KEY_QUEUE_FULL = (max: number): GatewayError =>
  new GatewayError(429, 'rate_limit_exceeded', 'queue_full_for_key', `This API key already has ${max} requests waiting for the model server; wait for some to finish.`);

export const QUEUE_FULL = new GatewayError(503, 'server_error', 'queue_full', 'The model server is busy and the waiting line is full; try again shortly.');

export const QUEUE_TIMEOUT = (ms: number): GatewayError =>
  new GatewayError(503, 'server_error', 'queue_timeout', `The model server stayed busy for ${Math.round(ms / 1000)} s while this request waited (GATEWAY_QUEUE_TIMEOUT_MS); try again shortly.`);

export const AUTH_BRAKE = (seconds: number): GatewayError =>
  new GatewayError(429, 'rate_limit_exceeded', 'too_many_failed_attempts', `Too many requests with a wrong API key from your address; try again in ${seconds} s.`);

export const ROUTE_NOT_FOUND = (method: string, url: string): GatewayError =>
  new GatewayError(404, 'invalid_request_error', 'route_not_found', `No route ${method} ${url.slice(0, MAX_ECHOED_LENGTH).split(/[?#]/)[0]!}. This gateway serves the OpenAI-compatible /v1 API.`);

export const MODEL_NOT_FOUND = (id: string): GatewayError =>
  new GatewayError(404, 'invalid_request_error', 'model_not_found', `The model '${id.slice(0, MAX_ECHOED_LENGTH)}' does not exist`, 'model');

export const INVALID_JSON = (detail: string): GatewayError =>
  new GatewayError(400, 'invalid_request_error', 'invalid_json', `We could not parse the JSON body of your request. (${detail}) Send a JSON object with Content-Type: application/json.`);

export const BODY_NOT_OBJECT = new GatewayError(400, 'invalid_request_error', 'invalid_json', 'The request body must be a JSON object.');

export const BODY_MISSING = new GatewayError(400, 'invalid_request_error', 'missing_body', 'This route needs a JSON request body.');

// Bad input the gateway refuses itself rather than forward (issue #12): llama-server answers these
// with a 500 and its parser's internals, or crashes outright on very deep nesting.
export const INVALID_UTF8 = new GatewayError(400, 'invalid_request_error', 'invalid_json', 'The request body is not valid UTF-8. JSON must be sent as UTF-8 text (RFC 8259).');

export const BODY_TOO_DEEP = (max: number): GatewayError =>
  new GatewayError(400, 'invalid_request_error', 'json_too_deep', `The JSON body is nested more than ${max} levels deep (objects and arrays inside each other).`);

/** OpenAI's own wording and code for a field of the wrong type. */
export const INVALID_TYPE = (param: string, expected: string, got: unknown): GatewayError =>
  new GatewayError(400, 'invalid_request_error', 'invalid_type', `Invalid type for '${param}': expected ${expected}, but got ${jsonTypeName(got)} instead.`, param);

/** OpenAI's own wording and code for a string over its length limit. */
export const STRING_TOO_LONG = (param: string, max: number, length: number): GatewayError =>
  new GatewayError(400, 'invalid_request_error', 'string_above_max_length', `Invalid '${param}': string too long. Expected a string with maximum length ${max}, but got a string with length ${length} instead.`, param);

function jsonTypeName(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'an integer' : 'a decimal';
  if (typeof v === 'boolean') return 'a boolean';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

// Malformed HTTP, answered on the raw socket before Fastify sees a request (malformed-http.ts).
export const MALFORMED_REQUEST = new GatewayError(400, 'invalid_request_error', 'malformed_request', 'The request is not valid HTTP/1.1 (a malformed request line, header or chunked body).');

export const HEADERS_TOO_LARGE = new GatewayError(431, 'invalid_request_error', 'headers_too_large', 'The request headers are larger than this server accepts.');

export const REQUEST_RECEIVE_TIMEOUT = new GatewayError(408, 'invalid_request_error', 'request_timeout', 'The request was not received in time; send the headers and body without long pauses.');

export const MISSING_HOST = new GatewayError(400, 'invalid_request_error', 'missing_host', 'An HTTP/1.1 request needs a Host header.');

export const BODY_TOO_LARGE = (limit: number): GatewayError =>
  new GatewayError(413, 'invalid_request_error', 'request_too_large', `The request body is larger than this gateway's limit of ${limit} bytes (GATEWAY_BODY_LIMIT).`);

export const UPSTREAM_UNREACHABLE = new GatewayError(502, 'upstream_error', 'upstream_unreachable', 'The gateway could not reach the model server (llama-server). It may be stopped or starting up; try again shortly.');

export const UPSTREAM_BAD_RESPONSE = new GatewayError(502, 'upstream_error', 'upstream_bad_response', 'The model server (llama-server) sent a response the gateway could not use.');

export const UPSTREAM_TIMEOUT = (ms: number, setting?: string): GatewayError =>
  new GatewayError(504, 'upstream_error', 'upstream_timeout', `The model server (llama-server) did not answer within ${Math.round(ms / 1000)} s${setting === undefined ? '' : ` (${setting})`}.`);

export const SHUTTING_DOWN = new GatewayError(503, 'server_error', 'shutting_down', 'The gateway is restarting; retry in a few seconds.');

export const INTERNAL = new GatewayError(500, 'server_error', 'internal_error', 'The gateway hit an internal error.');

/** Fastify's own request errors, answered in OpenAI shape. */
export function fromFastifyError(err: { code?: string; statusCode?: number; message: string }, bodyLimit: number): GatewayError {
  switch (err.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return BODY_TOO_LARGE(bodyLimit);
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return BODY_MISSING;
    case 'FST_ERR_BAD_URL':
      return new GatewayError(400, 'invalid_request_error', 'invalid_url', 'The request path is not a valid URL.');
    case 'FST_ERR_MAX_PARAM_LENGTH':
      return new GatewayError(414, 'invalid_request_error', 'path_too_long', 'A part of the request path is too long.');
    case 'FST_ERR_VALIDATION':
      return new GatewayError(400, 'invalid_request_error', 'invalid_body', err.message);
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new GatewayError(400, 'invalid_request_error', 'invalid_content_length', 'Content-Length does not match the body that was sent.');
    default:
      break;
  }
  const status = err.statusCode ?? 500;
  if (status === 503) return SHUTTING_DOWN; // Fastify's answer to requests that arrive while closing
  if (status >= 400 && status < 500) {
    // Fastify's messages may quote the request (a Content-Type, a URL): cut them.
    return new GatewayError(status, 'invalid_request_error', err.code ?? null, err.message.slice(0, MAX_ERROR_DETAIL_LENGTH));
  }
  return INTERNAL;
}
