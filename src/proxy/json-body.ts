// A proxied request's body, as the json-body plugin parsed it: the bytes as received (what is
// forwarded, never a re-serialisation) and their parse; and the one change the proxy makes to a
// body (asking a chat stream for its usage).
import { BODY_TOO_DEEP } from '../errors.js';
import { MAX_JSON_DEPTH } from '../http/client-input.js';

/** A parsed JSON request body: the bytes as received (forwarded unchanged) and their parse. */
export interface JsonBody {
  readonly raw: Buffer;
  readonly json: Record<string, unknown>;
  /**
   * A multipart/form-data upload (/v1/audio/transcriptions): `json` holds only the form fields the
   * gateway reads, and the bytes go upstream with the client's Content-Type (its boundary).
   */
  readonly form?: true;
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
    return Buffer.concat([
      raw.subarray(0, end),
      Buffer.from(`${empty ? '' : ','}"stream_options":{"include_usage":true}`),
      raw.subarray(end),
    ]);
  }
  const options = json.stream_options !== null && typeof json.stream_options === 'object' ? json.stream_options : {};
  try {
    return Buffer.from(JSON.stringify({ ...json, stream_options: { ...options, include_usage: true } }));
  } catch {
    // A body nested too deep for JSON.stringify (RangeError); json-body.ts refuses those first.
    throw BODY_TOO_DEEP(MAX_JSON_DEPTH);
  }
}

/** True when a chat request is a stream whose client did not ask for usage itself. */
export function needsIncludeUsage(json: Record<string, unknown>): boolean {
  if (json.stream !== true) return false;
  const options = json.stream_options as { include_usage?: unknown } | null | undefined;
  return options?.include_usage !== true;
}
