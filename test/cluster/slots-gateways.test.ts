// Slots shared across gateway processes (issue 17), as a user sees them: four gateways in front of
// one 2-slot llama-server never have more than 2 requests in flight there together; a key with one
// request is served before another key's 3rd of 20; a gateway killed mid-stream frees its slot
// within the lease, and a request another gateway holds waiting for it then starts.
import { performance } from 'node:perf_hooks';
import t from 'tap';
import { startFakeLlama, type FakeLlama, type RecordedRequest } from '../fixtures/fake-llama.js';
import { KEY_A, KEY_B, bearer, metricValue, until } from '../helpers.js';
import { REDIS_URL, redisPrefix, startGateways, type GatewayProcess } from './harness.js';

/** Most requests open at the fake at the same moment (its receive and close times). */
function peakConcurrency(requests: RecordedRequest[]): number {
  const events = requests.flatMap<[number, number]>((r) => [
    [r.receivedAt, 1],
    [r.closedAt ?? r.finishedAt ?? Infinity, -1],
  ]);
  events.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let open = 0;
  let peak = 0;
  for (const [, d] of events) peak = Math.max(peak, (open += d));
  return peak;
}

/** The generations the fake received (it also gets the gateways' /health, /props and /v1/models polls). */
const chats = (fake: FakeLlama): RecordedRequest[] => fake.requests.filter((r) => r.url === '/v1/chat/completions');

/** The prompt a recorded request carried (tells the test's requests apart). */
const promptOf = (r: RecordedRequest): string =>
  (JSON.parse(r.body.toString()) as { messages: { content: string }[] }).messages[0]?.content ?? '';

function stream(gw: GatewayProcess, key: string, prompt: string): Promise<{ status: number; text: string }> {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { ...bearer(key), 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-oss-20b', messages: [{ role: 'user', content: prompt }], max_tokens: 8, stream: true }),
  }).then(async (res) => ({ status: res.status, text: await res.text() }));
}

/** Requests waiting for a slot in each gateway, summed (their /metrics). */
async function waitingAll(gws: GatewayProcess[]): Promise<number> {
  let n = 0;
  for (const gw of gws) {
    if (gw.child.exitCode !== null || gw.child.signalCode !== null) continue;
    const text = await (await fetch(`${gw.url}/metrics`)).text();
    n += metricValue(text, 'llm_gateway_requests_waiting') ?? 0;
  }
  return n;
}

const ADMIN = 'adm-0123456789abcdefghijklmnopqrstuvwxyz';

function env(fake: FakeLlama, extra: Record<string, string> = {}): Record<string, string> {
  return {
    LLM_API_KEYS: `${KEY_A},${KEY_B}`,
    LLM_UPSTREAM: fake.url,
    GATEWAY_MAX_INFLIGHT: String(fake.behavior.slots),
    GATEWAY_KEY_SLOTS: 'all',
    GATEWAY_REDIS_URL: REDIS_URL,
    GATEWAY_REDIS_PREFIX: redisPrefix(),
    GATEWAY_QUEUE_TIMEOUT_MS: '60000',
    GATEWAY_ADMIN_KEY: ADMIN,
    LOG_LEVEL: 'warn',
    ...extra,
  };
}

t.test('24 streams over 4 gateways: never more than the 2 slots in flight upstream, every one completes', async (t) => {
  const fake = await startFakeLlama({ slots: 2, chunkDelayMs: 20 });
  t.teardown(() => fake.close());
  const gws = await startGateways(t, 4, { env: env(fake), readyMs: 60_000 });
  const results = await Promise.all(Array.from({ length: 24 }, (_, i) => stream(gws[i % 4]!, i % 2 === 0 ? KEY_A : KEY_B, `s-${i}`)));
  for (const [i, r] of results.entries()) {
    t.equal(r.status, 200, `stream ${i} answered`);
    t.ok(r.text.trimEnd().endsWith('data: [DONE]'), `stream ${i} complete`);
  }
  t.equal(chats(fake).length, 24);
  const peak = peakConcurrency(chats(fake));
  t.ok(peak <= 2, `in flight upstream at once: ${peak} (≤ 2)`);
  t.ok(fake.maxBusySeen <= 2);
  await until('every slot given back', async () => (await waitingAll(gws)) === 0);
});

