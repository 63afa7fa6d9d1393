// The shared slots' Lua script (cluster/slots-script.ts) against the real Redis: who gets a free
// slot (fewest running in the model across gateways, then the longest waiting), the key's share,
// a heavy waiter's kept slots, leases and waiters that expire, grants published to the waiter's
// gateway, and renewal telling a gateway of a grant it missed.
import { Redis } from 'ioredis';
import t, { type Test } from 'tap';
import { defineSlotsScript, slotKeys } from '../../src/cluster/slots-script.js';
import { sleep, until } from '../helpers.js';
import { REDIS_URL, redisPrefix } from './harness.js';

const S1 = 'http://127.0.0.1:9001';
const S2 = 'http://127.0.0.1:9002';

interface Slots {
  client: Redis;
  prefix: string;
  /** runs op with the common arguments: caller id, lease ms, key share, servers */
  call(op: string, caller: string, ...args: (string | number)[]): Promise<string[]>;
  /** enter as gateway g: id g|n */
  enter(
    id: string,
    key: string,
    weight?: number,
    extra?: { group?: string; cands?: string; prefer?: string; preferMs?: number },
  ): Promise<string[]>;
  leased(id: string): Promise<string | null>;
}

async function slots(t: Test, opts: { leaseMs?: number; keySlots?: string; servers?: string; maxPerKey?: number } = {}): Promise<Slots> {
  const client = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  t.teardown(() => client.quit());
  defineSlotsScript(client);
  const prefix = redisPrefix();
  const keys = slotKeys(prefix);
  t.teardown(async () => {
    const c = new Redis(REDIS_URL);
    await c.del(...keys);
    await c.quit();
  });
  const leaseMs = opts.leaseMs ?? 5000;
  const table = opts.servers ?? `${S1}\t2\tready\t1`;
  const call = (op: string, caller: string, ...args: (string | number)[]): Promise<string[]> =>
    client.gatewaySlots(...keys, op, caller, leaseMs, `${prefix}{slots}:grants:`, opts.keySlots ?? 'all', table, ...args);
  return {
    client,
    prefix,
    call,
    enter: (id, key, weight = 1, extra = {}) =>
      call(
        'enter',
        id,
        id,
        extra.group ?? 'm',
        key,
        weight,
        extra.cands ?? S1,
        extra.prefer ?? '',
        extra.preferMs ?? 0,
        0,
        opts.maxPerKey ?? 100,
      ),
    leased: async (id) => {
      const info = await client.hget(keys[1]!, id);
      return info === null ? null : info.split('\t')[0]!;
    },
  };
}

t.test('a free slot goes to the key with the fewest running, not to the first in line', async (t) => {
  const s = await slots(t);
  t.same(await s.enter('g1|1', 'A'), ['granted', S1]);
  t.same(await s.enter('g2|1', 'A'), ['granted', S1]);
  for (let i = 2; i <= 5; i++) t.same(await s.enter(`g1|${i}`, 'A'), ['waiting'], `A's request ${i} waits`);
  t.same(await s.enter('g2|9', 'B'), ['waiting'], 'B waits: both slots taken');
  t.same(await s.call('release', '', 'g1|1'), ['released']);
  t.equal(await s.leased('g2|9'), S1, "B got the free slot before A's earlier requests");
  t.equal(await s.leased('g1|2'), null);
  t.same(await s.call('release', '', 'g2|1'), ['released']);
  t.equal(await s.leased('g1|2'), S1, "then A's oldest");
  t.same(await s.call('release', '', 'g1|3'), ['left'], 'a waiter leaves the line');
  t.same(await s.call('release', '', 'g2|9'), ['released']);
  t.equal(await s.leased('g1|4'), S1, 'the one that left is passed over');
  t.same(await s.call('release', '', 'nobody|1'), ['none']);
});

t.test("a key stays within its share (GATEWAY_KEY_SLOTS) while another key's request takes the slot", async (t) => {
  const s = await slots(t, { keySlots: '1' });
  t.same(await s.enter('g1|1', 'A'), ['granted', S1]);
  t.same(await s.enter('g1|2', 'A'), ['waiting'], 'A is at its share: it waits with a slot free');
  t.same(await s.enter('g2|1', 'B'), ['granted', S1], 'B takes the free slot at once');
  t.same(await s.enter('g2|2', 'C'), ['waiting']);
  await s.call('release', '', 'g1|1');
  t.equal(await s.leased('g1|2'), S1, 'A and C both run none now: the one waiting longest (A) goes');
  t.equal(await s.leased('g2|2'), null);
  await s.call('release', '', 'g2|1');
  t.equal(await s.leased('g2|2'), S1, 'then C');
});

