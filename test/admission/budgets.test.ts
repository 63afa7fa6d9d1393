// Token budgets over calendar periods (issue #15), without sockets: the periods in non-UTC zones
// (DST days of 23 and 25 hours, a midnight that does not exist, month lengths, leap years, ISO
// weeks), the budgets document's checks, and the Budgets counter at its edges with a fake `now`:
// exactly at the limit, one over, a reset at a local midnight, soft warnings once per level, a
// per-user budget, and a count that starts from the usage table without counting a record twice.
import t from 'tap';
import type { AlertEvent, Alerts } from '../../src/alerts/events.js';
import { Budgets, stateOf, tightestPercent, type Seeder } from '../../src/admission/budgets.js';
import { MemoryCounters } from '../../src/admission/counters.js';
import { KeyStoreError } from '../../src/keys/key-record.js';
import { budgetsFromFlags, mergeBudgets, validBudgets, type KeyBudgets } from '../../src/keys/key-budgets.js';
import { Calendar, canonicalZone, localIso } from '../../src/usage/calendar.js';

const at = (iso: string): number => Date.parse(iso);

t.test('calendar periods in a time zone', async (t) => {
  const span = (tz: string, period: 'day' | 'week' | 'month', iso: string): [string, string, number] => {
    const c = new Calendar(tz);
    const b = c.bounds(period, at(iso));
    return [localIso(c, b.start), localIso(c, b.end), (b.end - b.start) / 3_600_000];
  };
  t.same(
    span('America/New_York', 'day', '2026-03-08T12:00:00Z'),
    ['2026-03-08T00:00:00-05:00', '2026-03-09T00:00:00-04:00', 23],
    'spring forward: 23 h',
  );
  t.same(
    span('America/New_York', 'day', '2026-11-01T12:00:00Z'),
    ['2026-11-01T00:00:00-04:00', '2026-11-02T00:00:00-05:00', 25],
    'fall back: 25 h',
  );
  t.same(
    span('America/New_York', 'day', '2026-11-02T04:30:00Z'),
    ['2026-11-01T00:00:00-04:00', '2026-11-02T00:00:00-05:00', 25],
    '23:30 local is still Nov 1 (UTC says Nov 2)',
  );
  t.same(
    span('America/New_York', 'week', '2026-11-01T12:00:00Z'),
    ['2026-10-26T00:00:00-04:00', '2026-11-02T00:00:00-05:00', 169],
    'a Sunday belongs to the week that began on Monday',
  );
  t.same(span('America/New_York', 'month', '2026-03-15T12:00:00Z'), ['2026-03-01T00:00:00-05:00', '2026-04-01T00:00:00-04:00', 743]);
  t.same(
    span('Asia/Shanghai', 'day', '2026-01-31T16:30:00Z'),
    ['2026-02-01T00:00:00+08:00', '2026-02-02T00:00:00+08:00', 24],
    'UTC says Jan 31, Shanghai Feb 1',
  );
  t.same(
    span('Asia/Shanghai', 'month', '2026-01-31T16:30:00Z'),
    ['2026-02-01T00:00:00+08:00', '2026-03-01T00:00:00+08:00', 672],
    'February: 28 days',
  );
  t.same(
    span('UTC', 'month', '2028-02-10T00:00:00Z'),
    ['2028-02-01T00:00:00+00:00', '2028-03-01T00:00:00+00:00', 696],
    'leap year: 29 days',
  );
  t.same(span('UTC', 'week', '2028-02-29T12:00:00Z'), ['2028-02-28T00:00:00+00:00', '2028-03-06T00:00:00+00:00', 168]);
  t.same(
    span('UTC', 'week', '2026-12-31T12:00:00Z'),
    ['2026-12-28T00:00:00+00:00', '2027-01-04T00:00:00+00:00', 168],
    'a week across the new year',
  );
  t.same(
    span('Pacific/Chatham', 'day', '2026-04-05T00:00:00Z'),
    ['2026-04-05T00:00:00+13:45', '2026-04-06T00:00:00+12:45', 25],
    '+13:45 → +12:45',
  );
  t.same(
    span('America/Santiago', 'day', '2026-09-06T12:00:00Z'),
    ['2026-09-06T01:00:00-03:00', '2026-09-07T00:00:00-03:00', 23],
    'midnight does not exist: the day starts at the jump',
  );
  t.same(span('America/Santiago', 'month', '2026-09-06T12:00:00Z'), ['2026-09-01T00:00:00-04:00', '2026-10-01T00:00:00-03:00', 719]);
  const c = new Calendar('Europe/Paris');
  const b = c.bounds('day', at('2026-06-01T10:00:00Z'));
  t.equal(c.bounds('day', at('2026-06-01T21:59:59.999Z')), b, 'the same period is cached: no allocation');
  t.not(c.bounds('day', at('2026-06-01T22:00:00Z')), b, 'Paris midnight (UTC+2) is a new day');
  t.equal(c.bounds('day', at('2026-06-01T22:00:00Z')).start, at('2026-06-01T22:00:00Z'));
  t.equal(canonicalZone('utc'), 'UTC');
  t.throws(() => new Calendar('Mars/Olympus'), RangeError);
});

