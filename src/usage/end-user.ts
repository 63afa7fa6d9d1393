// Who, inside a key, made a request: one key is often shared by an app that serves many people
// (Open WebUI sends X-OpenWebUI-User-Id / -Email; OpenAI clients send a `user` field). The end user
// is read from the places GATEWAY_END_USER names, first found wins, and recorded with the usage
// row. It is the client's word, never checked: it splits a key's usage (reports, per-user budgets)
// and is trusted for nothing else — a client can name anyone, so it grants and proves nothing.
//
// A value is cleaned, never refused: a 400 over an accounting label would break the app for all
// its users. Control and format characters (C0, DEL, C1, bidi overrides, zero-width) are removed,
// so a label cannot forge lines or reorder a report; surrounding spaces are trimmed; what is left
// is capped at MAX_END_USER_LENGTH characters. A value empty after that counts as absent and the
// next place is read.
import { isUtf8 } from 'node:buffer';

/** Longest end user kept (characters; a surrogate pair is never cut in two). */
export const MAX_END_USER_LENGTH = 128;

/** One place the end user may come from: a request header, or a (dotted) field of the JSON body. */
export type EndUserSource = { readonly header: string } | { readonly body: readonly string[] };

export const DEFAULT_END_USER = 'header:x-openwebui-user-id,body:user';

const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9a-z-]+$/;
const FIELD_NAME = /^[A-Za-z0-9_-]{1,64}$/;
const MAX_FIELD_DEPTH = 4;

/**
 * GATEWAY_END_USER: `off`, or a comma list of `header:NAME` and `body:FIELD` (FIELD may be dotted,
 * `body:metadata.user_id`). Throws Error with a sentence naming the bad part.
 */
export function parseEndUserSources(text: string): EndUserSource[] {
  const value = text.trim();
  if (value.toLowerCase() === 'off') return [];
  const out: EndUserSource[] = [];
  for (const part of value.split(',')) {
    const item = part.trim();
    if (item === '') continue;
    const colon = item.indexOf(':');
    const kind = colon < 0 ? '' : item.slice(0, colon).trim().toLowerCase();
    const name = colon < 0 ? '' : item.slice(colon + 1).trim();
    if (kind === 'header') {
      const header = name.toLowerCase();
      if (!HEADER_NAME.test(header))
        throw new Error(`names "${item}": a header name is letters, digits and - (header:x-openwebui-user-id)`);
      out.push({ header });
    } else if (kind === 'body') {
      const path = name.split('.');
      if (path.length > MAX_FIELD_DEPTH || !path.every((p) => FIELD_NAME.test(p)))
        throw new Error(
          `names "${item}": a body field is a name, or up to ${MAX_FIELD_DEPTH} names joined by dots (body:user, body:metadata.user_id)`,
        );
      out.push({ body: path });
    } else {
      throw new Error(`must be off, or a comma list of header:NAME and body:FIELD (such as ${DEFAULT_END_USER}), got "${item}"`);
    }
  }
  if (out.length === 0) throw new Error(`must be off, or a comma list of header:NAME and body:FIELD (such as ${DEFAULT_END_USER})`);
  return out;
}

/** Printable ASCII, no space at either end, within the cap: kept as it is (the usual id or email). */
const PLAIN = new RegExp(`^[\\x21-\\x7e](?:[\\x20-\\x7e]{0,${MAX_END_USER_LENGTH - 2}}[\\x21-\\x7e])?$`);
const UNSEEN = /[\p{Cc}\p{Cf}]/gu;
const NON_ASCII = /[\x80-\xff]/;

/** A value as recorded, or null when nothing is left of it. `header`: Node read it as latin1. */
export function cleanEndUser(value: string, header: boolean): string | null {
  if (PLAIN.test(value)) return value;
  let v = value;
  // Node decodes header bytes as latin1; a UTF-8 name (an email with ü) is re-read as UTF-8.
  if (header && NON_ASCII.test(v)) {
    const bytes = Buffer.from(v, 'latin1');
    if (isUtf8(bytes)) v = bytes.toString('utf8');
  }
  v = v.replace(UNSEEN, '').trim();
  if (v.length > MAX_END_USER_LENGTH) {
    const end = /[\ud800-\udbff]/.test(v[MAX_END_USER_LENGTH - 1]!) ? MAX_END_USER_LENGTH - 1 : MAX_END_USER_LENGTH;
    v = v.slice(0, end).trimEnd();
  }
  return v === '' ? null : v;
}

type Headers = Readonly<Record<string, string | string[] | undefined>>;

/**
 * The reader for a list of places, built once: per request it reads one header per header source,
 * and a body field only when a body source is listed and the body has it. Only strings and finite
 * numbers count (an id sent as a number is the same person).
 */
export function endUserReader(
  sources: readonly EndUserSource[],
): (headers: Headers, json: Record<string, unknown> | undefined) => string | null {
  if (sources.length === 0) return () => null;
  return (headers, json) => {
    for (const s of sources) {
      let raw: unknown;
      if ('header' in s) {
        const h = headers[s.header];
        raw = Array.isArray(h) ? h[0] : h;
      } else {
        if (json === undefined) continue;
        raw = json;
        for (const field of s.body) {
          if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
            raw = undefined;
            break;
          }
          raw = (raw as Record<string, unknown>)[field];
        }
      }
      let text: string;
      if (typeof raw === 'string') text = raw;
      else if (typeof raw === 'number' && Number.isFinite(raw)) text = String(raw);
      else continue;
      const user = cleanEndUser(text, 'header' in s);
      if (user !== null) return user;
    }
    return null;
  };
}
