// `llm-gateway db migrate-to postgres://…` as a user runs it (dist/cli/main.js): a SQLite file's
// keys and usage rows land in PostgreSQL unchanged (usage ids kept, the id sequence after them), the
// `keys` commands then show the same thing from either database, a second run is refused without
// touching the target, --force replaces, and the URL's password is never printed.
import { join } from 'node:path';
import pg from 'pg';
import t from 'tap';
import { shownUrl } from '../../src/cli/db.js';
import { KeyStore } from '../../src/keys/key-store.js';
import { UsageStore } from '../../src/usage/store.js';
import { pgSchema } from '../cluster/harness.js';
import { runCli } from '../cluster/pg-keys-helpers.js';
import { tempDir, usageRecord } from '../helpers.js';

const USAGE_ROWS = 2345; // three batches of inserts

/** A gateway's file: two keys (one with every field), usage rows, one with a fractional ts as the gateway writes for refusals. */
function sqliteFile(dir: string): { path: string; keyIds: string[] } {
  const path = join(dir, 'gateway.db');
  const store = KeyStore.open(path);
  const alice = store.create({
    name: 'alice',
    note: 'laptop',
    expiresAt: Date.now() + 30 * 86_400_000,
    models: ['m1', 'm2'],
    origins: ['https://chat.example.com'],
    limits: { rpm: 60, tpm: 1000, tpd: null, concurrency: 2 },
    policy: { max_tokens: 256, params: { id_slot: 'allow' } },
    budgets: { day: 100_000, mode: 'soft' },
  }).record;
  const bob = store.create({ name: 'bob', enabled: false }).record;
  store.recordLastUsed(new Map([[alice.id, Date.now() - 1000]]));
  const records = Array.from({ length: USAGE_ROWS }, (_, i) => ({
    ...usageRecord(i),
    keyId: i % 2 === 0 ? alice.id : bob.id,
    keyName: i % 2 === 0 ? 'alice' : 'bob',
    ts: Date.now() - (USAGE_ROWS - i) * 1000 - 0.25, // a fraction of a millisecond, as "now - duration" gives
    cost: i % 3 === 0 ? 0.001 * i : null,
    endUser: i % 5 === 0 ? `user-${i}` : null,
  }));
  new UsageStore(store.db).insert(records);
  store.db.exec('DELETE FROM usage WHERE id = 5'); // a gap: ids are kept, not renumbered
  store.close();
  return { path, keyIds: [alice.id, bob.id] };
}

async function pgRows(url: string, sql: string): Promise<Record<string, unknown>[]> {
  const c = new pg.Client({ connectionString: url });
  c.setTypeParser(20, (v: string) => Number(v)); // BIGINT as number, as the gateway reads it
  await c.connect();
  try {
    return (await c.query(sql)).rows as Record<string, unknown>[];
  } finally {
    await c.end();
  }
}

function fileRows(path: string, sql: string): Record<string, unknown>[] {
  const store = KeyStore.open(path);
  try {
    return store.db.prepare(sql).all() as Record<string, unknown>[];
  } finally {
    store.close();
  }
}

