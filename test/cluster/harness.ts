// Several gateway processes (dist/server.js) started by a test, sharing a Redis and/or a
// PostgreSQL: the services on this machine (Redis 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432 with
// trust auth and a `test` database), or ones a test starts itself to stop them (startRedis).
// Each test gets its own Redis key prefix and its own PostgreSQL schema, so test files running at
// once never see each other's counters, keys or usage.
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { freePort, tempDir, within, type Teardown } from '../helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const SERVER = join(ROOT, 'dist', 'server.js');

export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379';
const PG_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/test';

/** A Redis key prefix no other test uses. */
export function redisPrefix(): string {
  return `t${randomBytes(6).toString('hex')}:`;
}

/** `url` with search_path set to `schema` (every table the gateway makes lands there). */
function withSchema(url: string, schema: string): string {
  const u = new URL(url);
  u.searchParams.set('options', `-c search_path=${schema}`);
  return u.toString();
}

/** A PostgreSQL schema of this test's own on the `test` database, dropped at teardown; its URL. */
export async function pgSchema(t: Teardown): Promise<string> {
  const schema = `t_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: PG_URL });
  await admin.connect();
  await admin.query(`CREATE SCHEMA ${schema}`);
  await admin.end();
  t.teardown(async () => {
    const c = new pg.Client({ connectionString: PG_URL });
    await c.connect();
    await c.query(`DROP SCHEMA ${schema} CASCADE`);
    await c.end();
  });
  return withSchema(PG_URL, schema);
}

export interface GatewayProcess {
  readonly index: number;
  readonly port: number;
  readonly url: string;
  readonly child: ChildProcess;
  /** everything the process wrote to stdout and stderr */
  output(): string;
  /** resolves with the exit code (null: killed by a signal) */
  readonly exit: Promise<number | null>;
}

export interface GatewaysOptions {
  /** env for every process (LLM_UPSTREAM, LLM_API_KEYS, GATEWAY_REDIS_URL, …) */
  env: Record<string, string>;
  /** env for one process, by index */
  each?: (index: number) => Record<string, string>;
  /** ms to wait for each process's 'ready' (default 15000) */
  readyMs?: number;
}

/** Starts one gateway process; resolves once it listens (its IPC 'ready', as under PM2). */
export async function startGatewayProcess(
  t: Teardown,
  index: number,
  env: Record<string, string>,
  readyMs = 15_000,
): Promise<GatewayProcess> {
  const port = await freePort();
  const child = spawn(process.execPath, [SERVER], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info', ...env, GATEWAY_PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString('utf8')));
  child.stderr!.on('data', (d: Buffer) => (out += d.toString('utf8')));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exit;
    }
  });
  await within(
    Promise.race([
      once(child, 'message').then(([m]) => (m === 'ready' ? undefined : Promise.reject(new Error(String(m))))),
      exit.then((code) => Promise.reject(new Error(`gateway ${index} exited (${code}) before it was ready:\n${out}`))),
    ]),
    readyMs,
    `gateway ${index} ready`,
  );
  return { index, port, url: `http://127.0.0.1:${port}`, child, output: () => out, exit };
}

/** Starts `n` gateway processes with the same settings (each its own port and, unless given, its own GATEWAY_DB). */
export async function startGateways(t: Teardown, n: number, opts: GatewaysOptions): Promise<GatewayProcess[]> {
  const dir = tempDir(t, 'gw-cluster-');
  return Promise.all(
    Array.from({ length: n }, (_, i) =>
      startGatewayProcess(
        t,
        i,
        { GATEWAY_DB: join(dir, `gateway-${i}.db`), GATEWAY_USAGE_SPOOL: join(dir, `spool-${i}`), ...opts.env, ...(opts.each?.(i) ?? {}) },
        opts.readyMs,
      ),
    ),
  );
}

export interface OwnRedis {
  readonly port: number;
  readonly url: string;
  /** stops the server (SIGTERM, waits for its exit) */
  stop(): Promise<void>;
  /** starts it again on the same port (empty: it keeps nothing on disk) */
  start(): Promise<void>;
}

/** A redis-server of this test's own on a free port (nothing on disk), for tests that stop it; stopped at teardown. */
export async function startRedis(t: Teardown): Promise<OwnRedis> {
  const port = await freePort();
  let child: ChildProcess | null = null;
  const start = async (): Promise<void> => {
    const c = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child = c;
    let out = '';
    c.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    await within(
      (async () => {
        while (!out.includes('Ready to accept connections')) {
          if (c.exitCode !== null) throw new Error(`redis-server exited: ${out}`);
          await new Promise((r) => setTimeout(r, 20));
        }
      })(),
      5000,
      'redis-server ready',
    );
  };
  const stop = async (): Promise<void> => {
    const c = child;
    child = null;
    if (c === null || c.exitCode !== null) return;
    const exited = once(c, 'exit');
    c.kill('SIGTERM');
    await exited;
  };
  await start();
  t.teardown(stop);
  return { port, url: `redis://127.0.0.1:${port}`, stop, start };
}