t.test('the budgets document: checked field by field, merged, made from CLI flags', async (t) => {
  t.equal(validBudgets(null), null);
  t.equal(validBudgets({}), null);
  t.same(validBudgets({ month: 1000, day: null, per_user: { day: 10 } }), { month: 1000, per_user: { day: 10 } });
  t.same(validBudgets({ mode: 'soft' }), { mode: 'soft' }, 'a mode alone is kept (its numbers may follow)');
  const fails = (doc: unknown, param: string): void => {
    try {
      validBudgets(doc);
      t.fail(`${JSON.stringify(doc)} should be refused`);
    } catch (err) {
      t.ok(err instanceof KeyStoreError && err.code === 'invalid_key_field' && err.param === param, `${JSON.stringify(doc)} → ${param}`);
    }
  };
  fails({ month: 0 }, 'budgets.month');
  fails({ day: 1.5 }, 'budgets.day');
  fails({ week: '100' }, 'budgets.week');
  fails({ mode: 'strict' }, 'budgets.mode');
  fails({ year: 5 }, 'budgets.year');
  fails({ per_user: { month: -1 } }, 'budgets.per_user.month');
  fails({ per_user: { mode: 'soft' } }, 'budgets.per_user.mode');
  fails([1], 'budgets');
  const stored: KeyBudgets = { day: 100, month: 1000, per_user: { day: 10, month: 50 } };
  t.same(mergeBudgets(stored, { day: null, per_user: { day: null, week: 20 } }), { month: 1000, per_user: { month: 50, week: 20 } });
  t.same(mergeBudgets(stored, { per_user: null }), { day: 100, month: 1000 });
  t.equal(mergeBudgets(stored, null), null);
  t.equal(mergeBudgets({ day: 5 }, { day: null }), null, 'nothing left: no budgets');
  t.same(budgetsFromFlags({ 'budget-month': '1000000', 'budget-mode': 'Soft', 'user-budget-day': '5000', 'budget-day': 'none' }), {
    day: null,
    month: 1_000_000,
    mode: 'soft',
    per_user: { day: 5000 },
  });
  t.equal(budgetsFromFlags({}), undefined);
  t.throws(() => budgetsFromFlags({ 'budget-week': '1e3' }), /--budget-week must be a whole number/);
  t.throws(() => budgetsFromFlags({ 'budget-mode': 'maybe' }), /--budget-mode must be hard or soft/);
});

interface Rig {
  budgets: Budgets;
  events: AlertEvent[];
  seeds: string[];
}

function rig(tz: string, seed: Seeder | null = null, warnAt = [80, 100]): Rig {
  const events: AlertEvent[] = [];
  const seeds: string[] = [];
  const alerts: Alerts = { emit: (e) => events.push(e) };
  const budgets = new Budgets({
    counters: new MemoryCounters(),
    calendar: new Calendar(tz),
    warnAt,
    seed:
      seed === null
        ? null
        : (keyId, since, user) => {
            seeds.push(`${keyId} ${new Date(since).toISOString()} ${user ?? '-'}`);
            return seed(keyId, since, user);
          },
    alerts: () => alerts,
  });
  return { budgets, events, seeds };
}

const key = (budgets: KeyBudgets) => ({ id: 'key_000000000001', name: 'alice', budgets });

