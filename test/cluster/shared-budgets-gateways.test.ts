// Token budgets across gateway processes (issue 17): 4 gateways sharing one Redis and one SQLite
// file enforce a key's hard daily budget as one gateway would (each gateway alone would seed from
// the file once and then count only its own), and a soft budget's warnings go out once in all, not
// once per gateway. Runs dist/server.js: build first (`npx tsc -p tsconfig.json`).
import { join } from 'node:path';
import t from 'tap';
import { Redis } from 'ioredis';
import { KeyStore } from '../../src/keys/key-store.js';
import { Calendar } from '../../src/usage/calendar.js';
import { startFakeLlama } from '../fixtures/fake-llama.js';
import { SECRET, startReceiver } from '../alerts/receiver.js';
import { bearer, chatBody, request, sleep, tempDir, until, type RawResponse } from '../helpers.js';
import { REDIS_URL, redisPrefix, startGateways, type GatewayProcess } from './harness.js';

/** The fake llama-server's recorded non-streamed chat answer: 31 prompt + 8 completion tokens. */
const USED = 39;
const GATEWAYS = 4;
const ADMIN_KEY = 'admin-key-for-shared-budgets-0123456789abcdef';

const errorOf = (r: RawResponse): { type: string; code: string } => (JSON.parse(r.text) as { error: { type: string; code: string } }).error;

t.test('4 gateways on one Redis and one file: a hard daily budget as one gateway; one soft alert', async (t) => {
  const fake = await startFakeLlama({ slots: 8 });
  t.teardown(() => fake.close());
  const receiver = await startReceiver(t);
  const file = join(tempDir(t, 'gw-budgets-'), 'gateway.db');
  const store = KeyStore.open(file);
  t.teardown(() => store.close());
  const hard = store.create({ name: 'hard', budgets: { day: 5 * USED } });
  const soft = store.create({ name: 'soft', budgets: { day: 4 * USED, mode: 'soft' } });
  const prefix = redisPrefix();
  const gws = await startGateways(t, GATEWAYS, {
    env: {
      LLM_UPSTREAM: fake.url,
      GATEWAY_REDIS_URL: REDIS_URL,
      GATEWAY_REDIS_PREFIX: prefix,
      GATEWAY_WEBHOOK_URL: receiver.url,
      GATEWAY_WEBHOOK_SECRET: SECRET,
      GATEWAY_ADMIN_KEY: ADMIN_KEY,
    },
    each: () => ({ GATEWAY_DB: file }),
    readyMs: 60_000,
  });
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 0 });
  t.teardown(() => redis.disconnect());
  const start = new Calendar('UTC').bounds('day', Date.now()).start;
  const used = async (keyId: string): Promise<number> => Number((await redis.get(`${prefix}bud:{${keyId}}:day:${start}`)) ?? 0);
  const chat = (gw: GatewayProcess, key: string): Promise<RawResponse> =>
    request(gw.port, { path: '/v1/chat/completions', headers: { ...bearer(key), 'content-type': 'application/json' }, body: chatBody() });

  // One request at a time, each through the next gateway, each settled in Redis before the next:
  // what one gateway would answer is then exact (5 × 39 fit in 195, the 6th finds it spent).
  const statuses: number[] = [];
  let total = 0;
  for (let i = 0; i < 10; i++) {
    const r = await chat(gws[i % GATEWAYS]!, hard.key);
    statuses.push(r.status);
    if (r.status === 200) {
      total += USED;
      await until(`request ${i} settled in Redis`, async () => (await used(hard.record.id)) === total, 10_000, 20);
      t.equal(r.headers['x-budget-limit-tokens'], String(5 * USED));
    } else {
      t.match(errorOf(r), { type: 'insufficient_quota', code: 'budget_exceeded' }, `request ${i}: insufficient_quota`);
      t.match(r.headers['retry-after'], /^\d+$/);
      t.equal(r.headers['x-budget-remaining-tokens'], '0');
    }
  }
  t.same(statuses, [200, 200, 200, 200, 200, 429, 429, 429, 429, 429], 'exactly 5 answered 200 across 4 gateways, the rest 429');
  // The admin API of every gateway says what all of them used, not what it counted itself.
  const states = await Promise.all(
    gws.map(async (gw) => {
      const res = await fetch(`${gw.url}/admin/keys/${hard.record.id}`, { headers: bearer(ADMIN_KEY) });
      return ((await res.json()) as { budget_state: { periods: { period: string; used: number; remaining: number }[] } }).budget_state
        .periods;
    }),
  );
  t.same(
    states.map((p) => p.map(({ period, used, remaining }) => ({ period, used, remaining }))),
    Array.from({ length: GATEWAYS }, () => [{ period: 'day', used: 5 * USED, remaining: 0 }]),
    'GET /admin/keys/:id on each gateway: the budget as counted in Redis',
  );

  // A soft budget of 4 × 39: the 4th request reaches 100 %, the 4th…8th go past it; the 80 % and
  // 100 % warnings are each sent by one gateway only.
  let softTotal = 0;
  for (let i = 0; i < 8; i++) {
    const r = await chat(gws[i % GATEWAYS]!, soft.key);
    t.equal(r.status, 200, `soft request ${i} answered`);
    softTotal += USED;
    await until(`soft request ${i} settled`, async () => (await used(soft.record.id)) === softTotal, 10_000, 20);
  }
  const warnings = (name: string): { percent: unknown; key: unknown }[] =>
    receiver.received
      .filter((r) => r.json.type === 'budget.warning' && (r.json.data.key as { name: string }).name === name)
      .map((r) => ({ percent: r.json.data.percent, key: r.json.data.key }));
  await until('the warnings arrived', () => warnings('soft').length >= 2, 10_000);
  await sleep(1000); // a duplicate from another gateway would arrive meanwhile
  t.same(
    warnings('soft').sort((a, b) => Number(a.percent) - Number(b.percent)),
    [
      { percent: 80, key: { id: soft.record.id, name: 'soft' } },
      { percent: 100, key: { id: soft.record.id, name: 'soft' } },
    ],
    'one 80 % and one 100 % warning in all, not one per gateway',
  );
  t.same(warnings('hard'), [{ percent: 80, key: { id: hard.record.id, name: 'hard' } }], "the hard key's 80 %: once");
  t.equal(receiver.received.filter((r) => r.json.type === 'budget.exhausted').length, 1, "the hard key's exhaustion: once");
  const health = await Promise.all(
    gws.map(async (gw) => ((await (await fetch(`${gw.url}/health`)).json()) as { redis: { decided_locally: number } }).redis),
  );
  t.same(
    health.map((h) => h.decided_locally),
    [0, 0, 0, 0],
    'every admission was decided in Redis',
  );
});
