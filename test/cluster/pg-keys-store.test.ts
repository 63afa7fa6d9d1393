// The PostgreSQL key store against the SQLite one: the same script of operations on both gives the
// same transcript (records, refusals with their codes, messages and fields), so a user sees no
// difference between GATEWAY_DB and GATEWAY_DATABASE_URL. Then what only PostgreSQL does: every
// change NOTIFYs (in its own schema's name), last-used writes do not, and a registry on it follows
// changes made through another store within a bounded wait.
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import pg from 'pg';
import t from 'tap';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import type { KeyRepository } from '../../src/keys/key-repository.js';
import { KeyStore, KeyStoreError } from '../../src/keys/key-store.js';
import { KEY_CHANNEL, PgKeyStore } from '../../src/keys/pg-key-store.js';
import { migratePg, pgPool } from '../../src/storage/pg.js';
import { KEY_A, tempDir, until, type Teardown } from '../helpers.js';
import { pgSchema } from './harness.js';

const NOW = 1_800_000_000_000;

async function pgStore(t: Teardown): Promise<{ store: PgKeyStore; url: string; pool: pg.Pool }> {
  const url = await pgSchema(t);
  const pool = pgPool(url, { max: 3 });
  t.teardown(() => pool.end());
  await migratePg(pool);
  return { store: new PgKeyStore(pool), url, pool };
}

/** What an operation gave, with what is random each run (ids, secrets, prefixes) replaced by stable names. */
type Step = [string, unknown];

async function script(store: KeyRepository): Promise<Step[]> {
  const steps: Step[] = [];
  const ids = new Map<string, string>();
  const stable = (v: unknown): unknown =>
    JSON.parse(
      JSON.stringify(v, (k, x: unknown) => {
        if (k === 'id' && typeof x === 'string') {
          if (!ids.has(x)) ids.set(x, `id${ids.size}`);
          return ids.get(x);
        }
        if (k === 'prefix' && typeof x === 'string') return /^sk-.{7}$/.test(x) ? 'sk-…' : x;
        if (k === 'digest') return 'digest';
        if (k === 'key' && typeof x === 'string') return /^sk-[A-Za-z0-9_-]{32}$/.test(x) ? 'sk-secret' : x;
        return x;
      }),
    ) as unknown;
  const step = async (name: string, fn: () => unknown): Promise<void> => {
    try {
      steps.push([name, stable(await fn())]);
    } catch (err) {
      if (!(err instanceof KeyStoreError)) throw err;
      steps.push([name, { error: err.code, message: err.message, param: err.param }]);
    }
  };
  await step('create alice', () => store.create({ name: 'alice', note: 'laptop' }, NOW));
  await step('create alice again', () => store.create({ name: 'alice' }, NOW));
  for (const bad of ['', 'has space', '-dash', 'env-1', 'x'.repeat(65), 'key_0123456789ab'])
    await step(`create ${JSON.stringify(bad)}`, () => store.create({ name: bad }, NOW));
  await step('create expired', () => store.create({ name: 'old', expiresAt: NOW - 1 }, NOW));
  await step('create bad origin', () => store.create({ name: 'o', origins: ['https://a.example/'] }, NOW));
  await step('create empty models', () => store.create({ name: 'm', models: [' '] }, NOW));
  await step('create rpm 0', () => store.create({ name: 'l', limits: { rpm: 0 } }, NOW));
  await step('create bad policy', () => store.create({ name: 'p', policy: { max_tokens: -1 } }, NOW));
  await step('create bad budgets', () => store.create({ name: 'b', budgets: { day: 0 } }, NOW));
  await step('create bob, every field', () =>
    store.create(
      {
        name: 'bob',
        note: 'n',
        enabled: false,
        expiresAt: NOW + 86_400_000,
        models: ['a', 'a', 'b'],
        origins: ['https://chat.example.com'],
        limits: { rpm: 60, tpm: 1000, tpd: 100_000, concurrency: 2 },
        policy: { max_tokens: 256, params: { id_slot: 'allow' } },
        budgets: { day: 1000, month: 20_000, mode: 'soft', per_user: { day: 100 } },
      },
      NOW + 1,
    ),
  );
  // Same creation time: ordered by name, bytewise (upper case first) on both.
  for (const name of ['b2', 'B1', 'a3']) await step(`create ${name}`, () => store.create({ name }, NOW + 2));
  await step('list', () => store.list());
  await step('count', () => store.count());
  await step('get by name', () => store.get('bob'));
  await step('get nobody', () => store.get('nobody'));
  await step('find nobody', async () => ({ found: (await store.find('nobody')) ?? null }));
  await step('update several', () =>
    store.update('bob', { name: 'robert', enabled: true, models: null, limits: { rpm: null, tpd: 5 } }, NOW),
  );
  await step('update merges policy and budgets', () =>
    store.update('robert', { policy: { params: { n_probs: 'remove' }, max_tokens: null }, budgets: { per_user: null, week: 7000 } }, NOW),
  );
  await step('update nothing', () => store.update('robert', {}, NOW));
  await step('rename to a taken name', () => store.update('robert', { name: 'alice' }, NOW));
  await step('update expired', () => store.update('robert', { expiresAt: NOW - 5 }, NOW));
  await step('update nobody', () => store.update('nobody', { note: 'x' }, NOW));
  const before = (await store.get('robert')).digest;
  await step('rotate', () => store.rotate('robert'));
  await step('rotation changed the digest', async () => ({ changed: !(await store.get('robert')).digest.equals(before) }));
  await step('rotate nobody', () => store.rotate('nobody'));
  const alice = await store.get('alice');
  await step('last used', async () => {
    await store.recordLastUsed(new Map([[alice.id, NOW + 100]]));
    await store.recordLastUsed(new Map([[alice.id, NOW + 50]])); // older: the later time stays
    return (await store.get('alice')).lastUsedAt;
  });
  await step('revoke', () => store.revoke('robert'));
  await step('revoke again', () => store.revoke('robert'));
  await step('count after', () => store.count());
  return steps;
}

