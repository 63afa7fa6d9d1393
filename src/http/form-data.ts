// A multipart/form-data upload (RFC 7578, RFC 2046 §5.1.1), as OpenAI's /v1/audio/transcriptions
// takes it: the gateway reads only the few text fields it acts on (`model` for routing and key
// policy, `stream` for the queue) and checks the form is whole; the bytes are forwarded unchanged.
//
// The body is scanned as bytes with Buffer.indexOf (native) for the delimiter `CRLF--boundary`;
// only part headers (bounded) and the fields read are decoded, never the file. Strict on purpose:
// CRLF line ends, a closing delimiter, a Content-Disposition with a name on every part — what
// every client library writes (curl, the OpenAI SDKs, requests, browsers' FormData).
import { isUtf8 } from 'node:buffer';
import { MAX_MODEL_LENGTH } from './client-input.js';

/** Why a form is refused (mapped to errors.ts entries by the json-body plugin). */
export type FormProblem =
  | 'no_boundary' // the Content-Type has no (valid) boundary parameter
  | 'not_closed' // no closing delimiter `--boundary--`: cut short, or the wrong boundary
  | 'malformed' // a delimiter not followed by CRLF, a part without headers or without a name
  | 'no_file' // no part named `file`
  | 'two_models' // more than one `model` field: the key policy and llama-server could read different ones
  | 'model_not_utf8'
  | 'model_too_long';

interface FormFields {
  /** the text fields the gateway acts on, in the shape a JSON body would have them */
  readonly json: Record<string, unknown>;
}

export type FormResult = FormFields | { readonly problem: FormProblem; readonly length?: number };

/** Longest header section of one part (Content-Disposition, Content-Type): generous. */
const MAX_PART_HEADERS = 16 * 1024;
/** A `model` field longer than this many bytes is over MAX_MODEL_LENGTH characters (≥ 1 char per 3 UTF-8 bytes). */
const MAX_MODEL_BYTES = MAX_MODEL_LENGTH * 3;

const CR = 0x0d;
const LF = 0x0a;
const DASH = 0x2d;
const HEADERS_END = Buffer.from('\r\n\r\n');
const TRUE = Buffer.from('true');

// RFC 2046: 1–70 characters of a fixed set, not ending in a space; quoted when it has any outside
// the token set. Parameter names are case-insensitive.
const BOUNDARY_PARAM = /;\s*boundary\s*=\s*(?:"([^"]*)"|([^;\s]*))/i;
const BOUNDARY_CHARS = /^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$/;
// One header line (no folding, no space before the colon: other readers would not see it as one).
const DISPOSITION = /^content-disposition:[ \t]*form-data[ \t]*(;.*)?$/im;
// One `; key=value` of its parameters (a token or a quoted string), read from lastIndex.
const PARAM = /\s*;\s*([^\s;="]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;="]*))\s*/y;
const TRAILING = /^\s*;?\s*$/;

/** The boundary of a multipart/form-data Content-Type, or undefined when it has none (or a bad one). */
export function boundaryOf(contentType: string): string | undefined {
  const m = BOUNDARY_PARAM.exec(contentType);
  const boundary = m?.[1] ?? m?.[2];
  return boundary !== undefined && BOUNDARY_CHARS.test(boundary) ? boundary : undefined;
}

/**
 * The `name` of a part, from its header section, or undefined when it has no form-data disposition
 * or one that another reader could take for a different name. What stands behind the gateway reads
 * the form's `model` itself (llama-swap: Go's quote-aware mime.ParseMediaType, where `name*=` wins
 * over `name=`; llama-server's router: cpp-httplib, which splits on every ';' and '=', quotes or
 * not): the key policy must check the part they run. So a ';' inside a quoted value, an '=' in the
 * name, `name*=`, two names or anything not `; key=value` make the form malformed.
 */
function partName(headers: string): string | undefined {
  const params = DISPOSITION.exec(headers)?.[1];
  if (params === undefined) return undefined;
  let name: string | undefined;
  PARAM.lastIndex = 0;
  for (let at = 0; at < params.length; at = PARAM.lastIndex) {
    const m = PARAM.exec(params);
    if (m === null) return TRAILING.test(params.slice(at)) ? name : undefined;
    const key = m[1]!.toLowerCase();
    const quoted = m[2];
    if (quoted?.includes(';') === true || key.startsWith('name*')) return undefined;
    if (key !== 'name') continue;
    if (name !== undefined) return undefined;
    name = quoted === undefined ? m[3]! : quoted.replace(/\\(.)/g, '$1');
    if (name.includes('=')) return undefined;
  }
  return name;
}

/**
 * Reads a multipart/form-data body: the fields the gateway acts on (`model`, `stream: true`), and
 * whether the form is whole and has a `file` part.
 */
export function readForm(raw: Buffer, contentType: string): FormResult {
  const boundary = boundaryOf(contentType);
  if (boundary === undefined) return { problem: 'no_boundary' };
  const delimiter = Buffer.from(`\r\n--${boundary}`);
  // The first delimiter may open the body without its CRLF; anything before it is a preamble.
  let at: number;
  if (raw.length >= delimiter.length - 2 && raw.compare(delimiter, 2, delimiter.length, 0, delimiter.length - 2) === 0) {
    at = delimiter.length - 2;
  } else {
    const first = raw.indexOf(delimiter);
    if (first < 0) return { problem: 'not_closed' };
    at = first + delimiter.length;
  }
  const json: Record<string, unknown> = {};
  let file = false;
  for (;;) {
    // After a delimiter: `--` closes the form (an epilogue may follow); else optional transport
    // padding (spaces, tabs) and CRLF open a part.
    if (raw[at] === DASH && raw[at + 1] === DASH) break;
    while (raw[at] === 0x20 || raw[at] === 0x09) at++;
    if (at + 1 >= raw.length) return { problem: 'not_closed' };
    if (raw[at] !== CR || raw[at + 1] !== LF) return { problem: 'malformed' };
    at += 2;
    const headersEnd = raw.subarray(at, at + MAX_PART_HEADERS + HEADERS_END.length).indexOf(HEADERS_END);
    if (headersEnd < 0) return { problem: raw.indexOf(delimiter, at) < 0 ? 'not_closed' : 'malformed' };
    const name = partName(raw.toString('latin1', at, at + headersEnd));
    if (name === undefined) return { problem: 'malformed' };
    const start = at + headersEnd + HEADERS_END.length;
    const end = raw.indexOf(delimiter, start);
    if (end < 0) return { problem: 'not_closed' };
    if (name === 'file') file = true;
    else if (name === 'model') {
      if (json.model !== undefined) return { problem: 'two_models' };
      if (end - start > MAX_MODEL_BYTES) return { problem: 'model_too_long', length: end - start };
      if (!isUtf8(raw.subarray(start, end))) return { problem: 'model_not_utf8' };
      const model = raw.toString('utf8', start, end);
      if (model.length > MAX_MODEL_LENGTH) return { problem: 'model_too_long', length: model.length };
      json.model = model;
    } else if (name === 'stream' && end - start === TRUE.length && raw.compare(TRUE, 0, TRUE.length, start, end) === 0) {
      json.stream = true;
    }
    at = end + delimiter.length;
  }
  return file ? { json } : { problem: 'no_file' };
}