t.test('migrate-to copies every key and usage row; then the keys commands say the same from PostgreSQL', async (t) => {
  const dir = tempDir(t);
  const { path } = sqliteFile(dir);
  const url = await pgSchema(t);

  const run = await runCli(dir, ['db', 'migrate-to', url], { GATEWAY_DB: path });
  t.equal(run.code, 0, run.stderr);
  t.equal(run.stderr, '');
  t.equal(
    run.stdout,
    [
      `✅ Copied 2 keys and ${(USAGE_ROWS - 1).toLocaleString('en-US')} usage rows from ${path} to PostgreSQL (${url}).`,
      '',
      'Next: set this for every gateway (in .env or the environment) and for these commands, then restart the gateways:',
      '',
      `    GATEWAY_DATABASE_URL=${url}`,
      '',
      `${path} is no longer used once they run on PostgreSQL; keep it as a backup.`,
      '',
    ].join('\n'),
  );

  // Keys: every column, digests included.
  t.same(await pgRows(url, 'SELECT * FROM keys ORDER BY id'), fileRows(path, 'SELECT * FROM keys ORDER BY id'), 'the same key rows');
  // Usage: every column, ids kept; ts to the millisecond.
  const fromFile = fileRows(path, 'SELECT * FROM usage ORDER BY id').map((r) => ({ ...r, ts: Math.round(r.ts as number) }));
  const inPg = await pgRows(url, 'SELECT * FROM usage ORDER BY id');
  t.equal(inPg.length, USAGE_ROWS - 1);
  t.same(inPg, fromFile, 'the same usage rows, ids and all');
  const next = await pgRows(
    url,
    "INSERT INTO usage (ts, request_id, route, status, streamed, duration_ms, bytes_in, bytes_out, outcome) VALUES (1, 'new', '/x', 200, 0, 1, 0, 0, 'ok') RETURNING id",
  );
  t.same(next, [{ id: USAGE_ROWS + 1 }], 'the next usage id follows the copied ones');
  await pgRows(url, "DELETE FROM usage WHERE request_id = 'new'");

  // The same commands, the same answers, from either database.
  for (const args of [
    ['keys', 'list'],
    ['keys', 'list', '--json'],
    ['keys', 'show', 'alice'],
    ['keys', 'show', 'bob', '--json'],
  ]) {
    const onFile = await runCli(dir, args, { GATEWAY_DB: path });
    const onPg = await runCli(dir, args, { GATEWAY_DATABASE_URL: url });
    t.equal(onFile.code, 0, onFile.stderr);
    t.same(onPg, onFile, `llm-gateway ${args.join(' ')}: the same output`);
  }
  const usageFile = await runCli(dir, ['usage', '--by', 'key'], { GATEWAY_DB: path });
  const usagePg = await runCli(dir, ['usage', '--by', 'key'], { GATEWAY_DATABASE_URL: url });
  t.same(usagePg, usageFile, 'llm-gateway usage --by key: the same report');

  // Again: refused, and the target is left as it was.
  const again = await runCli(dir, ['db', 'migrate-to', url], { GATEWAY_DB: path });
  t.same(again, {
    code: 1,
    stdout: '',
    stderr: `llm-gateway: the target database already holds 2 keys and ${USAGE_ROWS - 1} usage rows; nothing was copied. Point at an empty database, or run again with --force to empty it first (what it holds is lost).\n`,
  });
  t.equal((await pgRows(url, 'SELECT count(*)::int AS n FROM usage'))[0]!.n, USAGE_ROWS - 1);

  // --force: emptied, then copied.
  await pgRows(url, "UPDATE keys SET note = 'changed in PostgreSQL'");
  const forced = await runCli(dir, ['db', 'migrate-to', url, '--force', '--json'], { GATEWAY_DB: path });
  t.equal(forced.code, 0, forced.stderr);
  t.same(JSON.parse(forced.stdout), { source: path, target: url, keys: 2, usage: USAGE_ROWS - 1 });
  t.same(await pgRows(url, 'SELECT * FROM keys ORDER BY id'), fileRows(path, 'SELECT * FROM keys ORDER BY id'), 'replaced by the file');
});

t.test('the password in the URL is never printed; wrong calls say what is wrong', async (t) => {
  const dir = tempDir(t);
  const { path } = sqliteFile(dir);
  const url = new URL(await pgSchema(t));
  url.password = 'sekret-pw'; // trust auth: accepted, and must not be shown
  const run = await runCli(dir, ['db', 'migrate-to', url.toString(), '--db', path]);
  t.equal(run.code, 0, run.stderr);
  t.notMatch(run.stdout + run.stderr, /sekret-pw/);
  t.match(
    run.stdout,
    /\n {4}GATEWAY_DATABASE_URL=postgres:\/\/postgres:\*\*\*\*@127\.0\.0\.1:5432\/test\?\S+ {3}\(with your password in place of \*\*\*\*\)\n/,
  );
  t.equal(shownUrl('postgres://u:p%40ss@db.example:5432/gw'), 'postgres://u:****@db.example:5432/gw');

  const none = await runCli(dir, ['db', 'migrate-to'], { GATEWAY_DB: path });
  t.equal(none.code, 2);
  t.match(none.stderr, /^llm-gateway: "db migrate-to" needs the PostgreSQL URL/);
  const wrong = await runCli(dir, ['db', 'migrate-to', 'mysql://root:sekret-pw@h/db'], { GATEWAY_DB: path });
  t.same(wrong, {
    code: 2,
    stdout: '',
    stderr: 'llm-gateway: the URL must be a postgres:// or postgresql:// URL, got protocol "mysql:"\nTry: llm-gateway db --help\n',
  });
  const missing = await runCli(dir, ['db', 'migrate-to', url.toString()], { GATEWAY_DB: join(dir, 'nothing.db') });
  t.same(missing, {
    code: 1,
    stdout: '',
    stderr: `llm-gateway: no database file at ${join(dir, 'nothing.db')} (GATEWAY_DB or --db): nothing to copy\n`,
  });
  const unreachable = await runCli(dir, ['db', 'migrate-to', 'postgres://u:sekret-pw@127.0.0.1:1/db'], { GATEWAY_DB: path });
  t.equal(unreachable.code, 1);
  t.match(unreachable.stderr, /^llm-gateway: the target database cannot be reached: connection refused/);
  t.notMatch(unreachable.stderr, /sekret-pw|127\.0\.0\.1/);
  const help = await runCli(dir, ['db', '--help']);
  t.match(help.stdout, /^Usage: llm-gateway db migrate-to URL \[options\]\n/);
  const top = await runCli(dir, ['--help']);
  t.match(top.stdout, /\n {2}db +copy the key database file to PostgreSQL \(db migrate-to postgres:\/\/…\) \(llm-gateway db --help\)\n/);
});
