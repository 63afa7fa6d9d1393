// The usage table on PostgreSQL answers every report exactly as the SQLite file does for the same
// rows (GATEWAY_DATABASE_URL changes where usage lives, not what the CLI or the admin API show).
import t from 'tap';
import { migratePg, pgPool } from '../../src/storage/pg.js';
import type { UsageRecord } from '../../src/usage/exchange.js';
import { PgUsageStore, budgetSeeder, budgetUserSeeder, usageColumns } from '../../src/usage/pg-usage-store.js';
import { UsageStore, type GroupBy, type UsageFilter, type UsageRow } from '../../src/usage/store.js';
import { tempStore, usageRecord } from '../helpers.js';
import { pgSchema } from './harness.js';

const DAY = 86_400_000;
const T0 = Date.parse('2026-03-01T23:59:59.500Z');

/** Rows that tell the engines apart if they differ: days around midnight UTC, nulls, mixed case, costs, outcomes. */
function sample(): UsageRecord[] {
  const keys = [
    ['k1', 'alice'],
    ['k2', 'Bob'],
    ['k3', 'bob'],
    [null, null],
  ] as const;
  const models = ['Zeta', 'alpha', null, 'beta-2'];
  const users = [null, 'u1', 'U2', '=cmd', null];
  const outcomes = ['ok', 'ok', 'rejected_limit', 'upstream_error', 'client_closed'] as const;
  const out: UsageRecord[] = [];
  for (let i = 0; i < 120; i++) {
    const [keyId, keyName] = keys[i % keys.length]!;
    out.push({
      ...usageRecord(i),
      ts: T0 + (i % 7) * 400 + Math.floor(i / 7) * (DAY / 5),
      requestId: `req-${i % 50}`,
      keyId,
      keyName,
      model: models[i % models.length]!,
      status: i % 5 === 2 ? 429 : 200,
      streamed: i % 2 === 0,
      promptTokens: i % 11 === 0 ? null : 10 + i,
      cachedTokens: i % 3 === 0 ? null : i,
      completionTokens: i % 13 === 0 ? null : 2 * i,
      estimated: i % 9 === 0,
      ttftMs: i % 4 === 0 ? null : i + 0.25,
      durationMs: 100 + i / 8,
      userAgent: i % 6 === 0 ? null : `ua "${i}", x`,
      outcome: outcomes[i % outcomes.length]!,
      endUser: users[i % users.length]!,
      cost: i % 10 < 4 ? null : Math.round(i * 1.37) / 1000,
    });
  }
  return out;
}

/** A report's rows with the cost rounded (the two engines may add the same floats in another order). */
function rounded(rows: UsageRow[]): UsageRow[] {
  return rows.map((r) => ({ ...r, cost: r.cost === null ? null : Math.round(r.cost * 1e9) / 1e9 }));
}

