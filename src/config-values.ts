// The value parsers of the settings table (config.ts): each reads one setting's text and returns its
// value or throws a ConfigError that names the setting and says what it accepts. Apart from the
// table so that config.ts stays the table and its reading.
import { KEY_CHARACTERS_REASON, isPrintableAscii } from './keys/key-index.js';
import { canonicalZone } from './usage/calendar.js';
import type { MediaRule, ParamRule } from './keys/key-policy.js';
import { parseParamList } from './policy/params.js';
import { parseEndUserSources, type EndUserSource } from './usage/end-user.js';
import { parsePrices, type PriceList } from './usage/prices.js';

export class ConfigError extends Error {
  constructor(
    readonly setting: string,
    problem: string,
  ) {
    super(`${setting} ${problem}`);
    this.name = 'ConfigError';
  }
}

const MIN_KEY_LENGTH = 16;
const LOG_LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);
const BYTE_UNITS: Record<string, number> = { '': 1, b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

const MIN_ADMIN_KEY_LENGTH = 32;

/** Digits only (surrounding spaces allowed) as a number; NaN for anything else (signs, decimals, 1e3). */
export function wholeNumber(text: string): number {
  return /^\d+$/.test(text.trim()) ? Number(text) : NaN;
}

export function apiKeyList(text: string, env: string): string[] {
  const keys = text
    .split(',')
    .map((k) => k.trim())
    .filter((k) => k !== '');
  const seen = new Map<string, number>();
  keys.forEach((key, i) => {
    // Never echo a key: name it by its position only.
    if (key.length < MIN_KEY_LENGTH) {
      throw new ConfigError(env, `key ${i + 1} is ${key.length} characters long; each key needs at least ${MIN_KEY_LENGTH}`);
    }
    if (/\s/.test(key)) throw new ConfigError(env, `key ${i + 1} contains whitespace`);
    if (!isPrintableAscii(key))
      throw new ConfigError(env, `key ${i + 1} contains a character outside printable ASCII; ${KEY_CHARACTERS_REASON}`);
    const before = seen.get(key);
    if (before !== undefined) throw new ConfigError(env, `key ${i + 1} repeats key ${before}`);
    seen.set(key, i + 1);
  });
  return keys;
}

export function adminKey(text: string, env: string): string {
  const value = text.trim();
  if (value === '') return '';
  if (value.length < MIN_ADMIN_KEY_LENGTH)
    throw new ConfigError(
      env,
      `is ${value.length} characters long; it needs at least ${MIN_ADMIN_KEY_LENGTH} (or leave it empty to turn the admin API off)`,
    );
  if (/\s/.test(value)) throw new ConfigError(env, 'must not contain whitespace');
  if (!isPrintableAscii(value)) throw new ConfigError(env, `contains a character outside printable ASCII; ${KEY_CHARACTERS_REASON}`);
  return value;
}

export function filePath(text: string, env: string): string {
  const value = text.trim();
  if (value === '' || value.endsWith('/')) throw new ConfigError(env, `must be a file path such as ./data/gateway.db, got "${text}"`);
  return value;
}

function httpUrl(text: string, env: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new ConfigError(env, `must be an http(s) URL such as http://127.0.0.1:5857, got "${text}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(env, `must be an http(s) URL, got protocol "${url.protocol}"`);
  }
  if (url.username || url.password) throw new ConfigError(env, 'must not contain credentials; use LLM_UPSTREAM_API_KEY');
  if (url.search || url.hash) throw new ConfigError(env, 'must not contain a query or fragment');
  // Keep an optional path prefix (llama-server --api-prefix), without its trailing slash.
  return url.origin + url.pathname.replace(/\/+$/, '');
}

/** One llama-server base URL, or several separated by commas (each checked as httpUrl; no duplicates). */
export function httpUrlList(text: string, env: string): readonly string[] {
  const urls = text
    .split(',')
    .map((part) => part.trim())
    .filter((part) => part !== '')
    .map((part) => httpUrl(part, env));
  if (urls.length === 0) throw new ConfigError(env, 'must name at least one llama-server URL such as http://127.0.0.1:5857');
  const seen = new Set<string>();
  for (const url of urls) {
    if (seen.has(url)) throw new ConfigError(env, `names ${url} twice`);
    seen.add(url);
  }
  return urls;
}

export function optionalSecret(text: string, env: string): string {
  const value = text.trim();
  if (/\s/.test(value)) throw new ConfigError(env, 'must not contain whitespace');
  // Sent to llama-server in a header: undici refuses other characters on every request.
  if (!isPrintableAscii(value))
    throw new ConfigError(env, 'contains a character outside printable ASCII; it is sent in an HTTP header, which cannot carry it');
  return value;
}

export function port(text: string, env: string): number {
  const n = wholeNumber(text);
  if (!Number.isInteger(n) || n < 1 || n > 65535) {
    throw new ConfigError(env, `must be a port number from 1 to 65535, got "${text}"`);
  }
  return n;
}

export function host(text: string, env: string): string {
  const value = text.trim();
  if (value === '' || /[\s/]/.test(value))
    throw new ConfigError(env, `must be a listen address such as 127.0.0.1 or 0.0.0.0, got "${text}"`);
  return value;
}

export type CorsOrigins = '*' | readonly string[] | null;

export function corsOrigins(text: string, env: string): CorsOrigins {
  const value = text.trim();
  if (value === '') return null;
  if (value === '*') return '*';
  return value
    .split(',')
    .map((o) => o.trim())
    .filter((o) => o !== '')
    .map((origin) => {
      let parsed: URL | undefined;
      try {
        parsed = new URL(origin);
      } catch {
        parsed = undefined;
      }
      if (parsed === undefined || parsed.origin !== origin) {
        throw new ConfigError(
          env,
          `must be "*" or a comma list of exact origins like https://chat.example.com (scheme and host, no path or trailing slash), got "${origin}"`,
        );
      }
      return origin;
    });
}

