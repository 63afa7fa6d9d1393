// A budget whose count starts from a usage table that answers later (PostgreSQL: an async Seeder):
// admission is told to wait (pending) and decides nothing until the seed is read, then decides on
// it; one read per counter however many requests wait; a failed read fails those requests only.
import t from 'tap';
import { NO_ALERTS } from '../../src/alerts/events.js';
import { Budgets, type Seeder, type UserSeeder } from '../../src/admission/budgets.js';
import { MemoryCounters } from '../../src/admission/counters.js';
import { Calendar } from '../../src/usage/calendar.js';

const now = Date.parse('2026-11-29T10:00:00Z');

function budgets(seed: Seeder, seedUsers: UserSeeder | null = null): Budgets {
  return new Budgets({
    counters: new MemoryCounters(),
    calendar: new Calendar('UTC'),
    warnAt: [],
    seed,
    seedUsers,
    alerts: () => NO_ALERTS,
  });
}

t.test('a pending seed: wait, then decide on it (one read for all who wait)', async (t) => {
  let reads = 0;
  let answer!: (n: number) => void;
  const b = budgets(() => {
    reads++;
    return new Promise<number>((resolve) => (answer = resolve));
  });
  const key = { id: 'k', name: 'k', budgets: { day: 1000 } };
  const first = b.admit(key, null, 'r1', 100, now);
  const second = b.admit(key, null, 'r2', 100, now);
  t.ok(first.pending instanceof Promise, 'told to wait');
  t.ok(second.pending instanceof Promise);
  t.equal(first.refusal, undefined);
  t.equal(reads, 1, 'one read');
  answer(900);
  await first.pending;
  await second.pending;
  const after = b.admit(key, null, 'r1', 100, now);
  t.equal(after.pending, undefined);
  t.equal(after.refusal, undefined, '900 of 1000 used: admitted');
  t.equal(after.headers['x-budget-remaining-tokens'], '0');
  t.match(b.admit(key, null, 'r2', 100, now).refusal, { period: 'day', used: 900, held: 100 }, 'then spent');
  t.equal(reads, 1);
});

t.test('a failed read: the waiting requests hear of it; the next one reads again', async (t) => {
  let reads = 0;
  const b = budgets(() => (++reads === 1 ? Promise.reject(new Error('PostgreSQL down')) : Promise.resolve(10)));
  const key = { id: 'k', name: 'k', budgets: { day: 1000 } };
  await t.rejects(b.admit(key, null, 'r1', 100, now).pending!, /PostgreSQL down/);
  const again = b.admit(key, null, 'r1', 100, now);
  await again.pending;
  t.equal(b.admit(key, null, 'r1', 100, now).headers['x-budget-remaining-tokens'], String(1000 - 10 - 100));
});

t.test("an end user's budget from an async grouped seed", async (t) => {
  const b = budgets(
    () => Promise.resolve(0),
    () => Promise.resolve(new Map([['alice', 490]])),
  );
  const key = { id: 'k', name: 'k', budgets: { per_user: { day: 500 } } };
  const first = b.admit(key, 'alice', 'r1', 10, now);
  t.ok(first.pending);
  await first.pending;
  const check = b.admit(key, 'alice', 'r1', 10, now);
  t.equal(check.refusal, undefined);
  t.equal(check.headers['x-budget-remaining-tokens'], '0');
  t.match(b.admit(key, 'alice', 'r2', 10, now).refusal, { user: 'alice', used: 490, held: 10 });
  t.equal(b.admit(key, 'bob', 'r3', 5, now).refusal, undefined, 'a user the seed did not name starts at 0');
});

t.test('a sync seeder decides at once, as before', async (t) => {
  const b = budgets(() => 999);
  const check = b.admit({ id: 'k', name: 'k', budgets: { day: 1000 } }, null, 'r1', 5, now);
  t.equal(check.pending, undefined);
  t.equal(check.refusal, undefined);
});
