// Process entry: read settings (.env, then the real environment wins), print the banner, build the
// app, listen, tell pm2 we are ready, and close gracefully on SIGINT/SIGTERM.
import type { FastifyServerOptions } from 'fastify';
import type pg from 'pg';
import { buildApp } from './app.js';
import { ConfigError, NO_KEYS_MESSAGE, loadConfig, type Config } from './config.js';
import { KeyRegistry } from './keys/key-registry.js';
import { upstreamSpecs } from './upstreams/upstreams-file.js';
import { BatchedLog } from './storage/batched-log.js';
import { KeyStore, KeyStoreError } from './keys/key-store.js';
import type { KeyRepository } from './keys/key-repository.js';
import { PgKeyStore } from './keys/pg-key-store.js';
import { PostgresUnusable, migratePg, pgPool } from './storage/pg.js';
import { serializeRequest } from './plugins/request-log.js';

const ENV_FILE = '.env';
const IDLE_SWEEP_MS = 200;
// Time for the last error events and 503s to be written before connections are cut.
const CUT_FLUSH_MS = 100;

function fail(message: string): never {
  process.stderr.write(`❌ LLM Gateway cannot start: ${message}\n`);
  process.exit(1);
}

function readSettings(): Config {
  try {
    // Node's own .env reader; values already in the environment are kept.
    process.loadEnvFile(ENV_FILE);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') fail(`could not read ${ENV_FILE}: ${(err as Error).message}`);
  }
  try {
    const config = loadConfig(process.env);
    upstreamSpecs(config); // GATEWAY_UPSTREAMS_FILE checked now: one clear line before anything starts
    return config;
  } catch (err) {
    if (err instanceof ConfigError) fail(err.message);
    throw err;
  }
}

function loggerOptions(config: Config): FastifyServerOptions['logger'] {
  return {
    level: config.logLevel,
    // Keys never reach a log line, even if someone logs a request's headers.
    redact: {
      paths: ['req.headers.authorization', 'req.headers["x-api-key"]', 'req.headers.cookie', 'req.headers["x-my-llm-key"]'],
      censor: '[redacted]',
    },
    // …and no query string either (?api_key=sk-…): a logged request shows its path only.
    serializers: { req: serializeRequest },
    // JSON for machines, written in batches; pretty only when a person watches a terminal.
    ...(process.stdout.isTTY
      ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname' } } }
      : { stream: batchedStdout() }),
  };
}

function batchedStdout(): BatchedLog {
  const log = new BatchedLog(process.stdout);
  process.once('exit', () => log.flush()); // process.exit() and crashes: the last lines too
  return log;
}

function displayHost(host: string): string {
  return host === '127.0.0.1' || host === '0.0.0.0' || host === '::' || host === '::1' ? 'localhost' : host;
}

/** The gateway's one connection to its database, tuned for it (storage/db.ts); closed after the app. */
function openKeyStore(config: Config): KeyStore {
  try {
    return KeyStore.open(config.db, 'gateway');
  } catch (err) {
    if (err instanceof KeyStoreError) fail(err.message);
    throw err;
  }
}

/**
 * With GATEWAY_DATABASE_URL: the pool for keys and usage, migrated (one clear line if it cannot be
 * reached or used, never the URL); ended after app.close(). Otherwise none: the SQLite file.
 */
async function openPostgres(config: Config): Promise<pg.Pool | undefined> {
  if (config.databaseUrl === '') return undefined;
  const pool = pgPool(config.databaseUrl);
  try {
    await migratePg(pool);
  } catch (err) {
    await pool.end().catch(() => {});
    if (err instanceof PostgresUnusable) fail(err.message);
    throw err;
  }
  return pool;
}

/**
 * Started as one of several PM2 cluster workers (`pm2 start dist/server.js -i 4`, around
 * pm2-config.json's check) without GATEWAY_REDIS_URL: each would count limits alone. Said loudly.
 */
