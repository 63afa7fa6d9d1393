// The cluster harness itself: several gateway processes start and answer, a test's own Redis
// stops and starts again, a test's PostgreSQL schema is its own.
import pg from 'pg';
import { Redis } from 'ioredis';
import t from 'tap';
import { startFakeLlama } from '../fixtures/fake-llama.js';
import { AUTH_A, KEY_A, until } from '../helpers.js';
import { pgSchema, startGateways, startRedis } from './harness.js';

t.test('two gateway processes on one upstream both answer', async (t) => {
  const fake = await startFakeLlama();
  t.teardown(() => fake.close());
  const gws = await startGateways(t, 2, { env: { LLM_API_KEYS: KEY_A, LLM_UPSTREAM: fake.url } });
  for (const gw of gws) {
    const res = await fetch(`${gw.url}/v1/models`, { headers: AUTH_A });
    t.equal(res.status, 200, `gateway ${gw.index} answers`);
  }
});

t.test("a test's own redis-server stops and starts again", async (t) => {
  const r = await startRedis(t);
  const c = new Redis(r.url, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => 50 });
  c.on('error', () => {});
  await c.connect();
  t.equal(await c.ping(), 'PONG');
  await r.stop();
  await t.rejects(c.ping(), 'stopped: a command fails');
  await r.start();
  // The client may have reconnected before this line runs: ask until it answers (no 'ready' wait).
  await until('the client is connected again', async () => (await c.ping().catch(() => null)) === 'PONG', 10_000, 50);
  t.pass('back');
  c.disconnect();
});

t.test("a test's PostgreSQL schema is its own", async (t) => {
  const url = await pgSchema(t);
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  await c.query('CREATE TABLE keys (id TEXT)');
  t.match((await c.query('SHOW search_path')).rows[0], { search_path: /^t_[0-9a-f]{12}$/ });
  await c.end();
});
