// Per-key limits across gateway processes (issue 17): 4 gateways sharing one Redis enforce a key's
// rpm exactly as one would; Redis stopped mid-run (GATEWAY_REDIS_DOWN=local: served on local
// counts, said on /health and /metrics; refuse: 503), then shared counting resumes once it is back.
// Runs dist/server.js: build first (`npx tsc -p tsconfig.json`).
import t from 'tap';
import { startFakeLlama } from '../fixtures/fake-llama.js';
import { AUTH_A, KEY_A, chatBody, metricValue, request, sleep, until, type RawResponse } from '../helpers.js';
import { REDIS_URL, redisPrefix, startGateways, startRedis, type GatewayProcess } from './harness.js';

/** Several processes starting at once on a busy 2-core machine take their time. */
const READY_MS = 60_000;

const chat = (gw: GatewayProcess): Promise<RawResponse> =>
  request(gw.port, { path: '/v1/chat/completions', headers: { ...AUTH_A, 'content-type': 'application/json' }, body: chatBody() });

interface RedisHealth {
  state: string;
  when_down: string;
  decided_locally: number;
}

async function redisHealth(gw: GatewayProcess): Promise<RedisHealth> {
  const res = await fetch(`${gw.url}/health`);
  return ((await res.json()) as { redis: RedisHealth }).redis;
}

async function metrics(gw: GatewayProcess): Promise<string> {
  return (await fetch(`${gw.url}/metrics`)).text();
}

/** Counting per minute: a test that must stay within one minute starts early enough in it. */
async function freshMinute(needMs: number): Promise<void> {
  const left = 60_000 - (Date.now() % 60_000);
  if (left < needMs) await sleep(left + 200);
}

const errorCode = (r: RawResponse): string => (JSON.parse(r.text) as { error: { code: string } }).error.code;

t.test('a key with rpm 30 sending 100 requests spread over 4 gateways gets exactly 30 through', async (t) => {
  const fake = await startFakeLlama({ slots: 8 });
  t.teardown(() => fake.close());
  const gws = await startGateways(t, 4, {
    env: {
      LLM_API_KEYS: KEY_A,
      LLM_UPSTREAM: fake.url,
      GATEWAY_REDIS_URL: REDIS_URL,
      GATEWAY_REDIS_PREFIX: redisPrefix(),
      GATEWAY_DEFAULT_RPM: '30',
      // the 30 admitted ones all wait for a slot: none is to be refused for the queue
      GATEWAY_MAX_QUEUE_PER_KEY: '100',
    },
    readyMs: READY_MS,
  });
  await until('every gateway has Redis up', async () => (await Promise.all(gws.map(redisHealth))).every((h) => h.state === 'up'), 15_000);
  await freshMinute(20_000);
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) => chat(gws[i % 4]!)));
  const ok = results.filter((r) => r.status === 200);
  const refused = results.filter((r) => r.status === 429);
  const health = await Promise.all(gws.map(redisHealth));
  t.same(
    health.map((h) => h.decided_locally),
    [0, 0, 0, 0],
    'every admission was decided in Redis (none fell back to local counts: a Redis command timed out)',
  );
  t.equal(ok.length, 30, '30 answered 200');
  t.equal(refused.length, 70, '70 answered 429');
  for (const r of refused) {
    t.equal(errorCode(r), 'requests_per_minute');
    t.match(r.headers['retry-after'], /^\d+$/);
    t.equal(r.headers['x-ratelimit-limit-requests'], '30');
    t.equal(r.headers['x-ratelimit-remaining-requests'], '0');
    t.match(r.headers['x-ratelimit-reset-requests'], /^\d+s$|^1m0s$/);
  }
  const remaining = ok.map((r) => Number(r.headers['x-ratelimit-remaining-requests'])).sort((a, b) => a - b);
  t.same(
    remaining,
    Array.from({ length: 30 }, (_, i) => i),
    'each admitted request saw the shared count: remaining 29 … 0, once each',
  );
  const served = results.map((r, i) => (r.status === 200 ? i % 4 : -1)).filter((g) => g >= 0);
  t.ok(new Set(served).size > 1, `admitted through several gateways (${[...new Set(served)].join(', ')})`);
});

t.test('Redis stopped mid-run: served on local counts (local), 503 (refuse), shared again once back', async (t) => {
  const fake = await startFakeLlama({ slots: 8 });
  t.teardown(() => fake.close());
  const redis = await startRedis(t);
  const common = {
    LLM_API_KEYS: KEY_A,
    LLM_UPSTREAM: fake.url,
    GATEWAY_REDIS_URL: redis.url,
    GATEWAY_REDIS_PREFIX: redisPrefix(),
    GATEWAY_DEFAULT_RPM: '4',
  };
  const gws = await startGateways(t, 3, {
    env: common,
    each: (i) => ({ GATEWAY_REDIS_DOWN: i === 2 ? 'refuse' : 'local' }),
    readyMs: READY_MS,
  });
  const [a, b, refuser] = gws as [GatewayProcess, GatewayProcess, GatewayProcess];
  await freshMinute(30_000);
  t.same(
    (await Promise.all([chat(a), chat(b), chat(a), chat(refuser)])).map((r) => r.status),
    [200, 200, 200, 200],
  );
  t.equal((await chat(b)).status, 429, 'the 5th of rpm 4, over 3 gateways: refused');
  t.match(await redisHealth(a), { state: 'up', when_down: 'local', decided_locally: 0 });
  t.equal(metricValue(await metrics(a), 'llm_gateway_redis_up'), 1);

  await redis.stop();
  await until('every gateway sees Redis down', async () => (await Promise.all(gws.map(redisHealth))).every((h) => h.state === 'down'));
  const during = await Promise.all([chat(a), chat(a), chat(b)]);
  t.same(
    during.map((r) => r.status),
    [200, 200, 200],
    'local: served, on counts of its own (nothing counted here before)',
  );
  const down = await chat(refuser);
  t.equal(down.status, 503, 'refuse: 503');
  t.equal(errorCode(down), 'shared_state_unavailable');
  t.equal(down.headers['retry-after'], '5');
  t.match(await redisHealth(a), { state: 'down', when_down: 'local', decided_locally: 2 });
  t.match(await redisHealth(refuser), { state: 'down', when_down: 'refuse' });
  const text = await metrics(a);
  t.equal(metricValue(text, 'llm_gateway_redis_up'), 0, '/metrics: down');
  t.equal(metricValue(text, 'llm_gateway_redis_local_admissions_total'), 2, '/metrics: decided locally');
  t.match((await fetch(`${a.url}/health`)).status, 200, "/health's code stays about the llama-servers");
  t.notMatch(JSON.stringify(await redisHealth(a)), /redis:\/\//, 'never the URL');

  await redis.start(); // empty: the count starts again
  await until('every gateway sees Redis up', async () => (await Promise.all(gws.map(redisHealth))).every((h) => h.state === 'up'), 15_000);
  // Shared again: 4 through gateway a (whose own count already holds 2 this minute, so local
  // counting would refuse its 3rd), then the 5th, through b, refused by the shared count.
  t.same(
    (await Promise.all([chat(a), chat(a), chat(a), chat(a)])).map((r) => r.status),
    [200, 200, 200, 200],
    'counted in Redis again',
  );
  t.equal((await chat(b)).status, 429, 'the shared count refuses on another gateway');
  t.equal((await chat(refuser)).status, 429, 'refuse mode: counting again');
  t.match(await redisHealth(a), { state: 'up', decided_locally: 2 });
});
