// The services several gateways share, as the menu and `doctor` ask them: the Redis of
// GATEWAY_REDIS_URL (PING, its latency, the key prefix in use) and the PostgreSQL of
// GATEWAY_DATABASE_URL (SELECT 1, its latency, the schema version). Each probe opens its own short
// connection with a deadline and closes it; nothing is written. Their URLs may hold a password:
// only host:port (and PostgreSQL's database name) is ever shown, and error texts are our own.
import { performance } from 'node:perf_hooks';
import { Redis } from 'ioredis';
import type { Config } from '../../config.js';
import { PG_MIGRATIONS, describePgError, pgPool } from '../../storage/pg.js';

export interface ServiceState {
  readonly service: 'Redis' | 'PostgreSQL';
  /** The setting that names it. */
  readonly setting: 'GATEWAY_REDIS_URL' | 'GATEWAY_DATABASE_URL';
  /** host:port (PostgreSQL: host:port/database), never the user or password. */
  readonly where: string;
  readonly up: boolean;
  /** The round trip of PING or SELECT 1, once connected. */
  readonly latencyMs?: number;
  /** Up: what it said (version, prefix, schema); down: why, in a few words. */
  readonly detail: string;
  /** 'warn' when up but not as the gateway wants it (a schema the gateway must still migrate). */
  readonly level: 'ok' | 'warn' | 'fail';
}

const DEFAULT_PORTS = { 'redis:': 6379, 'rediss:': 6379, 'postgres:': 5432, 'postgresql:': 5432 } as const;

/** host:port of a service URL (the scheme's default port when none is given); no user, no password. */
function serviceAddress(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return '(not a URL)';
  }
  const port = u.port !== '' ? u.port : String(DEFAULT_PORTS[u.protocol as keyof typeof DEFAULT_PORTS] ?? '');
  // postgres://…?host=/run/postgresql: a Unix socket (node-postgres reads the host from the query)
  const host = u.hostname !== '' ? u.hostname : (u.searchParams.get('host') ?? 'localhost');
  return port === '' ? host : `${host}:${port}`;
}

/** PostgreSQL's host:port/database. */
function pgAddress(url: string): string {
  let db = '';
  try {
    db = decodeURIComponent(new URL(url).pathname.replace(/^\//, ''));
  } catch {
    // serviceAddress says it is not a URL
  }
  return `${serviceAddress(url)}${db === '' ? '' : `/${db}`}`;
}

/** One line about a Redis or socket error: our own words, never the URL. */
function describeRedisError(err: unknown): string {
  const e = err as { code?: string; message?: string; name?: string };
  const message = e.message ?? String(err);
  if (e.code === 'ECONNREFUSED') return 'connection refused';
  if (e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN') return 'host not found';
  if (e.code === 'ETIMEDOUT' || /timed? ?out/i.test(message)) return 'no answer in time';
  if (/NOAUTH|WRONGPASS|invalid password|AUTH/i.test(message)) return 'authentication failed (check the user and password)';
  if (/Connection is closed|ECONNRESET/.test(message)) return 'the connection was closed (TLS or a proxy in the way?)';
  return e.code ?? e.name ?? 'error';
}

function ms(start: number): number {
  return Math.round((performance.now() - start) * 10) / 10;
}

/** Asks the Redis of `url`: PING and its latency, the server's version; the prefix is shown as given. */
async function probeRedis(url: string, prefix: string, timeoutMs: number): Promise<ServiceState> {
  const base = { service: 'Redis', setting: 'GATEWAY_REDIS_URL', where: serviceAddress(url) } as const;
  const client = new Redis(url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null, // one try: a probe reports, it does not wait for Redis to come back
    connectTimeout: timeoutMs,
    commandTimeout: timeoutMs,
    enableReadyCheck: true,
    connectionName: 'llm-gateway-doctor',
  });
  // With no retry, connect() rejects with "Connection is closed"; the socket's own error says why.
  let socketError: unknown;
  client.on('error', (err: unknown) => (socketError ??= err));
  try {
    await client.connect();
    const start = performance.now();
    await client.ping();
    const latencyMs = ms(start);
    const info = await client.info('server').catch(() => '');
    const version = /redis_version:([^\r\n]+)/.exec(info)?.[1];
    const what = `PING in ${latencyMs} ms`;
    return {
      ...base,
      up: true,
      latencyMs,
      level: 'ok',
      detail: `${what}${version === undefined ? '' : ` (Redis ${version})`}, key prefix ${prefix}`,
    };
  } catch (err) {
    return { ...base, up: false, level: 'fail', detail: describeRedisError(socketError ?? err) };
  } finally {
    client.disconnect();
  }
}

/** Asks the PostgreSQL of `url`: SELECT 1 and its latency, and the gateway's schema version there. */
async function probePostgres(url: string, timeoutMs: number): Promise<ServiceState> {
  const base = { service: 'PostgreSQL', setting: 'GATEWAY_DATABASE_URL', where: pgAddress(url) } as const;
  const pool = pgPool(url, { max: 1, connectTimeoutMs: timeoutMs, statementTimeoutMs: timeoutMs, application: 'llm-gateway doctor' });
  try {
    const client = await pool.connect();
    try {
      const start = performance.now();
      await client.query('SELECT 1');
      const latencyMs = ms(start);
      const head = `SELECT 1 in ${latencyMs} ms`;
      const known = PG_MIGRATIONS.length;
      const exists = await client.query<{ found: string | null }>("SELECT to_regclass('schema_version')::text AS found");
      if (exists.rows[0]?.found === null || exists.rows[0] === undefined)
        return { ...base, up: true, latencyMs, level: 'ok', detail: `${head}, no gateway tables yet (the first gateway creates them)` };
      const version = (await client.query<{ version: number }>('SELECT version FROM schema_version')).rows[0]?.version ?? 0;
      if (version === known) return { ...base, up: true, latencyMs, level: 'ok', detail: `${head}, schema version ${version} (current)` };
      if (version < known)
        return {
          ...base,
          up: true,
          latencyMs,
          level: 'warn',
          detail: `${head}, schema version ${version}: a gateway starting migrates it to ${known}`,
        };
      return {
        ...base,
        up: true,
        latencyMs,
        level: 'fail',
        detail: `${head}, schema version ${version} is newer than this gateway knows (${known}): update the gateway`,
      };
    } finally {
      client.release();
    }
  } catch (err) {
    return { ...base, up: false, level: 'fail', detail: describePgError(err) };
  } finally {
    await pool.end().catch(() => {});
  }
}

/** The shared services `config` names, asked at the same time; [] when it names none. */
export function probeSharedServices(config: Config, timeoutMs: number): Promise<ServiceState[]> {
  const probes: Promise<ServiceState>[] = [];
  if (config.redisUrl !== '') probes.push(probeRedis(config.redisUrl, config.redisPrefix, timeoutMs));
  if (config.databaseUrl !== '') probes.push(probePostgres(config.databaseUrl, timeoutMs));
  return Promise.all(probes);
}

/** What to do about a service that cannot be reached, and what the gateways do meanwhile (one line). */
export function serviceFix(s: ServiceState, config: Config): string {
  if (s.service === 'Redis')
    return `start it or fix ${s.setting}; meanwhile each gateway ${config.redisDown === 'refuse' ? 'answers 503 (GATEWAY_REDIS_DOWN=refuse)' : 'counts limits alone (GATEWAY_REDIS_DOWN=local)'}`;
  return `start it or fix ${s.setting}; meanwhile running gateways serve keys from memory and spool usage to ${config.usageSpool}`;
}
