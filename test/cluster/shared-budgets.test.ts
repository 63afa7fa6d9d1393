// Token budgets counted in Redis (cluster/shared-budgets.ts) against the machine's Redis, each test
// under its own key prefix: 4 gateways (clients) admitting at once never overshoot a hard budget by
// more than one hold, a settle replaces the hold, a period's counter is seeded once however many race
// to seed it, every key expires (counters at the period's end), a dead gateway's holds go with its
// lease, one alert per level crossed across gateways, and end users counted apart.
import t from 'tap';
import { Redis } from 'ioredis';
import type { AlertEvent } from '../../src/alerts/events.js';
import type { BudgetKey, Seeder } from '../../src/admission/budgets.js';
import type { KeyBudgets } from '../../src/keys/key-budgets.js';
import { COUNTER_MARGIN_MS, SharedBudgets } from '../../src/cluster/shared-budgets.js';
import { Calendar } from '../../src/usage/calendar.js';
import { sleep, until, type Teardown } from '../helpers.js';
import { REDIS_URL, redisPrefix } from './harness.js';

const calendar = new Calendar('UTC');

function client(t: Teardown): Redis {
  const c = new Redis(REDIS_URL, { maxRetriesPerRequest: 0 });
  t.teardown(() => c.disconnect());
  return c;
}

interface Rig {
  readonly budgets: SharedBudgets;
  readonly alerts: AlertEvent[];
}

function gateway(
  t: Teardown,
  prefix: string,
  gatewayId: string,
  o: { seed?: Seeder | null; leaseMs?: number; renew?: boolean; alerts?: AlertEvent[] } = {},
): Rig {
  const alerts = o.alerts ?? [];
  const budgets = new SharedBudgets({
    client: client(t),
    prefix,
    gatewayId,
    leaseMs: o.leaseMs ?? 5000,
    calendar,
    warnAt: [80, 100],
    seed: o.seed ?? null,
    alerts: () => ({ emit: (e) => alerts.push(e) }),
  });
  if (o.renew !== false) budgets.start();
  t.teardown(() => budgets.close());
  return { budgets, alerts };
}

const key = (budgets: KeyBudgets, id = 'k1'): BudgetKey => ({ id, name: `name-${id}`, budgets });
const dayStart = (): number => calendar.bounds('day', Date.now()).start;

t.test('4 gateways admitting 40 requests at once against a hard budget: overshoot at most one hold', async (t) => {
  const prefix = redisPrefix();
  const gws = [1, 2, 3, 4].map((i) => gateway(t, prefix, `gw${i}`));
  const k = key({ day: 1000 });
  const hold = 150;
  const results = await Promise.all(Array.from({ length: 40 }, (_, i) => gws[i % 4]!.budgets.admit(k, null, `r${i}`, hold)));
  const admitted = results.filter((r) => r.refusal === undefined).length;
  t.equal(admitted, 7, '7 holds of 150 fit under 1000 (the 7th reaches 1050: one hold over, no more)');
  for (const r of results.filter((r) => r.refusal !== undefined)) {
    t.match(r.refusal, { user: null, period: 'day', limit: 1000, used: 0, held: 1050, tz: 'UTC' });
    t.equal(r.headers['x-budget-remaining-tokens'], '0');
  }
  t.equal(
    gws.reduce((n, g) => n + g.budgets.live, 0),
    7,
    'the admitted ones hold',
  );
});

t.test('a settle replaces the hold with the real tokens; a release gives it back', async (t) => {
  const g = gateway(t, redisPrefix(), 'gw1');
  const k = key({ day: 1000, week: 5000 });
  const a = await g.budgets.admit(k, null, 'a', 600);
  t.equal(a.refusal, undefined);
  t.same(a.headers, {
    'x-budget-period': 'day',
    'x-budget-scope': 'key',
    'x-budget-limit-tokens': '1000',
    'x-budget-remaining-tokens': '400',
    'x-budget-reset': new Date(calendar.bounds('day', Date.now()).end).toISOString(),
  });
  t.equal((await g.budgets.admit(k, null, 'b', 600)).refusal, undefined, '600 held of 1000: admitted');
  t.match((await g.budgets.admit(k, null, 'c', 10)).refusal, { used: 0, held: 1200 }, '1200 held: refused');
  await g.budgets.settle('a', k.id, null, Date.now(), 100);
  await g.budgets.release('b');
  const d = await g.budgets.admit(k, null, 'd', 10);
  t.equal(d.refusal, undefined, 'a settled with 100, b released');
  t.equal(d.headers['x-budget-remaining-tokens'], String(1000 - 100 - 10));
  await g.budgets.settle('light-call', k.id, null, Date.now(), 50);
  t.equal(
    (await g.budgets.admit(k, null, 'e', 0)).headers['x-budget-remaining-tokens'],
    String(1000 - 150 - 10),
    'a record without a hold counts too',
  );
  t.equal(g.budgets.live, 1, 'd still holds');
});

