// The key database on its own: digests only, unique names, migrations of an older file, clear
// errors for a file that cannot be used, and change detection across connections.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { parseExpiry } from '../../src/keys/expiry.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { KeyStore, KeyStoreError } from '../../src/keys/key-store.js';
import { MIGRATIONS } from '../../src/storage/db.js';
import { KEY_A, tempDir } from '../helpers.js';

function storeErr(fn: () => unknown): KeyStoreError {
  try {
    fn();
  } catch (err) {
    if (err instanceof KeyStoreError) return err;
    throw err;
  }
  throw new Error('no error thrown');
}

t.test('created with its folder on first use, WAL mode, current schema', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'nested', 'deeper', 'gateway.db');
  const store = KeyStore.open(path);
  t.teardown(() => store.close());
  t.ok(existsSync(path));
  const db = new Database(path, { readonly: true });
  t.teardown(() => db.close());
  t.equal(db.pragma('journal_mode', { simple: true }), 'wal');
  t.equal(db.pragma('user_version', { simple: true }), MIGRATIONS.length);
});

t.test('a key: sk- + 192 random bits, shown once, only its digest and a prefix stored', async (t) => {
  const path = join(tempDir(t), 'gateway.db');
  const store = KeyStore.open(path);
  t.teardown(() => store.close());
  const { record, key } = store.create({ name: 'alice', note: 'laptop' });
  t.match(key, /^sk-[A-Za-z0-9_-]{32}$/);
  t.match(record.id, /^key_[0-9a-f]{12}$/);
  t.equal(record.prefix, key.slice(0, 10));
  t.same(
    { ...record, id: 'x', createdAt: 0, prefix: 'p' },
    {
      id: 'x',
      name: 'alice',
      note: 'laptop',
      prefix: 'p',
      enabled: true,
      createdAt: 0,
      expiresAt: null,
      lastUsedAt: null,
      models: null,
      origins: null,
      limits: { rpm: null, tpm: null, tpd: null, concurrency: null },
      policy: null,
      budgets: null,
    },
  );
  t.notOk('digest' in record, 'the public record has no digest');
  const stored = store.get('alice');
  t.ok(stored.digest.equals(createHash('sha256').update(key).digest()), 'the stored digest is sha256(key)');
  const second = store.create({ name: 'bob' });
  t.not(second.key, key);
  store.close();
  // Neither the database nor its WAL holds the key's text.
  for (const file of [path, `${path}-wal`]) {
    if (existsSync(file)) t.notOk(readFileSync(file).includes(Buffer.from(key)), `${file} does not contain the key`);
  }
});

t.test('names, duplicates, fields', async (t) => {
  const store = KeyStore.open(join(tempDir(t), 'gateway.db'));
  t.teardown(() => store.close());
  store.create({ name: 'alice' });
  t.match(
    storeErr(() => store.create({ name: 'alice' })),
    { code: 'key_name_taken', message: 'a key named "alice" already exists' },
  );
  for (const bad of ['', 'has space', '-dash', 'env-1', 'x'.repeat(65)]) {
    t.match(
      storeErr(() => store.create({ name: bad })),
      { code: 'invalid_key_field', param: 'name' },
      `name ${JSON.stringify(bad)}`,
    );
  }
  t.match(
    storeErr(() => store.create({ name: 'old', expiresAt: Date.now() - 1 })),
    { code: 'invalid_key_field', message: 'expires is in the past' },
  );
  t.match(
    storeErr(() => store.create({ name: 'o', origins: ['https://a.example/'] })),
    { code: 'invalid_key_field', message: /not an exact origin/ },
  );
  t.match(
    storeErr(() => store.create({ name: 'm', models: [' '] })),
    { code: 'invalid_key_field' },
  );
  t.match(
    storeErr(() => store.create({ name: 'l', limits: { rpm: 0 } })),
    { code: 'invalid_key_field', message: /rpm must be a whole number/ },
  );
  t.match(
    storeErr(() => store.get('nobody')),
    { code: 'key_not_found' },
  );
  t.notOk('status' in storeErr(() => store.get('nobody')), 'a store error carries no HTTP status: routes map it (src/errors.ts)');

  const bob = store.create({
    name: 'bob',
    models: ['a', 'a', 'b'],
    origins: ['https://chat.example.com'],
    limits: { rpm: 60, concurrency: 2 },
  }).record;
  t.same(bob.models, ['a', 'b'], 'duplicates dropped');
  t.same(bob.limits, { rpm: 60, tpm: null, tpd: null, concurrency: 2 });
  const changed = store.update(bob.id, { name: 'robert', enabled: false, models: null, limits: { rpm: null, tpd: 1000 } });
  t.match(changed, {
    name: 'robert',
    enabled: false,
    models: null,
    origins: ['https://chat.example.com'],
    limits: { rpm: null, tpm: null, tpd: 1000, concurrency: 2 },
  });
  t.match(
    storeErr(() => store.update('robert', { name: 'alice' })),
    { code: 'key_name_taken' },
  );
  const before = store.get('robert').digest;
  const rotated = store.rotate('robert');
  t.notOk(store.get('robert').digest.equals(before), 'rotation replaces the digest');
  t.equal(rotated.record.id, bob.id, 'same record');
  t.equal(store.revoke('robert').name, 'robert');
  t.equal(store.find('robert'), undefined);
  t.equal(store.count(), 1);
});