t.test("a key with 1 request is served before another key's 3rd of 20 (counted from its arrival), across gateways", async (t) => {
  const fake = await startFakeLlama({ slots: 2, chunkDelayMs: 150 });
  t.teardown(() => fake.close());
  const gws = await startGateways(t, 4, { env: env(fake), readyMs: 60_000 });
  const a = Array.from({ length: 20 }, (_, i) => stream(gws[i % 4]!, KEY_A, `A-${i}`));
  // Every one of A's requests upstream or waiting in a gateway before B comes (upstream read
  // first: a request is never counted twice, at worst missed while it moves).
  await until(
    "A's 20 in",
    async () => {
      const upstream = chats(fake).length;
      return upstream + (await waitingAll(gws)) >= 20 && upstream < 18;
    },
    30_000,
    20,
  );
  const bDone = stream(gws[3]!, KEY_B, 'B');
  // When B is in line (its gateway's /admin/live), or already upstream: A's that start from then on count.
  const before = await until(
    'B in line',
    async () => {
      const upstream = chats(fake);
      if (upstream.some((r) => promptOf(r) === 'B')) return upstream.length - 1;
      const live = (await (await fetch(`${gws[3]!.url}/admin/live`, { headers: bearer(ADMIN) })).json()) as {
        queue: { keys: { id: string; waiting: number }[] };
      };
      return live.queue.keys.some((k) => k.id === 'env-2' && k.waiting === 1) ? upstream.length : undefined;
    },
    30_000,
    10,
  );
  const b = await bDone;
  await Promise.all(a);
  t.equal(b.status, 200);
  const order = chats(fake).map(promptOf);
  const bAt = order.indexOf('B');
  const aBetween = order.slice(before, bAt).filter((p) => p.startsWith('A-')).length;
  t.comment(`A's requests that started after B arrived and before B: ${aBetween}`);
  t.ok(aBetween <= 2, "B started before A's 3rd request counted from when B arrived");
  t.equal(order.length, 21);
});

t.test("a gateway killed with SIGKILL mid-stream frees its slot within the lease: another gateway's waiting request starts", async (t) => {
  const leaseMs = 1500;
  const fake = await startFakeLlama({ slots: 1, chunkDelayMs: 1000 });
  t.teardown(() => fake.close());
  const gws = await startGateways(t, 2, { env: env(fake, { GATEWAY_SLOT_LEASE_MS: String(leaseMs) }), readyMs: 60_000 });
  const first = stream(gws[0]!, KEY_A, 'first').catch(() => ({ status: 0, text: '' }));
  await until('the first stream upstream', () => chats(fake).length === 1, 10_000);
  const second = stream(gws[1]!, KEY_B, 'second');
  await until('the second waits in gateway 1', async () => (await waitingAll([gws[1]!])) === 1, 10_000, 20);
  const killedAt = performance.now();
  gws[0]!.child.kill('SIGKILL');
  await gws[0]!.exit;
  fake.behavior.chunkDelayMs = 5;
  await until('the second request upstream', () => chats(fake).length === 2, 30_000, 10);
  const took = Math.round(chats(fake)[1]!.receivedAt - killedAt);
  t.comment(`the waiting request started ${took} ms after the kill (lease ${leaseMs} ms)`);
  t.equal(promptOf(chats(fake)[1]!), 'second');
  const res = await second;
  t.equal(res.status, 200, 'and completes');
  t.ok(res.text.trimEnd().endsWith('data: [DONE]'));
  await first;
});