t.test("a period's counter is seeded once, even when 4 gateways race to seed it", async (t) => {
  const prefix = redisPrefix();
  let reads = 0;
  const seeded: number[] = [];
  const gws = [1, 2, 3, 4].map((i) =>
    gateway(t, prefix, `gw${i}`, {
      seed: async (keyId, since, user) => {
        t.equal(keyId, 'k1');
        t.equal(since, dayStart());
        t.equal(user, null);
        reads++;
        await sleep(20);
        seeded.push(500 + i);
        return 500 + i; // each gateway's read differs: exactly one of them must win
      },
    }),
  );
  const k = key({ day: 1000 });
  // several requests per gateway at once: one read per gateway (they share it)
  const results = await Promise.all(Array.from({ length: 12 }, (_, i) => gws[i % 4]!.budgets.admit(k, null, `r${i}`, 0)));
  t.ok(reads >= 1 && reads <= 4, `one read per gateway at most (${reads})`);
  const r = client(t);
  const counter = Number(await r.get(`${prefix}bud:{k1}:day:${dayStart()}`));
  t.ok(seeded.includes(counter), `the counter holds one read's value (${counter})`);
  const after = await Promise.all(gws.map((g, i) => g.budgets.admit(k, null, `after${i}`, 0)));
  t.same(
    after.map((a) => a.headers['x-budget-remaining-tokens']),
    gws.map(() => String(1000 - counter)),
    'every gateway sees the one counter',
  );
  t.equal(results.length, 12);
  const readsBefore = reads;
  await gws[0]!.budgets.admit(k, null, 'again', 0);
  t.equal(reads, readsBefore, 'once seeded, nothing is read again');
});

t.test('every key expires: counters at their period end (+ margin), holds with their lease', async (t) => {
  const prefix = redisPrefix();
  const g = gateway(t, prefix, 'gw1', { leaseMs: 2000 });
  const k = key({ day: 1000, month: 100_000, per_user: { week: 500 } });
  t.equal((await g.budgets.admit(k, 'ann', 'r1', 100)).refusal, undefined);
  await g.budgets.settle('r1', k.id, 'ann', Date.now(), 40);
  const r = client(t);
  const keys = (await r.keys(`${prefix}*`)).sort();
  const now = Date.now();
  const ends = {
    day: calendar.bounds('day', now),
    week: calendar.bounds('week', now),
    month: calendar.bounds('month', now),
  };
  t.same(
    keys,
    [
      `${prefix}bud:{k1}:day:${ends.day.start}`,
      `${prefix}bud:{k1}:month:${ends.month.start}`,
      `${prefix}bud:{k1}:week:${ends.week.start}:u:ann`,
    ].sort(),
    'one counter per budget (the user counter made at their first settle); the hold is gone',
  );
  for (const [period, b] of Object.entries(ends)) {
    const name = keys.find((n) => n.includes(`:${period}:`))!;
    const ttl = await r.pttl(name);
    const want = b.end + COUNTER_MARGIN_MS - Date.now();
    t.ok(Math.abs(ttl - want) < 5000, `${period} counter expires at the period's end + margin (${ttl} vs ${want})`);
  }
  t.equal(Number(await r.get(`${prefix}bud:{k1}:week:${ends.week.start}:u:ann`)), 40);
  await g.budgets.admit(k, 'ann', 'r2', 100);
  const heldTtl = await r.pttl(`${prefix}bud:{k1}:held`);
  t.ok(heldTtl > 0 && heldTtl <= 4000, `a hold's sorted set expires within two leases (${heldTtl})`);
});

