// Every setting the gateway reads, declared once. The Config type is derived from this table, the
// server and (later) the CLI share it, and a bad value stops the process at boot with one line that
// names the setting (see server.ts).
import { readFileSync } from 'node:fs';
import { parseEnv } from 'node:util';
import { KEY_CHARACTERS_REASON, isPrintableAscii } from './keys/key-index.js';
import { canonicalZone } from './usage/calendar.js';
import type { MediaRule, ParamRule } from './keys/key-policy.js';
import { parseParamList } from './policy/params.js';
import { DEFAULT_END_USER, parseEndUserSources, type EndUserSource } from './usage/end-user.js';
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

type Env = Readonly<Record<string, string | undefined>>;

interface Setting<T> {
  readonly env: string;
  readonly fallback: string;
  readonly parse: (text: string, env: string) => T;
}

function setting<T>(env: string, fallback: string, parse: (text: string, env: string) => T): Setting<T> {
  return { env, fallback, parse };
}

const MIN_KEY_LENGTH = 16;
const LOG_LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);
const BYTE_UNITS: Record<string, number> = { '': 1, b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

const MIN_ADMIN_KEY_LENGTH = 32;

/** Digits only (surrounding spaces allowed) as a number; NaN for anything else (signs, decimals, 1e3). */
export function wholeNumber(text: string): number {
  return /^\d+$/.test(text.trim()) ? Number(text) : NaN;
}

function apiKeyList(text: string, env: string): string[] {
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

function adminKey(text: string, env: string): string {
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

function filePath(text: string, env: string): string {
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
function httpUrlList(text: string, env: string): readonly string[] {
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

function optionalSecret(text: string, env: string): string {
  const value = text.trim();
  if (/\s/.test(value)) throw new ConfigError(env, 'must not contain whitespace');
  // Sent to llama-server in a header: undici refuses other characters on every request.
  if (!isPrintableAscii(value))
    throw new ConfigError(env, 'contains a character outside printable ASCII; it is sent in an HTTP header, which cannot carry it');
  return value;
}

function port(text: string, env: string): number {
  const n = wholeNumber(text);
  if (!Number.isInteger(n) || n < 1 || n > 65535) {
    throw new ConfigError(env, `must be a port number from 1 to 65535, got "${text}"`);
  }
  return n;
}

function host(text: string, env: string): string {
  const value = text.trim();
  if (value === '' || /[\s/]/.test(value))
    throw new ConfigError(env, `must be a listen address such as 127.0.0.1 or 0.0.0.0, got "${text}"`);
  return value;
}

export type CorsOrigins = '*' | readonly string[] | null;

function corsOrigins(text: string, env: string): CorsOrigins {
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

function byteSize(text: string, env: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*$/i.exec(text);
  const n = m ? Math.floor(Number(m[1]) * BYTE_UNITS[(m[2] ?? '').toLowerCase()]!) : NaN;
  if (!Number.isSafeInteger(n) || n < 1) {
    throw new ConfigError(env, `must be a size such as 50mb, 512kb or 1048576 (bytes), got "${text}"`);
  }
  return n;
}

function millis(text: string, env: string): number {
  const n = wholeNumber(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(env, `must be a whole number of milliseconds (> 0), got "${text}"`);
  return n;
}

function onOff(text: string, env: string): boolean {
  const value = text.trim().toLowerCase();
  if (['on', 'true', '1', 'yes'].includes(value)) return true;
  if (['off', 'false', '0', 'no'].includes(value)) return false;
  throw new ConfigError(env, `must be on or off (true/false), got "${text}"`);
}

function optionalPath(text: string, env: string): string {
  const value = text.trim();
  if (value.endsWith('/')) throw new ConfigError(env, `must be a file path such as ./data/audit.jsonl (or empty for off), got "${text}"`);
  return value;
}

/** The upstreams file (src/upstreams/upstreams-file.ts), or empty for none: LLM_UPSTREAM alone. */
function upstreamsFilePath(text: string, env: string): string {
  const value = text.trim();
  if (value.endsWith('/')) throw new ConfigError(env, `must be a file path such as ./upstreams.json (or empty for none), got "${text}"`);
  return value;
}

function days(text: string, env: string): number {
  const n = wholeNumber(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(env, `must be a whole number of days (≥ 1), got "${text}"`);
  return n;
}

function optionalCount(text: string, env: string): number | null {
  const value = text.trim().toLowerCase();
  if (value === '' || value === 'auto' || value === 'none') return null;
  const n = wholeNumber(value);
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(env, `must be a whole number ≥ 1 (or empty), got "${text}"`);
  return n;
}

function count(text: string, env: string): number {
  const n = wholeNumber(text);
  if (!Number.isSafeInteger(n) || n < 1) throw new ConfigError(env, `must be a whole number ≥ 1, got "${text}"`);
  return n;
}

/** Where a request's end user is read (usage/end-user.ts). */
function endUserSources(text: string, env: string): readonly EndUserSource[] {
  try {
    return parseEndUserSources(text);
  } catch (err) {
    throw new ConfigError(env, (err as Error).message);
  }
}

/** Prices per model (usage/prices.ts); empty = none. */
function prices(text: string, env: string): PriceList {
  try {
    return parsePrices(text);
  } catch (err) {
    throw new ConfigError(env, (err as Error).message);
  }
}

/** A currency label for reports (USD, EUR, credits…): letters only, nothing is converted. */
function currency(text: string, env: string): string {
  const value = text.trim();
  if (!/^[A-Za-z]{1,16}$/.test(value))
    throw new ConfigError(env, `must be a currency label such as USD or EUR (letters only), got "${text}"`);
  return value;
}

/** A key's share of the slots: auto (all but one), all, or a number (see fair-queue.ts). */
function keySlots(text: string, env: string): 'auto' | 'all' | number {
  const value = text.trim().toLowerCase();
  if (value === 'auto' || value === 'all') return value;
  const n = wholeNumber(value);
  if (!Number.isSafeInteger(n) || n < 1)
    throw new ConfigError(env, `must be auto (all slots but one), all, or a whole number ≥ 1, got "${text}"`);
  return n;
}

/** The alerts webhook (alerts/webhook.ts), or empty for none. A query is kept (some receivers take a token there). */
function webhookUrl(text: string, env: string): string {
  const value = text.trim();
  if (value === '') return '';
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    // Not echoed: a webhook URL often carries a token.
    throw new ConfigError(env, 'must be an http(s) URL such as https://hooks.example.com/llm-gateway (or empty for off)');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new ConfigError(env, `must be an http(s) URL, got protocol "${url.protocol}"`);
  if (url.username || url.password) throw new ConfigError(env, 'must not contain credentials: receivers check the signature instead');
  if (url.hash) throw new ConfigError(env, 'must not contain a fragment');
  return url.href;
}

const MIN_WEBHOOK_SECRET_LENGTH = 32;

/** The webhook's signing secret: empty, or ≥ 32 printable characters. Never echoed. */
function webhookSecret(text: string, env: string): string {
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
function paramPolicy(text: string, env: string): Readonly<Record<string, ParamRule>> {
  try {
    return parseParamList(text);
  } catch (err) {
    throw new ConfigError(env, `must be a comma list of NAME=allow|remove|refuse: ${(err as Error).message}`);
  }
}

function mediaRule(text: string, env: string): MediaRule {
  const value = text.trim().toLowerCase();
  if (value !== 'refuse' && value !== 'fetch' && value !== 'allow')
    throw new ConfigError(env, `must be refuse, fetch or allow, got "${text}"`);
  return value;
}

function optionalByteSize(text: string, env: string): number | null {
  const value = text.trim().toLowerCase();
  return value === '' || value === 'none' ? null : byteSize(text, env);
}

/** The audit upload's S3 endpoint (usage/audit-upload.ts), or empty for off. */
function s3Endpoint(text: string, env: string): string {
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
function s3Bucket(text: string, env: string): string {
  const value = text.trim();
  if (value !== '' && !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(value))
    throw new ConfigError(env, `must be a bucket name (3-63 lower-case letters, digits, dots, hyphens), got "${value}"`);
  return value;
}

/** Where in the bucket the files go: a folder ending in "/" (added when missing), or empty for the top. */
function s3Prefix(text: string, env: string): string {
  const value = text.trim();
  if (!/^[A-Za-z0-9._\-/]*$/.test(value) || value.startsWith('/') || value.includes('//'))
    throw new ConfigError(env, `must be a folder such as llm-gateway/ (letters, digits, . _ - /; no leading /), got "${value}"`);
  return value === '' || value.endsWith('/') ? value : `${value}/`;
}

function s3Region(text: string, env: string): string {
  const value = text.trim();
  if (!/^[a-z0-9-]{1,32}$/.test(value)) throw new ConfigError(env, `must be a region such as auto (R2) or eu-west-1, got "${value}"`);
  return value;
}

/** All or none of the audit upload's settings, and only with an audit log to upload. */
function checkAuditS3(config: Config): void {
  const needed = ['auditS3Endpoint', 'auditS3Bucket', 'auditS3AccessKeyId', 'auditS3SecretAccessKey'] as const;
  const missing = needed.filter((k) => config[k] === '');
  if (missing.length === needed.length) return;
  if (missing.length > 0)
    throw new ConfigError(
      SETTINGS[missing[0]!].env,
      `is needed too: the audit upload needs ${needed.map((k) => SETTINGS[k].env).join(', ')} (missing: ${missing.map((k) => SETTINGS[k].env).join(', ')})`,
    );
  if (config.auditLog === '')
    throw new ConfigError(SETTINGS.auditLog.env, 'must be set when GATEWAY_AUDIT_S3_* are: its daily files are what is uploaded');
}

/** An IANA time zone Intl knows (Europe/Paris, America/New_York, UTC), as its canonical name. */
function timeZone(text: string, env: string): string {
  try {
    return canonicalZone(text.trim());
  } catch {
    throw new ConfigError(env, `must be an IANA time zone such as UTC, Europe/Paris or America/New_York, got "${text}"`);
  }
}

/** Percentages of a budget at which to warn, e.g. 80,100 (ascending, duplicates dropped). */
function percentList(text: string, env: string): readonly number[] {
  const parts = text.split(',').map((p) => p.trim().replace(/%$/, ''));
  const values = parts.map((p) => wholeNumber(p));
  if (values.some((n) => !Number.isSafeInteger(n) || n < 1 || n > 1000))
    throw new ConfigError(env, `must be a comma list of percentages from 1 to 1000 such as 80,100, got "${text}"`);
  return [...new Set(values)].sort((a, b) => a - b);
}

function logLevel(text: string, env: string): string {
  const value = text.trim().toLowerCase();
  if (!LOG_LEVELS.has(value)) throw new ConfigError(env, `must be one of ${[...LOG_LEVELS].join(', ')}, got "${text}"`);
  return value;
}

export const SETTINGS = {
  apiKeys: setting('LLM_API_KEYS', '', apiKeyList),
  upstreams: setting('LLM_UPSTREAM', 'http://127.0.0.1:5857', httpUrlList),
  upstreamApiKey: setting('LLM_UPSTREAM_API_KEY', '', optionalSecret),
  upstreamsFile: setting('GATEWAY_UPSTREAMS_FILE', '', upstreamsFilePath),
  port: setting('GATEWAY_PORT', '8787', port),
  host: setting('GATEWAY_HOST', '127.0.0.1', host),
  corsAllowOrigin: setting('CORS_ALLOW_ORIGIN', '', corsOrigins),
  bodyLimit: setting('GATEWAY_BODY_LIMIT', '50mb', byteSize),
  headersTimeoutMs: setting('GATEWAY_HEADERS_TIMEOUT_MS', String(10 * 60_000), millis),
  idleTimeoutMs: setting('GATEWAY_IDLE_TIMEOUT_MS', String(5 * 60_000), millis),
  shutdownGraceMs: setting('GATEWAY_SHUTDOWN_GRACE_MS', '30000', millis),
  logLevel: setting('LOG_LEVEL', 'info', logLevel),
  db: setting('GATEWAY_DB', './data/gateway.db', filePath),
  adminKey: setting('GATEWAY_ADMIN_KEY', '', adminKey),
  usage: setting('GATEWAY_USAGE', 'on', onOff),
  auditLog: setting('GATEWAY_AUDIT_LOG', '', optionalPath),
  auditKeepDays: setting('GATEWAY_AUDIT_KEEP_DAYS', '30', days),
  logBodies: setting('GATEWAY_LOG_BODIES', 'false', onOff),
  endUser: setting('GATEWAY_END_USER', DEFAULT_END_USER, endUserSources),
  prices: setting('GATEWAY_PRICES', '', prices),
  priceCurrency: setting('GATEWAY_PRICE_CURRENCY', 'USD', currency),
  maxInflight: setting('GATEWAY_MAX_INFLIGHT', '', optionalCount),
  affinity: setting('GATEWAY_AFFINITY', 'on', onOff),
  maxQueue: setting('GATEWAY_MAX_QUEUE', '100', count),
  maxQueuePerKey: setting('GATEWAY_MAX_QUEUE_PER_KEY', '20', count),
  queueTimeoutMs: setting('GATEWAY_QUEUE_TIMEOUT_MS', '120000', millis),
  keySlots: setting('GATEWAY_KEY_SLOTS', 'auto', keySlots),
  lightSlots: setting('GATEWAY_LIGHT_SLOTS', '2', count),
  defaultRpm: setting('GATEWAY_DEFAULT_RPM', '', optionalCount),
  defaultTpm: setting('GATEWAY_DEFAULT_TPM', '', optionalCount),
  defaultTpd: setting('GATEWAY_DEFAULT_TPD', '', optionalCount),
  defaultConcurrency: setting('GATEWAY_DEFAULT_CONCURRENCY', '', optionalCount),
  maxTokens: setting('GATEWAY_MAX_TOKENS', '', optionalCount),
  paramPolicy: setting('GATEWAY_PARAM_POLICY', '', paramPolicy),
  remoteMedia: setting('GATEWAY_REMOTE_MEDIA', 'refuse', mediaRule),
  maxPromptBytes: setting('GATEWAY_MAX_PROMPT_BYTES', '', optionalByteSize),
  maxPromptTokens: setting('GATEWAY_MAX_PROMPT_TOKENS', '', optionalCount),
  reserveTokens: setting('GATEWAY_RESERVE_TOKENS', 'auto', optionalCount),
  budgetTz: setting('GATEWAY_BUDGET_TZ', 'UTC', timeZone),
  budgetWarnAt: setting('GATEWAY_BUDGET_WARN_AT', '80,100', percentList),
  trustProxy: setting('GATEWAY_TRUST_PROXY', 'off', onOff),
  authFailLimit: setting('GATEWAY_AUTH_FAIL_LIMIT', '20', count),
  authBlockMs: setting('GATEWAY_AUTH_BLOCK_MS', '300000', millis),
  // Each finished day's audit file, shipped to S3-compatible storage (usage/audit-upload.ts).
  auditS3Endpoint: setting('GATEWAY_AUDIT_S3_ENDPOINT', '', s3Endpoint),
  auditS3Bucket: setting('GATEWAY_AUDIT_S3_BUCKET', '', s3Bucket),
  auditS3Prefix: setting('GATEWAY_AUDIT_S3_PREFIX', 'llm-gateway/', s3Prefix),
  auditS3Region: setting('GATEWAY_AUDIT_S3_REGION', 'auto', s3Region),
  auditS3AccessKeyId: setting('GATEWAY_AUDIT_S3_ACCESS_KEY_ID', '', optionalSecret),
  auditS3SecretAccessKey: setting('GATEWAY_AUDIT_S3_SECRET_ACCESS_KEY', '', optionalSecret),
  // Remote media the gateway fetches itself (GATEWAY_REMOTE_MEDIA=fetch; policy/media-fetch.ts).
  mediaMaxBytes: setting('GATEWAY_MEDIA_MAX_BYTES', '10mb', byteSize),
  mediaMaxCount: setting('GATEWAY_MEDIA_MAX_COUNT', '4', count),
  mediaTimeoutMs: setting('GATEWAY_MEDIA_TIMEOUT_MS', '10000', millis),
  webhookUrl: setting('GATEWAY_WEBHOOK_URL', '', webhookUrl),
  webhookSecret: setting('GATEWAY_WEBHOOK_SECRET', '', webhookSecret),
} as const;

export type Config = { readonly [K in keyof typeof SETTINGS]: ReturnType<(typeof SETTINGS)[K]['parse']> };

/** One setting from `env` (an unset or empty value takes the default); `name` is what errors call it. Throws ConfigError. */
export function readSetting<T>(s: Setting<T>, env: Env, name = s.env): T {
  const raw = env[s.env];
  return s.parse(raw === undefined || raw.trim() === '' ? s.fallback : raw, name);
}

/** Reads every setting from `env` (an unset or empty value takes the default). Throws ConfigError. */
export function loadConfig(env: Env = process.env): Config {
  const out: Record<string, unknown> = {};
  for (const [name, s] of Object.entries(SETTINGS) as [string, Setting<unknown>][]) out[name] = readSetting(s, env);
  const config = out as Config;
  if (config.adminKey !== '' && config.apiKeys.includes(config.adminKey)) {
    throw new ConfigError(SETTINGS.adminKey.env, 'must not be one of the client keys in LLM_API_KEYS');
  }
  if (config.webhookUrl !== '' && config.webhookSecret === '')
    throw new ConfigError(SETTINGS.webhookSecret.env, `is needed when ${SETTINGS.webhookUrl.env} is set: every alert is signed with it`);
  checkAuditS3(config);
  return config;
}

/** Said when neither LLM_API_KEYS nor the key database holds a key. */
export const NO_KEYS_MESSAGE =
  'no API keys: set LLM_API_KEYS in .env (run `npm run setup` to make one), or create a key with `npx llm-gateway keys create --name alice`';

/** Config for tests and embedding: defaults plus what is given, without reading the environment. */
export function configWith(overrides: Partial<Config> & Pick<Config, 'apiKeys'>): Config {
  const defaults = loadConfig({ [SETTINGS.apiKeys.env]: overrides.apiKeys.join(',') });
  return { ...defaults, ...overrides };
}

/**
 * The variables of an env file such as `.env`, parsed as Node.js parses it (process.loadEnvFile,
 * which server.ts uses); {} when there is none. For readers that must not touch process.env.
 */
export function readEnvFile(path: string): Record<string, string> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new Error(`could not read ${path}: ${(err as Error).message}`);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(parseEnv(text))) if (v !== undefined) out[k] = v;
  return out;
}