function warnUnsharedCluster(config: Config): void {
  const instances = Number(process.env.instances ?? 1);
  if (process.env.exec_mode !== 'cluster_mode' || !(instances > 1) || config.redisUrl !== '') return;
  process.stderr.write(
    `⚠️  LLM Gateway: one of ${instances} PM2 cluster instances without GATEWAY_REDIS_URL: every limit, budget and llama-server slot is counted ${instances} times over (README, Running several gateways)\n`,
  );
}

async function main(): Promise<void> {
  const config = readSettings();
  warnUnsharedCluster(config);
  const pool = await openPostgres(config);
  // On PostgreSQL the SQLite file holds nothing: keys and usage are both there.
  const store: KeyRepository = pool === undefined ? openKeyStore(config) : new PgKeyStore(pool);
  const registry = new KeyRegistry(config.apiKeys, store);
  if (pool !== undefined) {
    // Loaded before the app listens: no request is judged on a partial list.
    try {
      await registry.load();
    } catch (err) {
      if (err instanceof KeyStoreError) fail(err.message);
      throw err;
    }
  }
  if (registry.size === 0) fail(NO_KEYS_MESSAGE);
  const usable = registry.usable(); // disabled and expired keys are held (for their 401) but not counted
  console.log('✅ LLM Gateway starting with config:');
  console.log(`  - Port: ${config.port}`);
  const upstreams = upstreamSpecs(config).map((spec) => spec.url);
  console.log(
    `  - Upstream${upstreams.length === 1 ? '' : 's'}: ${upstreams.join(', ')}${config.upstreamsFile === '' ? '' : ` (${config.upstreamsFile})`}`,
  );
  console.log(`  - Valid API keys: ${usable}`);
  if (pool !== undefined) console.log(`  - Keys and usage: ${store.path} (GATEWAY_DATABASE_URL)`);

  const app = await buildApp(config, { logger: loggerOptions(config), registry, ...(pool === undefined ? {} : { pg: pool }) });

  try {
    await app.listen({ port: config.port, host: config.host });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EADDRINUSE') fail(`GATEWAY_PORT ${config.port} is already in use on ${config.host}`);
    if (code === 'EADDRNOTAVAIL' || code === 'ENOTFOUND') fail(`GATEWAY_HOST ${config.host} is not an address of this machine`);
    throw err;
  }
  console.log(`🚀 LLM API Gateway listening on http://${displayHost(config.host)}:${config.port}`);
  process.send?.('ready'); // pm2 wait_ready

  // Each llama-server's state is logged by the upstream set as it learns it (and at every change).

  let stopping = false;
  const abortInFlight = (): void => {
    // Streams get a final error event and non-streamed requests a 503; then every connection
    // that is still open is closed.
    app.upstreams.destroy().catch(() => {});
    setTimeout(() => app.server.closeAllConnections(), CUT_FLUSH_MS).unref();
  };
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      app.log.warn({ signal }, 'second signal: ending in-flight requests now');
      abortInFlight();
      return;
    }
    stopping = true;
    app.log.info({ signal, graceMs: config.shutdownGraceMs }, 'shutting down: no new connections, letting in-flight requests finish');
    const grace = setTimeout(() => {
      app.log.warn('shutdown grace period over: ending in-flight requests');
      abortInFlight();
    }, config.shutdownGraceMs);
    // A keep-alive connection whose last response just finished would hold server.close() open
    // until its idle timeout; close such connections as soon as they go idle.
    const sweep = setInterval(() => app.server.closeIdleConnections(), IDLE_SWEEP_MS);
    app.close().then(
      async () => {
        clearTimeout(grace);
        clearInterval(sweep);
        if (pool === undefined)
          await store.close(); // after app.close(): its onClose wrote the last records and checkpoint
        else {
          await registry.stopped(); // begun in onClose: the feed closed, the last last-used times written
          await pool.end().catch(() => {});
        }
        app.log.info('stopped');
        process.exit(0);
      },
      (err: unknown) => {
        app.log.error({ err }, 'error while closing');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`❌ LLM Gateway failed: ${(err as Error).message}\n`);
  process.exit(1);
});