t.test("a dead gateway's holds expire within its lease; a live one's are renewed", async (t) => {
  const prefix = redisPrefix();
  const dead = gateway(t, prefix, 'dead', { leaseMs: 600, renew: false });
  const live = gateway(t, prefix, 'live', { leaseMs: 600 });
  const k = key({ day: 1000 });
  t.equal((await dead.budgets.admit(k, null, 'd1', 700)).refusal, undefined);
  t.equal((await live.budgets.admit(k, null, 'l1', 200)).refusal, undefined);
  t.equal((await live.budgets.admit(k, null, 'x', 0)).headers['x-budget-remaining-tokens'], '100', 'both holds count');
  await sleep(1500); // > two leases: the live one has renewed several times meanwhile
  const check = await until(
    'the dead gateway holds nothing',
    async () => {
      const c = await live.budgets.admit(k, null, 'probe', 0);
      return c.headers['x-budget-remaining-tokens'] === String(1000 - 200) ? c : undefined;
    },
    5000,
  );
  t.equal(check.refusal, undefined, "the live gateway's hold (200) is still counted, the dead one's (700) is not");
});

t.test('soft budget: 4 gateways settling across 80 % and 100 % send each alert once', async (t) => {
  const prefix = redisPrefix();
  const alerts: AlertEvent[] = [];
  const gws = [1, 2, 3, 4].map((i) => gateway(t, prefix, `gw${i}`, { alerts }));
  const k = key({ day: 1000, mode: 'soft' });
  await Promise.all(gws.map((g, i) => g.budgets.admit(k, null, `seed${i}`, 0)));
  await Promise.all(Array.from({ length: 40 }, (_, i) => gws[i % 4]!.budgets.settle(`r${i}`, k.id, null, Date.now(), 30)));
  t.same(
    alerts.map((a) => (a.type === 'budget.warning' ? a.percent : a.type)).sort(),
    [100, 80],
    'one warning at 80 %, one at 100 %, in all',
  );
  t.match(
    alerts.find((a) => a.type === 'budget.warning' && a.percent === 80),
    {
      key: { id: 'k1', name: 'name-k1' },
      period: 'day',
      mode: 'soft',
      limit: 1000,
    },
  );
  const over = await gws[0]!.budgets.admit(k, null, 'over', 500);
  t.equal(over.refusal, undefined, 'a soft budget never refuses');
  t.equal(over.headers['x-budget-remaining-tokens'], '0');
});

t.test('hard budget: exhausted said once; an end user counted apart, from their seed', async (t) => {
  const prefix = redisPrefix();
  const alerts: AlertEvent[] = [];
  const seed: Seeder = (_k, _since, user) => (user === 'bob' ? 450 : user === null ? 450 : 0);
  const gws = [1, 2].map((i) => gateway(t, prefix, `gw${i}`, { alerts, seed }));
  const k = key({ day: 1000, per_user: { day: 500 } });
  const ann = await gws[0]!.budgets.admit(k, 'ann', 'a1', 100);
  t.equal(ann.refusal, undefined);
  t.equal(ann.headers['x-budget-scope'], 'user');
  t.equal(ann.headers['x-budget-remaining-tokens'], '400', "ann's own 500, less her hold");
  const bob = await gws[1]!.budgets.admit(k, 'bob', 'b1', 100);
  t.equal(bob.refusal, undefined, "bob's seed 450 of 500: admitted (ann's hold is not his)");
  t.equal(bob.headers['x-budget-scope'], 'user');
  t.equal(bob.headers['x-budget-remaining-tokens'], '0');
  t.match(
    (await gws[0]!.budgets.admit(k, 'bob', 'b2', 100)).refusal,
    { user: 'bob', limit: 500, used: 450, held: 100 },
    'his next one, on the other gateway: refused (his seed + his hold)',
  );
  t.equal((await gws[0]!.budgets.admit(k, 'cy', 'c1', 0)).refusal, undefined, 'another user is not');
  await gws[0]!.budgets.settle('a1', k.id, 'ann', Date.now(), 600);
  t.same(
    alerts.map((a) => `${a.type}:${'user' in a ? (a.user ?? '') : ''}`).sort(),
    ['budget.exhausted:', 'budget.exhausted:ann', 'budget.warning:', 'budget.warning:ann'],
    "the key's 80 % and its exhaustion (450 + 600), ann's (600 of 500)",
  );
  t.match((await gws[1]!.budgets.admit(k, null, 'x', 10)).refusal, { user: null, used: 1050 }, 'the key is spent on every gateway');
});