export function byteSize(text: string, env: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*$/i.exec(text);
  const n = m ? Math.floor(Number(m[1]) * BYTE_UNITS[(m[2] ?? '').toLowerCase()]!) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new ConfigError(env, `must be a size such as 50mb, 512kb or 1048576 (bytes), got "${text}"`);
  }
  return n;
}

export function millis(text: string, env: string): number {
  const n = wholeNumber(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(env, `must be a whole number of milliseconds (> 0), got "${text}"`);
  return n;
}

export function onOff(text: string, env: string): boolean {
  const value = text.trim().toLowerCase();
  if (['on', 'true', '1', 'yes'].includes(value)) return true;
  if (['off', 'false', '0', 'no'].includes(value)) return false;
  throw new ConfigError(env, `must be on or off (true/false), got "${text}"`);
}

export function optionalPath(text: string, env: string): string {
  const value = text.trim();
  if (value.endsWith('/')) throw new ConfigError(env, `must be a file path such as ./data/audit.jsonl (or empty for off), got "${text}"`);
  return value;
}

/** The upstreams file (src/upstreams/upstreams-file.ts), or empty for none: LLM_UPSTREAM alone. */
export function upstreamsFilePath(text: string, env: string): string {
  const value = text.trim();
  if (value.endsWith('/')) throw new ConfigError(env, `must be a file path such as ./upstreams.json (or empty for none), got "${text}"`);
  return value;
}

export function days(text: string, env: string): number {
  const n = wholeNumber(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(env, `must be a whole number of days (≥ 1), got "${text}"`);
  return n;
}

export function optionalCount(text: string, env: string): number | null {
  const value = text.trim().toLowerCase();
  if (value === '' || value === 'auto' || value === 'none') return null;
  const n = wholeNumber(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(env, `must be a whole number ≥ 1 (or empty), got "${text}"`);
  return n;
}

export function count(text: string, env: string): number {
  const n = wholeNumber(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(env, `must be a whole number ≥ 1, got "${text}"`);
  return n;
}

/** Where a request's end user is read (usage/end-user.ts). */
export function endUserSources(text: string, env: string): readonly EndUserSource[] {
  try {
    return parseEndUserSources(text);
  } catch (err) {
    throw new ConfigError(env, (err as Error).message);
  }
}

/** Prices per model (usage/prices.ts); empty = none. */
export function prices(text: string, env: string): PriceList {
  try {
    return parsePrices(text);
  } catch (err) {
    throw new ConfigError(env, (err as Error).message);
  }
}

/** A currency label for reports (USD, EUR, credits…): letters only, nothing is converted. */
export function currency(text: string, env: string): string {
  const value = text.trim();
  if (!/^[A-Za-z]{1,16}$/.test(value))
    throw new ConfigError(env, `must be a currency label such as USD or EUR (letters only), got "${text}"`);
  return value;
}

/** A key's share of the slots: auto (all but one), all, or a number (see fair-queue.ts). */
export function keySlots(text: string, env: string): 'auto' | 'all' | number {
  const value = text.trim().toLowerCase();
  if (value === 'auto' || value === 'all') return value;
  const n = wholeNumber(value);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new ConfigError(env, `must be auto (all slots but one), all, or a whole number ≥ 1, got "${text}"`);
  return n;
}

/**
 * An optional URL that is never echoed (it may carry a password or a token): null when empty.
 * `kind` names the schemes it takes (e.g. "an http(s)"); `usage` is the whole message for text that
 * is no URL at all.
 */
export function quietUrl(text: string, env: string, protocols: readonly string[], kind: string, usage: string): URL | null {
  const value = text.trim();
  if (value === '') return null;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(env, usage);
  }
  if (!protocols.includes(url.protocol)) throw new ConfigError(env, `must be ${kind} URL, got protocol "${url.protocol}"`);
  return url;
}

/** The alerts webhook (alerts/webhook.ts), or empty for none. A query is kept (some receivers take a token there). */
export function webhookUrl(text: string, env: string): string {
  // Not echoed: a webhook URL often carries a token.
  const usage = 'must be an http(s) URL such as https://hooks.example.com/llm-gateway (or empty for off)';
  const url = quietUrl(text, env, ['http:', 'https:'], 'an http(s)', usage);
  if (url === null) return '';
  if (url.username || url.password) throw new ConfigError(env, 'must not contain credentials: receivers check the signature instead');
  if (url.hash) throw new ConfigError(env, 'must not contain a fragment');
  return url.href;
}

const MIN_WEBHOOK_SECRET_LENGTH = 32;

/** The webhook's signing secret: empty, or ≥ 32 printable characters. Never echoed. */
export function webhookSecret(text: string, env: string): string {
  const value = text.trim();
  if (value === '') return '';
  if (value.length < MIN_WEBHOOK_SECRET_LENGTH)
    throw new ConfigError(
      env,
      `is ${value.length} characters long; it needs at least ${MIN_WEBHOOK_SECRET_LENGTH} (e.g. openssl rand -hex 32)`,
    );
  if (/\s/.test(value) || !isPrintableAscii(value)) throw new ConfigError(env, 'must be printable ASCII without whitespace');
  return value;
}

/** Overrides of the request policy's parameter table (policy/params.ts): `id_slot=allow,n_probs=remove`. */
export function paramPolicy(text: string, env: string): Readonly<Record<string, ParamRule>> {
  try {
    return parseParamList(text);
  } catch (err) {
    throw new ConfigError(env, `must be a comma list of NAME=allow|remove|refuse: ${(err as Error).message}`);
  }
}

export function mediaRule(text: string, env: string): MediaRule {
  const value = text.trim().toLowerCase();
  if (value !== 'refuse' && value !== 'fetch' && value !== 'allow')
    throw new ConfigError(env, `must be refuse, fetch or allow, got "${text}"`);
  return value;
}

export function optionalByteSize(text: string, env: string): number | null {
  const value = text.trim().toLowerCase();
  return value === '' || value === 'none' ? null : byteSize(text, env);
}

/** The audit upload's S3 endpoint (usage/audit-upload.ts), or empty for off. */
export function s3Endpoint(text: string, env: string): string {
  const value = text.trim();
  if (value === '') return '';
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    // Not echoed: a value that fails to parse may hold pasted credentials.
    throw new ConfigError(env, 'must be an http(s) URL such as https://<account>.r2.cloudflarestorage.com');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new ConfigError(env, `must be an http(s) URL, got protocol "${url.protocol}"`);
  if (url.username || url.password)
    throw new ConfigError(env, 'must not contain credentials: use GATEWAY_AUDIT_S3_ACCESS_KEY_ID and _SECRET_ACCESS_KEY');
  if (url.search || url.hash) throw new ConfigError(env, 'must not contain a query or fragment');
  return url.origin + url.pathname.replace(/\/+$/, '');
}

/** An S3 bucket name (3–63 lower-case letters, digits, dots, hyphens), or empty. */
export function s3Bucket(text: string, env: string): string {
  const value = text.trim();
  if (value !== '' && !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(value))
    throw new ConfigError(env, `must be a bucket name (3-63 lower-case letters, digits, dots, hyphens), got "${value}"`);
  return value;
}

/** Where in the bucket the files go: a folder ending in "/" (added when missing), or empty for the top. */
export function s3Prefix(text: string, env: string): string {
  const value = text.trim();
  if (!/^[A-Za-z0-9._\-/]*$/.test(value) || value.startsWith('/') || value.includes('//'))
    throw new ConfigError(env, `must be a folder such as llm-gateway/ (letters, digits, . _ - /; no leading /), got "${value}"`);
  return value === '' || value.endsWith('/') ? value : `${value}/`;
}

export function s3Region(text: string, env: string): string {
  const value = text.trim();
  if (!/^[a-z0-9-]{1,32}$/.test(value)) throw new ConfigError(env, `must be a region such as auto (R2) or eu-west-1, got "${value}"`);
  return value;
}

/** An IANA time zone Intl knows (Europe/Paris, America/New_York, UTC), as its canonical name. */
export function timeZone(text: string, env: string): string {
  try {
    return canonicalZone(text.trim());
  } catch {
    throw new ConfigError(env, `must be an IANA time zone such as UTC, Europe/Paris or America/New_York, got "${text}"`);
  }
}

/** Percentages of a budget at which to warn, e.g. 80,100 (ascending, duplicates dropped). */
export function percentList(text: string, env: string): readonly number[] {
  const parts = text.split(',').map((p) => p.trim().replace(/%$/, ''));
  const values = parts.map((p) => wholeNumber(p));
  if (values.some((n) => !Number.isSafeInteger(n) || n < 1 || n > 1000))
    throw new ConfigError(env, `must be a comma list of percentages from 1 to 1000 such as 80,100, got "${text}"`);
  return [...new Set(values)].sort((a, b) => a - b);
}

export function logLevel(text: string, env: string): string {
  const value = text.trim().toLowerCase();
  if (!LOG_LEVELS.has(value)) throw new ConfigError(env, `must be one of ${[...LOG_LEVELS].join(', ')}, got "${text}"`);
  return value;
}

/** A folder the gateway creates on first use. */
export function folderPath(text: string, env: string): string {
  const value = text.trim().replace(/\/+$/, '');
  if (value === '') throw new ConfigError(env, `must be a folder such as ./data/usage-spool, got "${text}"`);
  return value;
}
