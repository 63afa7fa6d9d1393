// SharedScheduler (cluster/shared-slots.ts) in one test process: two instances stand for two
// gateways (their own gateway ids) on one Redis. What admission relies on: a grant reaching the
// other gateway, leaving the line, the deadline, the per-key bound across gateways, weights, and
// what happens when Redis goes away (GATEWAY_REDIS_DOWN=local: on per process; =refuse: 503) and
// comes back (running requests counted again).
import t, { type Test } from 'tap';
import { QueueFull, QueueLeft, QueueTimeout, TooManyTasks } from '../../src/admission/fair-queue.js';
import type { Admission, SlotState } from '../../src/admission/scheduler.js';
import { RedisLink } from '../../src/cluster/redis-link.js';
import { SharedScheduler, type SharedServer } from '../../src/cluster/shared-slots.js';
import { slotKeys } from '../../src/cluster/slots-script.js';
import { until } from '../helpers.js';
import { REDIS_URL, redisPrefix, startRedis } from './harness.js';

interface Server extends SharedServer {
  slots: number;
  state: SlotState;
}

const quiet = { info: () => {}, error: () => {}, warn: () => {} };
const REFUSED = new Error('refused: shared state unavailable');

async function gateways(
  t: Test,
  n: number,
  opts: { url?: string; slots?: number; maxQueuePerKey?: number; timeoutMs?: number; whenDown?: 'local' | 'refuse'; leaseMs?: number } = {},
): Promise<{ server: Server; gws: SharedScheduler[]; links: RedisLink[]; prefix: string }> {
  const server: Server = { index: 0, url: 'http://127.0.0.1:9101', slots: opts.slots ?? 2, state: 'ready', weight: 1 };
  const prefix = redisPrefix();
  const gws: SharedScheduler[] = [];
  const links: RedisLink[] = [];
  for (let i = 0; i < n; i++) {
    const link = new RedisLink(opts.url ?? REDIS_URL, quiet);
    await link.ready();
    const gw = new SharedScheduler({
      maxQueue: 100,
      maxQueuePerKey: opts.maxQueuePerKey ?? 100,
      timeoutMs: opts.timeoutMs ?? 30_000,
      keySlots: 'all',
      link,
      prefix,
      gatewayId: `gw${i}`,
      leaseMs: opts.leaseMs ?? 3000,
      whenDown: opts.whenDown ?? 'local',
      servers: () => [server],
      refusal: () => REFUSED,
      log: quiet,
    });
    t.teardown(async () => {
      gw.close();
      await link.close();
    });
    gws.push(gw);
    links.push(link);
  }
  t.teardown(async () => {
    const c = new RedisLink(opts.url ?? REDIS_URL, quiet);
    await c.ready().catch(() => {});
    if (c.up) await c.client.del(...slotKeys(prefix));
    await c.close();
  });
  return { server, gws, links, prefix };
}

t.test("a slot freed on one gateway goes to another gateway's waiter; this gateway's counts", async (t) => {
  const { server, gws } = await gateways(t, 2);
  const [g0, g1] = gws as [SharedScheduler, SharedScheduler];
  const a1 = g0.enter('A', 'm', [server]);
  const a2 = g0.enter('A', 'm', [server]);
  t.equal(a1.immediate, false, 'a shared ticket always asks Redis first');
  const x1 = await a1.admitted;
  await a2.admitted;
  t.equal(x1.server, server);
  const b = g1.enter('B', 'm', [server]);
  await until('B waiting in gateway 1', () => g1.waiting === 1 && g1.waitingFor('B') === 1);
  t.equal(b.started, false);
  t.equal(g0.runningOn(server), 2, "gateway 0's requests");
  t.equal(g1.runningOn(server), 0);
  x1.release();
  const got = await b.admitted;
  t.equal(got.server, server, 'granted through its gateway channel');
  t.equal(b.started, true);
  t.equal(g1.runningFor('B'), 1);
  t.same(g1.snapshot().groups, [{ group: 'm', running: 1, waiting: 0, keys: [{ key: 'B', running: 1, waiting: 0 }] }]);
  t.equal(g0.running, 1);
});

t.test('leaving the line, the deadline, the per-key bound across gateways, too many tasks', async (t) => {
  const { server, gws } = await gateways(t, 2, { slots: 1, maxQueuePerKey: 1, timeoutMs: 400 });
  const [g0, g1] = gws as [SharedScheduler, SharedScheduler];
  const run = await g0.enter('A', 'm', [server]).admitted;
  const left = g0.enter('B', 'm', [server]);
  await until('B waiting', () => g0.waitingFor('B') === 1);
  left.cancel();
  await t.rejects(left.admitted, QueueLeft);
  const late = g0.enter('C', 'm', [server]);
  await t.rejects(late.admitted, QueueTimeout, 'waited past GATEWAY_QUEUE_TIMEOUT_MS');
  const d1 = g0.enter('D', 'm', [server]);
  await until('D waiting', () => g0.waitingFor('D') === 1);
  const d2 = g1.enter('D', 'm', [server]);
  await t.rejects(d2.admitted, QueueFull, "D's line is full on every gateway");
  d1.cancel();
  t.throws(() => g1.enter('E', 'm', [server], 2), TooManyTasks, 'more tasks than the server has slots: refused at once');
  // The ones that left are out of Redis too: the freed slot goes to a newcomer.
  run.release();
  const f = await g1.enter('F', 'm', [server]).admitted;
  t.equal(f.server, server);
});

t.test(
  'Redis down: waiters and new requests go on per process (local), or are refused (refuse); back: running ones counted again',
  async (t) => {
    const redis = await startRedis(t);
    const { server, gws, prefix } = await gateways(t, 1, { url: redis.url, slots: 1, leaseMs: 600 });
    const refusing = await gateways(t, 1, { url: redis.url, slots: 1, whenDown: 'refuse' });
    const [g] = gws as [SharedScheduler];
    const [r] = refusing.gws as [SharedScheduler];
    const running = await g.enter('A', 'm', [server]).admitted;
    const waiter = g.enter('B', 'm', [server]);
    await r.enter('A', 'm', [refusing.server]).admitted;
    const refusedWaiter = r.enter('B', 'm', [refusing.server]);
    await until('both waiting', () => g.waiting === 1 && r.waiting === 1);
    await redis.stop();
    const moved: Admission = await waiter.admitted;
    t.equal(moved.server, server, 'local: the waiter runs, counted in this process only (llama-server queues the excess)');
    await t.rejects(refusedWaiter.admitted, REFUSED, 'refuse: the waiter is refused');
    const now = g.enter('C', 'm', [server]);
    t.equal(now.immediate, false, 'local: a new request waits in the process-local queue');
    t.throws(() => r.enter('C', 'm', [refusing.server]), REFUSED, 'refuse: a new request is refused at once');
    moved.release();
    await now.admitted;
    t.equal(g.running, 2, "this process's shared request and its local one");
    await redis.start();
    const probe = new RedisLink(redis.url, quiet);
    t.teardown(() => probe.close());
    await probe.ready(10_000);
    await until(
      'the running request leased again',
      async () => (await probe.client.hget(slotKeys(prefix)[2]!, `s\t${server.url}`)) === '1',
      15_000,
      50,
    );
    running.release();
    await until('given back', async () => (await probe.client.hget(slotKeys(prefix)[2]!, `s\t${server.url}`)) === null, 5000, 20);
  },
);