t.test('a hard budget: admitted below it, refused at it, held tokens count, settled with real ones', async (t) => {
  const { budgets } = rig('UTC');
  const k = key({ day: 100 });
  const now = at('2026-11-29T10:00:00Z');
  const first = budgets.admit(k, null, 'r1', 60, now);
  t.equal(first.refusal, undefined, 'nothing used: admitted');
  t.same(first.headers, {
    'x-budget-period': 'day',
    'x-budget-scope': 'key',
    'x-budget-limit-tokens': '100',
    'x-budget-remaining-tokens': '40',
    'x-budget-reset': '2026-11-30T00:00:00.000Z',
  });
  t.equal(budgets.admit(k, null, 'r2', 60, now).refusal, undefined, '60 held of 100: admitted (the overshoot is one request)');
  const third = budgets.admit(k, null, 'r3', 1, now);
  t.match(third.refusal, { period: 'day', limit: 100, used: 0, held: 120, retryAfter: 14 * 3600 }, '120 held ≥ 100: refused');
  t.equal(third.headers['x-budget-remaining-tokens'], '0');
  budgets.settle('r1', k.id, null, now, 30);
  budgets.settle('r2', k.id, null, now, 69);
  t.equal(budgets.admit(k, null, 'r4', 0, now).refusal, undefined, '99 used, one short of the budget: admitted');
  budgets.settle('r4', k.id, null, now, 1);
  t.match(budgets.admit(k, null, 'r5', 0, now).refusal, { used: 100, held: 0 }, 'exactly at the budget: refused');
  t.same(
    budgets.state(k.id, k.budgets, now),
    {
      tz: 'UTC',
      mode: 'hard',
      periods: [{ period: 'day', limit: 100, used: 100, held: 0, remaining: 0, resets_at: '2026-11-30T00:00:00.000Z' }],
      per_user: null,
    },
    'state',
  );
  t.equal(budgets.admit(k, null, 'r6', 5, now, false).refusal, undefined, 'a model list or token count is never refused');
  t.equal(budgets.admit(key({ week: 10 }), null, 'r7', 5, now).refusal, undefined, 'a budget the key does not have is not checked');
});

t.test('a reset at local midnight in New York on the day clocks fall back (25 h)', async (t) => {
  const { budgets } = rig('America/New_York');
  const k = key({ day: 50, month: 1000 });
  const late = at('2026-11-02T04:59:00Z'); // 23:59 EST, Nov 1: 25 hours after Nov 1 00:00 EDT
  t.equal(budgets.admit(k, null, 'r1', 10, late).refusal, undefined);
  budgets.settle('r1', k.id, null, late + 120_000, 50); // finished after midnight: billed to Nov 1
  t.match(budgets.admit(k, null, 'r2', 10, late + 30_000).refusal, {
    period: 'day',
    resetsLocal: '2026-11-02T00:00:00-05:00',
    retryAfter: 30,
  });
  const midnight = at('2026-11-02T05:00:00Z');
  const next = budgets.admit(k, null, 'r3', 10, midnight);
  t.equal(next.refusal, undefined, 'a new day: a new count, nothing carried over');
  t.equal(next.headers['x-budget-remaining-tokens'], '40', 'the day counts only its own hold');
  const state = budgets.state(k.id, k.budgets, midnight);
  t.same(
    state.periods.map((p) => [p.period, p.used, p.held]),
    [
      ['day', 0, 10],
      ['month', 50, 10],
    ],
    'the month keeps what the day forgot',
  );
  t.equal(tightestPercent(state), 20);
});

t.test('a soft budget never refuses; each warning level is sent once per period', async (t) => {
  const { budgets, events } = rig('Asia/Shanghai', null, [50, 80, 100, 150]);
  const k = key({ month: 100, mode: 'soft' });
  const now = at('2026-02-10T00:00:00Z');
  for (let i = 0; i < 10; i++) {
    t.equal(budgets.admit(k, null, `r${i}`, 1000, now).refusal, undefined, `request ${i + 1}: admitted`);
    budgets.settle(`r${i}`, k.id, null, now, 30);
  }
  t.same(
    events.map((e) => (e.type === 'budget.warning' ? [e.percent, e.used, e.mode] : e.type)),
    [
      [50, 60, 'soft'],
      [80, 90, 'soft'],
      [100, 120, 'soft'],
      [150, 150, 'soft'],
    ],
    'one event per level, never again in the period',
  );
  t.same(events[0], {
    type: 'budget.warning',
    key: { id: k.id, name: 'alice' },
    period: 'month',
    mode: 'soft',
    percent: 50,
    used: 60,
    limit: 100,
    resets_at: '2026-02-28T16:00:00.000Z',
  });
  budgets.admit(k, null, 'next-month', 0, at('2026-02-28T16:00:00Z'));
  budgets.settle('next-month', k.id, null, at('2026-02-28T16:00:00Z'), 60);
  t.equal(events.length, 5, 'March (Shanghai) has its own levels');
  t.match(events[4], { percent: 50, used: 60, resets_at: '2026-03-31T16:00:00.000Z' });
});