t.test('the same operations give the same records and the same refusals on SQLite and PostgreSQL', async (t) => {
  const sqlite = KeyStore.open(join(tempDir(t), 'gateway.db'));
  t.teardown(() => sqlite.close());
  const { store } = await pgStore(t);
  const onFile = await script(sqlite);
  const onPg = await script(store);
  t.same(onPg, onFile, 'transcripts are equal, step for step');
  // …and the transcript says what a user sees (checked once, it is the same on both).
  const at = (name: string): unknown => onFile.find(([n]) => n === name)?.[1];
  t.match(at('create alice again'), { error: 'key_name_taken', message: 'a key named "alice" already exists', param: 'name' });
  t.match(at('rename to a taken name'), { error: 'key_name_taken', message: 'a key named "alice" already exists' });
  t.match(at('get nobody'), { error: 'key_not_found', message: 'no key named or with id "nobody"' });
  t.match(at('create expired'), { error: 'invalid_key_field', message: 'expires is in the past', param: 'expires' });
  t.match(at('create bob, every field'), {
    record: { models: ['a', 'b'], enabled: false, limits: { rpm: 60, tpm: 1000, tpd: 100_000, concurrency: 2 } },
  });
  t.match(at('update merges policy and budgets'), {
    policy: { params: { id_slot: 'allow', n_probs: 'remove' } },
    budgets: { day: 1000, week: 7000, month: 20_000, mode: 'soft' },
  });
  t.same(
    (at('list') as { name: string }[]).map((k) => k.name),
    ['alice', 'bob', 'B1', 'a3', 'b2'],
  );
  t.equal(at('last used'), NOW + 100);
  t.same(at('rotation changed the digest'), { changed: true });
});

t.test('PostgreSQL: the stored digest is sha256(key); the key itself is nowhere in the table', async (t) => {
  const { store, pool } = await pgStore(t);
  const { key } = await store.create({ name: 'alice' });
  t.ok((await store.get('alice')).digest.equals(createHash('sha256').update(key).digest()));
  const dump = JSON.stringify((await pool.query('SELECT * FROM keys')).rows);
  t.notOk(dump.includes(key.slice(10)), 'no part of the key past its prefix is stored');
});

t.test('every change NOTIFYs in its schema, in its transaction; last-used writes do not', async (t) => {
  const { store, url } = await pgStore(t);
  const listener = new pg.Client({ connectionString: url });
  await listener.connect();
  t.teardown(() => listener.end());
  const schema = (await listener.query<{ s: string }>('SELECT current_schema() AS s')).rows[0]!.s;
  const heard: string[] = [];
  listener.on('notification', (m) => {
    if (m.channel === KEY_CHANNEL) heard.push(m.payload ?? '');
  });
  await listener.query(`LISTEN ${KEY_CHANNEL}`);
  const { record } = await store.create({ name: 'alice' });
  await store.update('alice', { note: 'x' });
  await store.rotate('alice');
  await store.recordLastUsed(new Map([[record.id, Date.now()]]));
  await t.rejects(store.update('alice', { limits: { rpm: 0 } }), { code: 'invalid_key_field' });
  await store.revoke('alice');
  await until('four notifications', () => heard.length >= 4);
  await listener.query('SELECT 1'); // anything still on its way arrives before this answer
  t.same(heard, [schema, schema, schema, schema], 'create, update, rotate, revoke: one each; a refused change and last-used times none');
});

t.test('a registry on PostgreSQL follows changes made through another store, and writes last-used times in batches', async (t) => {
  const { store, url } = await pgStore(t);
  const other = await PgKeyStore.open(url); // the CLI's way: a pool of its own
  t.teardown(() => other.close());
  const { record } = await other.create({ name: 'early' });
  const registry = new KeyRegistry([KEY_A], store);
  t.equal(registry.size, 1, 'before load(): the env keys only');
  await registry.load();
  t.equal(registry.size, 2);
  const lines: string[] = [];
  const log = {
    info: (_o: object, m: string) => lines.push(m),
    warn: (_o: object, m: string) => lines.push(m),
    error: (_o: object, m: string) => lines.push(m),
  };
  registry.start(log, 20);
  t.teardown(() => registry.stop());
  const { key } = await other.create({ name: 'late' });
  await until('the new key is accepted', () => registry.index.verify(key)?.enabled === true);
  await other.update('late', { enabled: false });
  await until('the disable is seen', () => registry.index.verify(key)?.enabled === false);
  registry.markUsed(
    [...registry.index.identities()].find((k) => k.id === record.id)!,
    NOW,
  );
  await until('last-used written', async () => (await other.get('early')).lastUsedAt === NOW);
  t.ok(lines.includes('keys reloaded: the key database changed'));
  t.notOk(registry.storeDown);
});