t.test('an older database file is upgraded in place, keys kept', async (t) => {
  const path = join(tempDir(t), 'old.db');
  // A file as version 1 of the gateway left it.
  const old = new Database(path);
  old.exec(MIGRATIONS[0]!);
  old.pragma('user_version = 1');
  old
    .prepare('INSERT INTO keys (id, name, note, digest, prefix, enabled, created_at) VALUES (?, ?, ?, ?, ?, 1, ?)')
    .run('key_000000000001', 'veteran', 'from v1', createHash('sha256').update(KEY_A).digest(), KEY_A.slice(0, 10), 1_700_000_000_000);
  old.close();

  const store = KeyStore.open(path);
  t.teardown(() => store.close());
  const k = store.get('veteran');
  t.match(k, { id: 'key_000000000001', note: 'from v1', enabled: true, expiresAt: null, models: null, limits: { rpm: null } });
  const registry = new KeyRegistry([], store);
  t.match(registry.index.verify(KEY_A), { id: 'key_000000000001', name: 'veteran' }, 'the old key still authenticates');
  const db = new Database(path, { readonly: true });
  t.teardown(() => db.close());
  t.equal(db.pragma('user_version', { simple: true }), MIGRATIONS.length);
  store.update('veteran', { models: ['m'] });
  t.same(store.get('veteran').models, ['m'], 'new columns work');
});

t.test('a file that cannot be used is a clear error at open', async (t) => {
  const dir = tempDir(t);
  const garbage = join(dir, 'garbage.db');
  writeFileSync(garbage, 'this is not a database, just some text that is long enough to have a header'.repeat(20));
  t.match(
    storeErr(() => KeyStore.open(garbage)),
    { code: 'db_unusable', message: `GATEWAY_DB ${garbage} cannot be used: the file is not a SQLite database or is damaged` },
  );

  const newer = join(dir, 'newer.db');
  const db = new Database(newer);
  db.pragma(`user_version = ${MIGRATIONS.length + 5}`);
  db.close();
  t.match(
    storeErr(() => KeyStore.open(newer)),
    { code: 'db_unusable', message: /schema version \d+, newer than this gateway knows/ },
  );

  // A path under a regular file cannot be created.
  t.match(
    storeErr(() => KeyStore.open(join(garbage, 'sub', 'x.db'))),
    { code: 'db_unusable', message: /cannot be used/ },
  );
});

t.test('a change from another connection is seen; our own writes are not reported', async (t) => {
  const path = join(tempDir(t), 'gateway.db');
  const gateway = KeyStore.open(path);
  const cli = KeyStore.open(path);
  t.teardown(() => {
    gateway.close();
    cli.close();
  });
  t.equal(gateway.changedElsewhere(), false, "another connection's open (migration check, write probe) is not a change");
  gateway.create({ name: 'own' });
  t.equal(gateway.changedElsewhere(), false, 'own write');
  cli.create({ name: 'other' });
  t.equal(gateway.changedElsewhere(), true, 'another connection committed');
  t.equal(gateway.changedElsewhere(), false, 'reported once');

  const registry = new KeyRegistry([], gateway);
  const { key } = cli.create({ name: 'late' });
  t.equal(registry.index.verify(key), undefined, 'not known before the poll');
  registry.tick();
  t.match(registry.index.verify(key), { name: 'late' }, 'known after one poll');
});

t.test('last-used times are batched in memory and written by the poll', async (t) => {
  const store = KeyStore.open(join(tempDir(t), 'gateway.db'));
  t.teardown(() => store.close());
  const { key } = store.create({ name: 'user' });
  const registry = new KeyRegistry([KEY_A], store);
  const identity = registry.index.verify(key)!;
  registry.markUsed(identity, 1_800_000_000_000);
  registry.markUsed(registry.index.verify(KEY_A)!, 1_800_000_000_000); // env keys are not stored
  t.equal(store.get('user').lastUsedAt, null, 'nothing written on the request path');
  registry.tick();
  t.equal(store.get('user').lastUsedAt, 1_800_000_000_000);
  registry.markUsed(identity, 1_700_000_000_000);
  registry.stop();
  t.equal(store.get('user').lastUsedAt, 1_800_000_000_000, 'never moves backwards');
});

t.test('expiry as people write it', async (t) => {
  const now = Date.parse('2026-11-26T12:00:00Z');
  t.equal(parseExpiry('30d', now), now + 30 * 86_400_000);
  t.equal(parseExpiry('12h', now), now + 12 * 3_600_000);
  t.equal(parseExpiry('90m', now), now + 90 * 60_000);
  t.equal(parseExpiry('45s', now), now + 45_000);
  t.equal(parseExpiry('2026-12-31', now), Date.parse('2027-01-01T00:00:00Z'), 'a date is valid through that day (UTC)');
  t.equal(parseExpiry('2026-11-26', now), Date.parse('2026-11-27T00:00:00Z'), 'today works until midnight UTC');
  t.equal(parseExpiry('2026-12-01T08:00:00Z', now), Date.parse('2026-12-01T08:00:00Z'));
  t.throws(() => parseExpiry('2026-11-25', now), /in the past/);
  t.throws(() => parseExpiry('tomorrow', now), /is not a date/);
  t.throws(() => parseExpiry('2026-13-45', now), /is not a date/);
  t.throws(() => parseExpiry('0d', now), /in the past/);
});
