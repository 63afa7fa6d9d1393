// Red team, issue 17 (part b): keys on PostgreSQL and `db migrate-to`, attacked as a key holder
// (what a request can leave in the SQLite file), an operator (a URL with its password where the
// printer does not look) and a flaky network. Runs dist/cli/main.js: build first.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import t from 'tap';
import { KeyStore } from '../../src/keys/key-store.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { PgKeyStore } from '../../src/keys/pg-key-store.js';
import { pgPool } from '../../src/storage/pg.js';
import { UsageStore } from '../../src/usage/store.js';
import { pgSchema } from './harness.js';
import { runCli } from './pg-keys-helpers.js';
import { KEY_A, freePort, sleep, tempDir, until, usageRecord, within, type Teardown } from '../helpers.js';

const SERVER = fileURLToPath(new URL('../../dist/server.js', import.meta.url));

async function pgRows(url: string, sql: string): Promise<Record<string, unknown>[]> {
  const c = new pg.Client({ connectionString: url });
  c.setTypeParser(20, (v: string) => Number(v));
  await c.connect();
  try {
    return (await c.query(sql)).rows as Record<string, unknown>[];
  } finally {
    await c.end();
  }
}

t.test('migrate-to copies a file holding what SQLite takes and PostgreSQL refuses (a NUL, a huge number)', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'gateway.db');
  const store = KeyStore.open(path);
  const alice = store.create({ name: 'alice', note: 'lap\u0000top' }).record;
  new UsageStore(store.db).insert([
    // a key holder's body `model` is recorded as sent: {"model": "a\u0000b"} is one request away
    { ...usageRecord(0), keyId: alice.id, keyName: 'alice', model: 'a\u0000b' },
    { ...usageRecord(1), keyId: alice.id, keyName: 'alice' },
  ]);
  // an upstream's usage object with an absurd count: SQLite keeps it (as REAL in an INTEGER column)
  store.db.exec('UPDATE usage SET prompt_tokens = 1e30, completion_tokens = 12.5 WHERE id = 2');
  // bytes that are not UTF-8, written from outside
  store.db.exec("UPDATE usage SET user_agent = CAST(x'ff61' AS TEXT) WHERE id = 2");
  store.close();
  const url = await pgSchema(t);
  const run = await runCli(dir, ['db', 'migrate-to', url, '--db', path]);
  t.equal(run.code, 0, run.stderr);
  t.match(run.stdout, /Copied 1 keys and 2 usage rows/);
  const keys = await pgRows(url, 'SELECT note FROM keys');
  t.same(keys, [{ note: 'lap\ufffdtop' }], 'the NUL in a note: U+FFFD');
  const usage = await pgRows(url, 'SELECT id, model, prompt_tokens, completion_tokens, user_agent FROM usage ORDER BY id');
  t.same(usage[0], { id: 1, model: 'a\ufffdb', prompt_tokens: 1, completion_tokens: 2, user_agent: null }, 'a NUL in the model: U+FFFD');
  t.equal(usage[1]!.prompt_tokens, Number.MAX_SAFE_INTEGER, 'a count beyond BIGINT: the largest one kept');
  t.equal(usage[1]!.completion_tokens, 13, 'a fraction: rounded');
  t.equal(usage[1]!.user_agent, '\ufffda');
});

t.test('migrate-to never prints a password given as a query parameter of the URL', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'gateway.db');
  KeyStore.open(path).close();
  const url = `${await pgSchema(t)}&password=sekret-pw`; // trust auth: accepted, and must not be shown
  for (const args of [[], ['--json']]) {
    const run = await runCli(dir, ['db', 'migrate-to', url, '--db', path, '--force', ...args]);
    t.equal(run.code, 0, run.stderr);
    t.notMatch(run.stdout + run.stderr, /sekret-pw/, `${args.join(' ')}: the password is not printed`);
    t.match(run.stdout, /password=\*\*\*\*/);
  }
});

t.test('a note with a NUL: PostgreSQL stores it as SQLite does (U+FFFD for the NUL), not a 500 "database unusable"', async (t) => {
  const url = await pgSchema(t);
  const store = await PgKeyStore.open(url);
  t.teardown(() => store.close());
  const { record } = await store.create({ name: 'nul-note', note: 'a\u0000b' });
  t.equal(record.note, 'a\ufffdb');
  t.equal((await store.update('nul-note', { note: 'c\u0000d' })).note, 'c\ufffdd');
  // a name or id with a NUL (GET /admin/keys/a%00b) names no key: 404, not a database failure
  t.equal(await store.find('a\u0000b'), undefined);
  await t.rejects(store.get('a\u0000b'), { code: 'key_not_found' });
  await t.rejects(store.update('a\u0000b', { note: 'x' }), { code: 'key_not_found' });
  await t.rejects(store.revoke('a\u0000b'), { code: 'key_not_found' });
});