t.test('a hard budget warns below 100 % and is exhausted once', async (t) => {
  const { budgets, events } = rig('UTC');
  const k = key({ day: 100 });
  const now = at('2026-11-29T10:00:00Z');
  budgets.admit(k, null, 'r1', 10, now);
  budgets.settle('r1', k.id, null, now, 85);
  budgets.admit(k, null, 'r2', 10, now);
  budgets.settle('r2', k.id, null, now, 40);
  t.equal(budgets.admit(k, null, 'r3', 10, now).refusal?.used, 125);
  t.same(
    events.map((e) => e.type),
    ['budget.warning', 'budget.exhausted'],
  );
  t.same(events[1], {
    type: 'budget.exhausted',
    key: { id: k.id, name: 'alice' },
    period: 'day',
    used: 125,
    limit: 100,
    resets_at: '2026-11-30T00:00:00.000Z',
  });
});

t.test('per-user budgets: user A is refused, user B and requests without a user are not', async (t) => {
  const { budgets, events } = rig('UTC');
  const k = key({ month: 10_000, per_user: { day: 100 } });
  const now = at('2026-11-29T10:00:00Z');
  budgets.admit(k, 'alice@example.com', 'a1', 10, now);
  budgets.settle('a1', k.id, 'alice@example.com', now, 100);
  const refused = budgets.admit(k, 'alice@example.com', 'a2', 10, now);
  t.match(refused.refusal, { user: 'alice@example.com', period: 'day', used: 100 });
  t.same(refused.headers['x-budget-scope'], 'user');
  const bob = budgets.admit(k, 'bob', 'b1', 10, now);
  t.equal(bob.refusal, undefined, 'another user has their own count');
  t.equal(bob.headers['x-budget-remaining-tokens'], '90', 'the tightest is his day, not the key month');
  t.equal(budgets.admit(k, null, 'n1', 10, now).refusal, undefined, 'no end user: the key budget only');
  t.same(budgets.state(k.id, k.budgets, now).periods[0]!.used, 100, 'the key counts every user');
  t.match(events, [
    { type: 'budget.warning', user: 'alice@example.com', percent: 80 },
    { type: 'budget.exhausted', user: 'alice@example.com' },
  ]);
});

t.test('a count starts from the usage table once per period, and a record is never counted twice', async (t) => {
  const table = new Map<string, number>([['key_000000000001 -', 700]]);
  const { budgets, events, seeds } = rig('Europe/Paris', (keyId, _since, user) => table.get(`${keyId} ${user ?? '-'}`) ?? 0);
  const k = key({ month: 1000, per_user: { month: 500 } });
  const now = at('2026-11-29T10:00:00Z');
  // A record of this key settles before its first request here (it was admitted before a restart,
  // or is already in the table): there is no counter yet, it is the seed's.
  budgets.settle('before', k.id, null, now, 200);
  const first = budgets.admit(k, 'carol', 'r1', 50, now);
  t.equal(first.headers['x-budget-remaining-tokens'], '250', '1000 − 700 from the table − 50 held (the key month is tightest)');
  t.same(seeds, ['key_000000000001 2026-10-31T23:00:00.000Z -', 'key_000000000001 2026-10-31T23:00:00.000Z carol'], 'November 1st, Paris');
  budgets.admit(k, 'carol', 'r2', 50, now);
  t.equal(seeds.length, 2, 'seeded once');
  t.same(events, [], 'the 80 % the table already passed before the restart is not sent again… ');
  budgets.settle('r1', k.id, 'carol', now, 150);
  t.match(events, [{ type: 'budget.warning', percent: 80, used: 850 }], '…but one crossed now is');
  t.same(budgets.state(k.id, k.budgets, now).periods, [
    { period: 'month', limit: 1000, used: 850, held: 50, remaining: 100, resets_at: '2026-11-30T23:00:00.000Z' },
  ]);
  budgets.release('r2');
  t.equal(budgets.state(k.id, k.budgets, now).periods[0]!.held, 0, 'a released hold counts nothing');
  budgets.settle('late', k.id, 'carol', now, 5);
  t.equal(budgets.state(k.id, k.budgets, now).periods[0]!.used, 855, 'a record without a hold (a light call) counts where a counter runs');
});

t.test('stateOf: the CLI counts from the usage table in the same periods', async (t) => {
  const cal = new Calendar('America/New_York');
  const now = at('2026-03-08T12:00:00Z');
  const state = stateOf(cal, { day: 1000, week: 5000, mode: 'soft' }, now, (period) => ({ used: period === 'day' ? 250 : 4000, held: 0 }));
  t.same(state, {
    tz: 'America/New_York',
    mode: 'soft',
    periods: [
      { period: 'day', limit: 1000, used: 250, held: 0, remaining: 750, resets_at: '2026-03-09T04:00:00.000Z' },
      { period: 'week', limit: 5000, used: 4000, held: 0, remaining: 1000, resets_at: '2026-03-09T04:00:00.000Z' },
    ],
    per_user: null,
  });
  t.equal(tightestPercent(state), 80);
});