t.test('the same rows give the same reports on SQLite and PostgreSQL', async (t) => {
  const url = await pgSchema(t);
  const pool = pgPool(url, { max: 2 });
  t.teardown(() => pool.end());
  await migratePg(pool);
  const pgStore = new PgUsageStore(pool);
  const lite = new UsageStore(tempStore(t).db);
  const records = sample();
  // Two batches each, as the recorder writes them.
  for (const part of [records.slice(0, 70), records.slice(70)]) {
    lite.insert(part);
    await pgStore.insert(part);
  }

  const filters: [string, UsageFilter][] = [
    ['everything', {}],
    ['a key by name', { key: 'alice' }],
    ['a key by id', { key: 'k2' }],
    ['an end user', { user: 'u1' }],
    ['no end user', { user: '(none)' }],
    ['a window', { since: T0 + DAY / 2, until: T0 + 10 * DAY }],
    ['nothing', { key: 'nobody' }],
  ];
  const groups: GroupBy[] = ['day', 'key', 'model', 'user'];
  for (const [name, filter] of filters) {
    for (const by of groups)
      t.strictSame(rounded(await pgStore.report(filter, by)), rounded(lite.report(filter, by)), `report ${name} by ${by}`);
    for (const by of ['key', 'model'] as const)
      t.strictSame(await pgStore.series(filter, by), lite.series(filter, by), `series ${name} by ${by}`);
    t.strictSame(await pgStore.records(filter), lite.records(filter), `records ${name}`);
    t.strictSame(await pgStore.records(filter, 7), lite.records(filter, 7), `records ${name}, limit 7`);
  }
  t.ok((await pgStore.report({}, 'day')).length > 3, 'the sample spans several days');

  const requestFilters: [string, Parameters<UsageStore['requests']>[0]][] = [
    ['all', {}],
    ['a model', { model: 'alpha' }],
    ['no model', { model: '(none)' }],
    ['ok', { status: 'ok' }],
    ['errors', { status: 'error' }],
    ['status 429', { status: 429 }],
    ['a key, errors, a window', { key: 'Bob', status: 'error', since: T0, until: T0 + 8 * DAY }],
    ['a page on', { before: { ts: T0 + 3 * (DAY / 5) + 800, id: 30 } }],
  ];
  for (const [name, filter] of requestFilters) {
    t.strictSame(await pgStore.requests(filter, 500), lite.requests(filter, 500), `requests ${name}`);
    t.strictSame(await pgStore.requests(filter, 3), lite.requests(filter, 3), `requests ${name}, 3`);
  }

  for (const since of [0, T0 + DAY, T0 + 30 * DAY]) {
    t.strictSame(await pgStore.tokensByKey(since), lite.tokensByKey(since), `tokensByKey since ${since}`);
    for (const key of ['k1', 'k2', 'k3', 'nobody']) {
      t.strictSame(await pgStore.tokensSince(key, since), lite.tokensSince(key, since), `tokensSince ${key} ${since}`);
      t.strictSame(await pgStore.tokensSince(key, since, 'u1'), lite.tokensSince(key, since, 'u1'), `tokensSince ${key} u1 ${since}`);
      t.strictSame(await pgStore.tokensByUserSince(key, since), lite.tokensByUserSince(key, since), `tokensByUserSince ${key} ${since}`);
    }
  }
});

t.test('a batch is written once: the same batch id again writes nothing', async (t) => {
  const url = await pgSchema(t);
  const pool = pgPool(url, { max: 2 });
  t.teardown(() => pool.end());
  await migratePg(pool);
  const store = new PgUsageStore(pool);
  const rows = [usageRecord(1), usageRecord(2)].map(usageColumns);
  t.equal(await store.insertBatch(rows, 'batch-1'), true);
  t.equal(await store.insertBatch(rows, 'batch-1'), false, 'a replay of a committed batch');
  t.equal(await store.insertBatch(rows, 'batch-2'), true);
  t.equal((await pool.query<{ n: number }>('SELECT count(*) AS n FROM usage')).rows[0]!.n, 4);
});

t.test('budget seeds on PostgreSQL: the table plus the records not written yet', async (t) => {
  const url = await pgSchema(t);
  const pool = pgPool(url, { max: 2 });
  t.teardown(() => pool.end());
  await migratePg(pool);
  const store = new PgUsageStore(pool);
  await store.insert([
    { ...usageRecord(1), endUser: 'u1' },
    { ...usageRecord(2), endUser: 'u2' },
  ]);
  const { UsageRecorder } = await import('../../src/usage/recorder.js');
  const recorder = new UsageRecorder({});
  const seed = budgetSeeder(store, recorder)!;
  const seedUsers = budgetUserSeeder(store, recorder)!;
  t.equal(await seed('env-1', 0, null), 6, 'prompt 1 + completion 2, twice');
  t.equal(await seed('env-1', 0, 'u1'), 3);
  t.strictSame(
    await seedUsers('env-1', 0),
    new Map([
      ['u1', 3],
      ['u2', 3],
    ]),
  );
  t.equal(budgetSeeder(null, recorder), null);
});
