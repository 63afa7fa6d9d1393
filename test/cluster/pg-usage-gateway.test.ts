// Gateways with GATEWAY_DATABASE_URL write their usage records to PostgreSQL, and lose none while
// it is down: the records wait in GATEWAY_USAGE_SPOOL and are written when it answers again, also
// by the next run of a gateway killed meanwhile. PostgreSQL is "stopped" by a TCP proxy this test
// owns in front of the machine's (the shared service itself is never stopped). Runs dist/.
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import t from 'tap';
import { startFakeLlama } from '../fixtures/fake-llama.js';
import { migratePg, pgPool } from '../../src/storage/pg.js';
import { PgUsageStore } from '../../src/usage/pg-usage-store.js';
import { UsageStore } from '../../src/usage/store.js';
import { AUTH_A, KEY_A, chatBody, freePort, metricValue, tempDir, tempStore, until, usageRecord, type Teardown } from '../helpers.js';
import { pgSchema, startGatewayProcess, type GatewayProcess } from './harness.js';

const ADMIN_KEY = 'sk-admin-0123456789abcdef0123456789';
const CLI = join(fileURLToPath(new URL('../..', import.meta.url)), 'dist', 'cli', 'main.js');
const run = promisify(execFile);

interface PgProxy {
  /** `url` (the test's schema on the machine's PostgreSQL) through this proxy */
  through(url: string): string;
  /** closes the listener and cuts every connection: PostgreSQL is gone for whoever uses the proxy */
  stop(): Promise<void>;
  /** listens again on the same port */
  start(): Promise<void>;
}

async function pgProxy(t: Teardown, target: string): Promise<PgProxy> {
  const to = new URL(target);
  const port = await freePort();
  const sockets = new Set<net.Socket>();
  let server: net.Server | null = null;
  const start = async (): Promise<void> => {
    const s = net.createServer((client) => {
      const upstream = net.connect(Number(to.port || 5432), to.hostname);
      const cut = (): void => {
        client.destroy();
        upstream.destroy();
        sockets.delete(client);
        sockets.delete(upstream);
      };
      for (const so of [client, upstream]) {
        sockets.add(so);
        so.on('error', cut);
        so.on('close', cut);
      }
      client.pipe(upstream).pipe(client);
    });
    s.listen(port, '127.0.0.1');
    await once(s, 'listening');
    server = s;
  };
  const stop = async (): Promise<void> => {
    const s = server;
    server = null;
    if (s === null) return;
    const closed = new Promise((resolve) => s.close(resolve));
    for (const so of sockets) so.destroy();
    sockets.clear();
    await closed;
  };
  await start();
  t.teardown(stop);
  return {
    through(url) {
      const u = new URL(url);
      u.hostname = '127.0.0.1';
      u.port = String(port);
      return u.toString();
    },
    stop,
    start,
  };
}

async function rows(url: string, sql: string): Promise<Record<string, unknown>[]> {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  try {
    return (await c.query(sql)).rows as Record<string, unknown>[];
  } finally {
    await c.end();
  }
}

async function count(url: string): Promise<number> {
  return Number((await rows(url, 'SELECT count(*) AS n FROM usage'))[0]!.n);
}

async function chat(gw: GatewayProcess, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { ...AUTH_A, 'content-type': 'application/json' },
      body: chatBody(),
    });
    if (res.status !== 200) throw new Error(`request answered ${res.status}: ${await res.text()}`);
    await res.arrayBuffer();
  }
}

async function metrics(gw: GatewayProcess): Promise<string> {
  return (await fetch(`${gw.url}/metrics`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).text();
}

function spoolFiles(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).filter((f) => !f.endsWith('.rejected')) : [];
}