t.test('the per-key waiting line is bounded across gateways', async (t) => {
  const s = await slots(t, { maxPerKey: 2 });
  await s.enter('g1|1', 'A');
  await s.enter('g1|2', 'A');
  t.same(await s.enter('g1|3', 'A'), ['waiting']);
  t.same(await s.enter('g2|3', 'A'), ['waiting']);
  t.same(await s.enter('g3|3', 'A'), ['full'], 'the third waiter of A, from any gateway, is refused');
  t.same(await s.enter('g3|4', 'B'), ['waiting'], 'another key is not');
});

t.test("a heavy request's turn keeps the free slot for it: a light one does not pass it", async (t) => {
  const s = await slots(t);
  t.same(await s.enter('g1|1', 'A'), ['granted', S1]);
  t.same(await s.enter('g1|2', 'B', 2), ['waiting'], 'B needs both slots');
  t.same(await s.enter('g2|1', 'C'), ['waiting'], 'C waits although a slot is free: it is kept for B');
  await s.call('release', '', 'g1|1');
  t.equal(await s.leased('g1|2'), S1, 'B runs');
  t.equal(await s.leased('g2|1'), null);
});

t.test('placement: the least loaded server, the preferred one while it has room, a down one only when all are', async (t) => {
  const s = await slots(t, { servers: `${S1}\t2\tready\t1\n${S2}\t2\tready\t1` });
  const both = `${S1} ${S2}`;
  t.same(await s.enter('g|1', 'A', 1, { cands: both }), ['granted', S1]);
  t.same(await s.enter('g|2', 'B', 1, { cands: both }), ['granted', S2], 'the other, less loaded');
  t.same(await s.enter('g|3', 'C', 1, { cands: both, prefer: S2 }), ['granted', S2], 'the preferred one');
  t.same(await s.enter('g|4', 'D', 1, { cands: both, prefer: S2, preferMs: 60_000 }), ['waiting'], 'waits for its preferred server');
  await s.call('release', '', 'g|3');
  t.equal(await s.leased('g|4'), S2);

  const d = await slots(t, { servers: `${S1}\t1\tdown\t1\n${S2}\t1\tloading\t1` });
  t.same(await d.enter('g|1', 'A', 1, { cands: both }), ['waiting'], 'one down, one loading: it waits');
  const all = await slots(t, { servers: `${S1}\t1\tdown\t1` });
  t.same(await all.enter('g|1', 'A'), ['granted', S1], 'every candidate down: sent (and fails fast)');
});

t.test("a grant is published on the waiter's gateway's channel", async (t) => {
  const s = await slots(t);
  const sub = new Redis(REDIS_URL);
  t.teardown(() => sub.quit());
  const got: string[] = [];
  sub.on('message', (_c: string, m: string) => got.push(m));
  await sub.subscribe(`${s.prefix}{slots}:grants:gwB`);
  await s.enter('gwA|1', 'A');
  await s.enter('gwA|2', 'A');
  t.same(await s.enter('gwB|1', 'B'), ['waiting']);
  await s.call('release', 'gwA|1', 'gwA|1');
  await until('the grant message', () => got.length > 0, 2000);
  t.same(got, [`gwB|1\t${S1}\n`]);
});

t.test('leases and waiters expire unless renewed; renewal tells of a missed grant and re-leases a lost runner', async (t) => {
  const s = await slots(t, { leaseMs: 300 });
  await s.enter('dead|1', 'A');
  await s.enter('dead|2', 'A');
  t.same(await s.enter('live|1', 'B'), ['waiting']);
  t.same(await s.enter('gone|1', 'C'), ['waiting'], 'a waiter whose gateway dies');
  // The live gateway renews its waiter; the dead one renews nothing.
  for (let i = 0; i < 4; i++) {
    await sleep(120);
    const reply = await s.call('renew', '', '', 'live|1');
    if (reply.length > 0) {
      t.same(reply, [`live|1\tgranted\t${S1}`], 'the renewal says the waiter was granted');
      break;
    }
  }
  t.equal(await s.leased('live|1'), S1, "B got a dead gateway's slot once its lease expired");
  t.equal(await s.leased('dead|1'), null);
  t.same(await s.call('renew', '', '', 'other|7'), ['other|7\tlost'], 'a waiter Redis no longer knows is lost');
  // A runner whose lease expired (its gateway cut off from Redis) is leased again on renewal, even above the slots.
  await s.enter('x|1', 'X');
  await s.call('renew', '', `cut|1\t${S1}\tm\tK\t1`, '');
  t.equal(await s.leased('cut|1'), S1);
  const run = await s.client.hgetall(slotKeys(s.prefix)[2]!);
  t.equal(run[`s\t${S1}`], '3', 'counted: 3 running on a 2-slot server, so nothing starts until it drains');
  t.notOk(
    Object.keys(run).some((k) => k.startsWith('w\t')),
    'no waiting counts left over',
  );
});