/** `node dist/server.js` in an empty folder with `env`; resolves with its exit code and output. */
function startServer(t: Teardown, env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [SERVER], {
    cwd: tempDir(t),
    env: { PATH: process.env.PATH ?? '', LLM_API_KEYS: KEY_A, LLM_UPSTREAM: 'http://127.0.0.1:9', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  return within(new Promise((resolve) => child.on('close', (code) => resolve({ code, stdout, stderr }))), 30_000, 'the gateway exits');
}

t.test(
  'a gateway started while PostgreSQL is down, hung or dropping connections: one line naming the setting, exit 1, never the URL',
  async (t) => {
    const silent = createServer(() => {}).listen(0, '127.0.0.1'); // accepts, never answers
    const dropping = createServer((s) => s.destroy()).listen(0, '127.0.0.1'); // accepts, hangs up
    await Promise.all([once(silent, 'listening'), once(dropping, 'listening')]);
    t.teardown(() => {
      silent.close();
      dropping.close();
    });
    const ports = {
      refused: await freePort(),
      silent: (silent.address() as AddressInfo).port,
      dropping: (dropping.address() as AddressInfo).port,
    };
    for (const [what, port] of Object.entries(ports)) {
      const run = await startServer(t, { GATEWAY_DATABASE_URL: `postgres://gw:sekret-pw@127.0.0.1:${port}/gw?password=sekret-pw` });
      t.equal(run.code, 1, `${what}: exit 1`);
      t.notMatch(run.stdout + run.stderr, /sekret-pw/, `${what}: the password is not printed`);
      t.match(
        run.stderr,
        /^❌ LLM Gateway cannot start: GATEWAY_DATABASE_URL cannot be reached: [^\n]+\n$/,
        `${what}: one line (${run.stderr.trim()})`,
      );
    }
  },
);

/**
 * A TCP proxy to the machine's PostgreSQL that passes everything but its notifications (backend
 * message 'A'): what a LISTEN behind PgBouncer in transaction mode, or a notification lost any other
 * way, looks like to the gateway. Returns `url` through it.
 */
async function droppingNotifications(t: Teardown, url: string): Promise<string> {
  const target = new URL(url);
  const sockets = new Set<Socket>();
  const server = createServer((client) => {
    const upstream = connect(Number(target.port || 5432), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => {}).on('close', () => {
        client.destroy();
        upstream.destroy();
        sockets.delete(s);
      });
    }
    client.pipe(upstream);
    let pending = Buffer.alloc(0);
    upstream.on('data', (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      const out: Buffer[] = [];
      while (pending.length >= 5) {
        const size = 1 + pending.readUInt32BE(1);
        if (pending.length < size) break;
        if (pending[0] !== 0x41) out.push(pending.subarray(0, size));
        pending = pending.subarray(size);
      }
      if (out.length > 0) client.write(Buffer.concat(out));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  const via = new URL(url);
  via.port = String((server.address() as AddressInfo).port);
  return via.toString();
}

t.test('a key revoked elsewhere while notifications are lost (PgBouncer, a lost NOTIFY): refused within a bound anyway', async (t) => {
  const url = await pgSchema(t);
  const direct = await PgKeyStore.open(url);
  t.teardown(() => direct.close());
  const alice = await direct.create({ name: 'alice' });
  const pool = pgPool(await droppingNotifications(t, url));
  t.teardown(() => pool.end());
  const registry = new KeyRegistry([], new PgKeyStore(pool));
  await registry.load();
  const quiet = { info: () => {}, warn: () => {}, error: () => {} };
  let reloads = 0;
  registry.onReload(() => reloads++);
  registry.start(quiet, 100); // ticks every 100 ms (1 s in a gateway)
  t.teardown(() => registry.stop());
  await until('the feed listens (its connect reloads once)', () => reloads > 0);
  await sleep(300);
  t.ok(registry.index.verify(alice.key), 'alice is accepted');
  await direct.revoke('alice');
  await until('the revoked key is refused', () => registry.index.verify(alice.key) === undefined, 15_000, 50);
});

t.test('migrate-to --force into a database gateways already use: they hear of it (the keys it removed are refused at once)', async (t) => {
  const url = await pgSchema(t);
  const direct = await PgKeyStore.open(url);
  t.teardown(() => direct.close());
  const old = await direct.create({ name: 'old' });
  const pool = pgPool(url);
  t.teardown(() => pool.end());
  const registry = new KeyRegistry([], new PgKeyStore(pool));
  await registry.load();
  let reloads = 0;
  registry.onReload(() => reloads++);
  registry.start({ info: () => {}, warn: () => {}, error: () => {} }); // a gateway's own tick (1 s): no safety reload for 30 s
  t.teardown(() => registry.stop());
  await until('the feed listens', () => reloads > 0);
  t.ok(registry.index.verify(old.key));
  const dir = tempDir(t);
  const path = join(dir, 'gateway.db');
  const file = KeyStore.open(path);
  const fresh = file.create({ name: 'fresh' });
  file.close();
  const run = await runCli(dir, ['db', 'migrate-to', url, '--db', path, '--force']);
  t.equal(run.code, 0, run.stderr);
  await until(
    'the key the copy removed is refused, the one it brought accepted',
    () => registry.index.verify(old.key) === undefined && registry.index.verify(fresh.key) !== undefined,
    10_000,
    50,
  );
});
