// Every setting the gateway reads, declared once. The Config type is derived from this table, the
// server and (later) the CLI share it, and a bad value stops the process at boot with one line that
// names the setting (see server.ts).
import { readFileSync } from 'node:fs';
import { parseEnv } from 'node:util';
import {
  adminKey,
  apiKeyList,
  byteSize,
  corsOrigins,
  count,
  currency,
  days,
  endUserSources,
  filePath,
  folderPath,
  host,
  httpUrlList,
  keySlots,
  logLevel,
  mediaRule,
  millis,
  onOff,
  optionalByteSize,
  optionalCount,
  optionalPath,
  optionalSecret,
  paramPolicy,
  percentList,
  port,
  prices,
  s3Bucket,
  s3Endpoint,
  s3Prefix,
  s3Region,
  timeZone,
  upstreamsFilePath,
  webhookSecret,
  webhookUrl,
  ConfigError,
} from './config-values.js';
import { postgresUrl, redisDownRule, redisPrefix, redisUrl } from './cluster/settings.js';
import { DEFAULT_END_USER } from './usage/end-user.js';

export { ConfigError, wholeNumber, type CorsOrigins } from './config-values.js';

type Env = Readonly<Record<string, string | undefined>>;

interface Setting<T> {
  readonly env: string;
  readonly fallback: string;
  readonly parse: (text: string, env: string) => T;
}

function setting<T>(env: string, fallback: string, parse: (text: string, env: string) => T): Setting<T> {
  return { env, fallback, parse };
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
  // Several gateways sharing counters, slots, keys and usage (issue 17; README "Running several gateways").
  redisUrl: setting('GATEWAY_REDIS_URL', '', redisUrl),
  redisPrefix: setting('GATEWAY_REDIS_PREFIX', 'llmgw:', redisPrefix),
  redisDown: setting('GATEWAY_REDIS_DOWN', 'local', redisDownRule),
  slotLeaseMs: setting('GATEWAY_SLOT_LEASE_MS', '5000', millis),
  databaseUrl: setting('GATEWAY_DATABASE_URL', '', postgresUrl),
  usageSpool: setting('GATEWAY_USAGE_SPOOL', './data/usage-spool', folderPath),
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
