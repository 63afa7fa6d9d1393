// Token budgets in Redis when Redis fails (issue 17): GATEWAY_REDIS_DOWN=local decides with the
// process-local budgets (seeded from the usage table, so what was spent still counts), refuse
// answers 503 shared_state_unavailable; and a Redis restarted empty gets the holds of requests still
// running back at their gateway's next renewal.
import t from 'tap';
import { Redis } from 'ioredis';
import type { BudgetKey } from '../../src/admission/budgets.js';
import { SharedBudgets } from '../../src/cluster/shared-budgets.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { Calendar } from '../../src/usage/calendar.js';
import { KEY_A, bearer, chatBody, request, sleep, startGateway, tempStore, until, type Teardown } from '../helpers.js';
import { redisPrefix, startRedis, type OwnRedis } from './harness.js';

const USED = 39; // the fake llama-server's non-streamed chat answer: 31 + 8 tokens

async function budgetGateway(t: Teardown, redis: OwnRedis, whenDown: 'local' | 'refuse', day: number) {
  const store = tempStore(t);
  const { key } = store.create({ name: 'alice', budgets: { day } });
  const registry = new KeyRegistry([KEY_A], store);
  const gw = await startGateway(
    t,
    { redisUrl: redis.url, redisPrefix: redisPrefix(), redisDown: whenDown },
    {},
    { registry, usageFlushMs: 20 },
  );
  const chat = () =>
    request(gw.port, { path: '/v1/chat/completions', headers: { ...bearer(key), 'content-type': 'application/json' }, body: chatBody() });
  return { gw, chat };
}

t.test('Redis down, local: decided with the local budgets, which start from the usage table', async (t) => {
  const redis = await startRedis(t);
  const { gw, chat } = await budgetGateway(t, redis, 'local', 3 * USED);
  await until('Redis up', () => gw.app.sharedCounting?.link.up === true);
  const first = await chat();
  t.equal(first.status, 200);
  t.equal(first.headers['x-budget-limit-tokens'], String(3 * USED));
  await redis.stop();
  await until('the gateway sees Redis down', () => gw.app.sharedCounting?.link.up === false);
  const during = [await chat(), await chat()];
  t.same(
    during.map((r) => r.status),
    [200, 200],
    'served on local counts',
  );
  await sleep(100); // the records are written (usageFlushMs 20)
  const spent = await chat();
  t.equal(spent.status, 429, '3 × 39 spent (one counted in Redis, read back from the usage table): refused here too');
  t.ok(gw.app.sharedCounting!.decidedLocally >= 3, `decided locally: ${gw.app.sharedCounting!.decidedLocally}`);
});

t.test('Redis down, refuse: 503 shared_state_unavailable with Retry-After', async (t) => {
  const redis = await startRedis(t);
  const { gw, chat } = await budgetGateway(t, redis, 'refuse', 100 * USED);
  await until('Redis up', () => gw.app.sharedCounting?.link.up === true);
  t.equal((await chat()).status, 200);
  await redis.stop();
  await until('the gateway sees Redis down', () => gw.app.sharedCounting?.link.up === false);
  const r = await chat();
  t.equal(r.status, 503);
  t.equal((JSON.parse(r.text) as { error: { code: string } }).error.code, 'shared_state_unavailable');
  t.equal(r.headers['retry-after'], '5');
  await redis.start();
  await until('Redis back', () => gw.app.sharedCounting?.link.up === true, 15_000);
  t.equal((await chat()).status, 200, 'served again once Redis is back');
});

t.test('Redis restarted empty while a request holds: its hold is back at the next renewal', async (t) => {
  const redis = await startRedis(t);
  const prefix = redisPrefix();
  const calendar = new Calendar('UTC');
  const client = (): Redis => {
    const c = new Redis(redis.url, { maxRetriesPerRequest: 0, retryStrategy: () => 50 });
    c.on('error', () => {});
    t.teardown(() => c.disconnect());
    return c;
  };
  const make = (id: string): SharedBudgets => {
    const b = new SharedBudgets({
      client: client(),
      prefix,
      gatewayId: id,
      leaseMs: 600,
      calendar,
      warnAt: [],
      seed: null,
      alerts: () => ({ emit() {} }),
    });
    b.start();
    t.teardown(() => b.close());
    return b;
  };
  const a = make('gwA');
  const b = make('gwB');
  const k: BudgetKey = { id: 'k', name: 'k', budgets: { day: 1000 } };
  t.equal((await a.admit(k, null, 'r1', 900)).refusal, undefined, 'a generation holding 900 runs on A');
  await redis.stop();
  await redis.start();
  await until(
    'B reaches Redis again',
    async () =>
      await b.admit(k, null, 'probe', 0).then(
        () => true,
        () => false,
      ),
  );
  await until(
    "A's hold counts again",
    async () => (await b.admit(k, null, 'probe', 0)).headers['x-budget-remaining-tokens'] === '100',
    5000,
  );
  t.match((await b.admit(k, null, 'x', 200)).refusal, undefined, '100 left: B still admits (overshoot by one hold)');
  t.match((await b.admit(k, null, 'y', 10)).refusal, { used: 0, held: 1100 }, 'and then refuses');
});