t.test('a gateway with GATEWAY_DATABASE_URL writes its usage to PostgreSQL; /admin/usage reads it there', async (t) => {
  const url = await pgSchema(t);
  const fake = await startFakeLlama();
  t.teardown(() => fake.close());
  const dir = tempDir(t);
  const gw = await startGatewayProcess(t, 0, {
    LLM_API_KEYS: KEY_A,
    LLM_UPSTREAM: fake.url,
    GATEWAY_DATABASE_URL: url,
    GATEWAY_DB: join(dir, 'gateway.db'),
    GATEWAY_USAGE_SPOOL: join(dir, 'spool'),
    GATEWAY_ADMIN_KEY: ADMIN_KEY,
  });
  await chat(gw, 5);
  await until('5 rows in PostgreSQL', async () => ((await count(url)) === 5 ? true : undefined), 10_000);
  const [row] = await rows(url, 'SELECT route, status, outcome, prompt_tokens, completion_tokens FROM usage LIMIT 1');
  t.match(row, { route: '/v1/chat/completions', status: 200, outcome: 'ok' });
  const res = await fetch(`${gw.url}/admin/usage?by=key`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
  t.equal(res.status, 200);
  const body = (await res.json()) as { data: { requests: number }[]; total: { requests: number } };
  t.equal(body.total.requests, 5, '/admin/usage on PostgreSQL');
  t.notOk(existsSync(join(dir, 'spool')), 'nothing spooled: the folder was never made');
});

t.test('PostgreSQL stopped mid-run: no usage record lost, none written twice, the spool empty at the end', async (t) => {
  const schemaUrl = await pgSchema(t);
  const proxy = await pgProxy(t, schemaUrl);
  const fake = await startFakeLlama();
  t.teardown(() => fake.close());
  const dir = tempDir(t);
  const spool = join(dir, 'spool');
  const gw = await startGatewayProcess(t, 0, {
    LLM_API_KEYS: KEY_A,
    LLM_UPSTREAM: fake.url,
    GATEWAY_DATABASE_URL: proxy.through(schemaUrl),
    GATEWAY_DB: join(dir, 'gateway.db'),
    GATEWAY_USAGE_SPOOL: spool,
    GATEWAY_ADMIN_KEY: ADMIN_KEY,
  });
  const N = 60;
  await chat(gw, 20);
  await until('the first 20 in PostgreSQL', async () => ((await count(schemaUrl)) === 20 ? true : undefined), 10_000);

  await proxy.stop();
  await chat(gw, 20); // served all the same: usage waits, requests do not
  await until('records spooled', () => (spoolFiles(spool).length > 0 ? true : undefined), 20_000);
  await until(
    'all 20 spooled',
    async () => (metricValue(await metrics(gw), 'llm_gateway_usage_spooled_records') === 20 ? true : undefined),
    20_000,
  );
  t.equal(await count(schemaUrl), 20, 'nothing reached PostgreSQL meanwhile');
  t.match(gw.output(), /usage spool started/, 'said loudly');

  await proxy.start();
  await chat(gw, 20);
  await until('all in PostgreSQL', async () => ((await count(schemaUrl)) === N ? true : undefined), 60_000);
  await until('spool empty', () => (spoolFiles(spool).length === 0 ? true : undefined), 10_000);
  const twice = await rows(schemaUrl, 'SELECT request_id, count(*) FROM usage GROUP BY request_id HAVING count(*) > 1');
  t.same(twice, [], 'no record twice');
  t.equal((await rows(schemaUrl, 'SELECT DISTINCT request_id FROM usage')).length, N, `${N} distinct requests`);
  const text = await metrics(gw);
  t.equal(metricValue(text, 'llm_gateway_usage_spooled_records'), 0);
  // The 20 of the outage, and those made after it while the spool was still waiting for its next try.
  const spooled = metricValue(text, 'llm_gateway_usage_spooled_records_total')!;
  t.ok(spooled >= 20, `${spooled} spooled`);
  t.equal(metricValue(text, 'llm_gateway_usage_replayed_records_total'), spooled, 'every spooled record written back');
  t.match(gw.output(), /usage spool drained/, 'said so');
});

t.test('a gateway killed with records spooled: the next run writes them', async (t) => {
  const schemaUrl = await pgSchema(t);
  const proxy = await pgProxy(t, schemaUrl);
  const fake = await startFakeLlama();
  t.teardown(() => fake.close());
  const dir = tempDir(t);
  const spool = join(dir, 'spool');
  const env = {
    LLM_API_KEYS: KEY_A,
    LLM_UPSTREAM: fake.url,
    GATEWAY_DATABASE_URL: proxy.through(schemaUrl),
    GATEWAY_DB: join(dir, 'gateway.db'),
    GATEWAY_USAGE_SPOOL: spool,
    GATEWAY_ADMIN_KEY: ADMIN_KEY,
  };
  const first = await startGatewayProcess(t, 0, env);
  await proxy.stop();
  await chat(first, 12);
  await until(
    'all 12 spooled',
    async () => (metricValue(await metrics(first), 'llm_gateway_usage_spooled_records') === 12 ? true : undefined),
    20_000,
  );
  first.child.kill('SIGKILL');
  await first.exit;
  t.ok(spoolFiles(spool).length > 0, 'left on disk');
  t.equal(await count(schemaUrl), 0);

  await proxy.start();
  const second = await startGatewayProcess(t, 1, env);
  await until('replayed by the next run', async () => ((await count(schemaUrl)) === 12 ? true : undefined), 20_000);
  await until('spool empty', () => (spoolFiles(spool).length === 0 ? true : undefined), 10_000);
  t.match(second.output(), /spooled by a previous run/);
  t.equal((await rows(schemaUrl, 'SELECT DISTINCT request_id FROM usage')).length, 12);
});

t.test('`llm-gateway usage` on PostgreSQL prints what it prints on SQLite for the same rows', async (t) => {
  const url = await pgSchema(t);
  const pool = pgPool(url, { max: 1 });
  t.teardown(() => pool.end());
  await migratePg(pool);
  const lite = tempStore(t);
  const day = Date.parse('2026-02-10T23:59:59.000Z');
  const records = Array.from({ length: 30 }, (_, i) => ({
    ...usageRecord(i),
    ts: day + i * 3_600_000,
    keyId: `k${i % 3}`,
    keyName: ['alice', 'Bob', 'bob'][i % 3]!,
    model: i % 4 === 0 ? null : `m${i % 2}`,
    endUser: i % 5 === 0 ? null : `user-${i % 4}`,
    promptTokens: 10 * i,
    cachedTokens: i % 2 === 0 ? null : i,
    completionTokens: i % 7 === 0 ? null : 3 * i,
    estimated: i % 6 === 0,
    outcome: i % 8 === 0 ? ('upstream_error' as const) : ('ok' as const),
    cost: i % 3 === 0 ? null : i / 100,
  }));
  new UsageStore(lite.db).insert(records);
  await new PgUsageStore(pool).insert(records);
  const cwd = tempDir(t); // no .env there
  const cli = async (env: Record<string, string>, args: string[]): Promise<string> =>
    (await run(process.execPath, [CLI, 'usage', ...args], { cwd, env: { PATH: process.env.PATH ?? '', ...env } })).stdout;
  for (const args of [
    [],
    ['--by', 'key'],
    ['--by', 'model', '--csv'],
    ['--by', 'user', '--json'],
    ['--key', 'Bob', '--since', '2026-02-11'],
  ]) {
    const fromPg = await cli({ GATEWAY_DATABASE_URL: url }, args);
    t.equal(fromPg, await cli({ GATEWAY_DB: lite.path }, args), `usage ${args.join(' ')}`);
    t.ok(fromPg.length > 40, 'not empty');
  }
});
