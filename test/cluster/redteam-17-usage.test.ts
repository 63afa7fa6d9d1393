// Red team, issue 17 (usage on PostgreSQL): values SQLite takes but PostgreSQL refuses must not
// cost the other records of their batch. A key holder controls a record's `model` (the body's
// string, kept verbatim when the request is refused before reaching llama-server), and a NUL in it
// made PostgreSQL refuse the whole batch (22021): up to 250 records of every key set aside.
import { existsSync, mkdirSync, readFileSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { migratePg, pgPool } from '../../src/storage/pg.js';
import { PgUsageStore, type UsageColumns } from '../../src/usage/pg-usage-store.js';
import { SpoolingWriter } from '../../src/usage/spool.js';
import { startFakeLlama } from '../fixtures/fake-llama.js';
import { KEY_A, tempDir, until, usageRecord, within } from '../helpers.js';
import { pgSchema, startGatewayProcess } from './harness.js';

function quietLog(): {
  lines: string[];
  info: (o: object, m: string) => void;
  warn: (o: object, m: string) => void;
  error: (o: object, m: string) => void;
} {
  const lines: string[] = [];
  const push = (_: object, m: string): void => {
    lines.push(m);
  };
  return { lines, info: push, warn: push, error: push };
}

const files = (dir: string, ext: string): string[] => (existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith(ext)) : []);

t.test("a NUL byte in one record's model (a key holder's body) does not keep its batch out of PostgreSQL", async (t) => {
  const url = await pgSchema(t);
  const pool = pgPool(url, { max: 2 });
  t.teardown(() => pool.end());
  await migratePg(pool);
  const store = new PgUsageStore(pool);
  const dir = join(tempDir(t), 'spool');
  const log = quietLog();
  const writer = new SpoolingWriter({ store, dir, log });
  await writer.start();
  t.teardown(() => writer.close());
  const batch = [1, 2, 3, 4, 5].map((i) => usageRecord(i));
  batch[2]!.model = 'evil\u0000model';
  batch[3]!.userAgent = 'ua\u0000';
  batch[4]!.endUser = 'u\u0000'; // end users are cleaned before this; the store must not rely on it
  await writer.write(batch);
  await until('nothing waits', () => (writer.spooledRecords === 0 ? true : undefined), 10_000);
  const rows = (await pool.query<{ request_id: string; model: string }>('SELECT request_id, model FROM usage ORDER BY request_id')).rows;
  t.same(
    rows.map((r) => r.request_id),
    ['req-1', 'req-2', 'req-3', 'req-4', 'req-5'],
    'every record of the batch is in the table',
  );
  t.notOk(rows[2]!.model.includes('\u0000'), 'without the NUL');
  t.equal(writer.rejectedTotal, 0, 'nothing set aside');
  t.same(files(dir, '.rejected'), []);
});

t.test('token counts PostgreSQL BIGINT refuses (a fraction, beyond its range) do not cost the batch', async (t) => {
  const url = await pgSchema(t);
  const pool = pgPool(url, { max: 2 });
  t.teardown(() => pool.end());
  await migratePg(pool);
  const store = new PgUsageStore(pool);
  const dir = join(tempDir(t), 'spool');
  const writer = new SpoolingWriter({ store, dir, log: quietLog() });
  await writer.start();
  t.teardown(() => writer.close());
  const batch = [1, 2, 3].map((i) => usageRecord(i));
  batch[0]!.promptTokens = 12.5; // an upstream's usage object: finite, not an integer
  batch[1]!.completionTokens = 1e30;
  await writer.write(batch);
  await until('nothing waits', () => (writer.spooledRecords === 0 ? true : undefined), 10_000);
  const n = (await pool.query<{ n: number }>('SELECT count(*)::bigint AS n FROM usage')).rows[0]!.n;
  t.equal(n, 3, 'every record of the batch is in the table');
  t.equal(writer.rejectedTotal, 0);
});

t.test('a record PostgreSQL refuses for a reason not foreseen: the others of its batch are written, it alone is kept aside', async (t) => {
  const committed: string[] = [];
  const ids = new Set<string>();
  const store = {
    insertBatch(rows: readonly UsageColumns[], id: string): Promise<boolean> {
      if (rows.some((r) => r[1] === 'req-bad')) return Promise.reject(Object.assign(new Error('value out of range'), { code: '22003' }));
      if (ids.has(id)) return Promise.resolve(false);
      ids.add(id);
      for (const r of rows) committed.push(r[1] as string);
      return Promise.resolve(true);
    },
    pruneBatches: () => Promise.resolve(),
  };
  const dir = join(tempDir(t), 'spool');
  const writer = new SpoolingWriter({ store, dir, log: quietLog() });
  await writer.start();
  t.teardown(() => writer.close());
  const batch = [1, 2, 3].map((i) => usageRecord(i));
  batch[1]!.requestId = 'req-bad';
  await writer.write(batch);
  await writer.write([usageRecord(4)]);
  await until('nothing waits', () => (writer.spooledRecords === 0 ? true : undefined), 10_000);
  t.same(committed, ['req-1', 'req-3', 'req-4'], 'the good records, in order');
  t.equal(writer.rejectedTotal, 1);
  const aside = files(dir, '.rejected');
  t.equal(aside.length, 1);
  const text = readFileSync(join(dir, aside[0]!), 'utf8');
  t.match(text, /req-bad/);
  t.notMatch(text, /req-1"|req-3"/, 'only the refused record is kept aside');
  t.same(files(dir, '.jsonl'), []);
});

t.test(
  "a gateway starting on a spool folder another process uses (PM2 cluster: one ./data/usage-spool) leaves that process's file being written alone",
  async (t) => {
    const dir = join(tempDir(t), 'spool');
    mkdirSync(dir, { recursive: true });
    // Another gateway process is between open(.tmp) and rename(): its batch is only in this file.
    const tmp = join(dir, `${String(Date.now()).padStart(15, '0')}-000000-0b7c.jsonl.tmp`);
    writeFileSync(tmp, '{"batch":"0b7c","records":1}\n');
    const store = { insertBatch: () => Promise.resolve(true), pruneBatches: () => Promise.resolve() };
    const writer = new SpoolingWriter({ store, dir, log: quietLog() });
    await writer.start();
    t.teardown(() => writer.close());
    t.ok(existsSync(tmp), "the other process's file is still there for its rename");
    // One a crashed run left long ago is removed.
    const old = join(dir, '000000000000001-000000-dead.jsonl.tmp');
    writeFileSync(old, '{"batch":"dead","records":1}\n');
    const then = new Date(Date.now() - 3_600_000);
    utimesSync(old, then, then);
    const again = new SpoolingWriter({ store, dir, log: quietLog() });
    await again.start();
    t.teardown(() => again.close());
    t.notOk(existsSync(old), 'an old unfinished file is removed');
  },
);

t.test("end to end: a key holder's request naming a model with a NUL reaches the usage batch; no other row is lost", async (t) => {
  const url = await pgSchema(t);
  const fake = await startFakeLlama();
  t.teardown(() => fake.close());
  const dir = tempDir(t);
  const gw = await startGatewayProcess(t, 0, {
    LLM_API_KEYS: KEY_A,
    LLM_UPSTREAM: fake.url,
    GATEWAY_DATABASE_URL: url,
    GATEWAY_DB: join(dir, 'gateway.db'),
    GATEWAY_USAGE_SPOOL: join(dir, 'spool'),
  });
  const post = (model: string): Promise<number> =>
    fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY_A}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
    }).then(async (r) => {
      await r.arrayBuffer();
      return r.status;
    });
  // Sent together: one flush, one batch, the bad record among the good ones.
  await Promise.all([post('m'), post('m'), post('evil\u0000'), post('m'), post('m')]);
  const pool = pgPool(url, { max: 1 });
  t.teardown(() => pool.end());
  const n = async (): Promise<number> =>
    (await pool.query<{ n: number }>('SELECT count(*)::bigint AS n FROM usage').catch(() => ({ rows: [{ n: -1 }] }))).rows[0]!.n;
  await until('five rows in PostgreSQL', async () => ((await n()) === 5 ? true : undefined), 10_000);
  const models = (await pool.query<{ model: string }>('SELECT model FROM usage')).rows.map((r) => r.model);
  t.ok(
    models.some((m) => m.startsWith('evil')),
    "the body's model reached the record (it is the client's string): " + JSON.stringify(models),
  );
  t.same(files(join(dir, 'spool'), '.rejected'), [], 'nothing set aside');
});

t.test(
  'shutdown while PostgreSQL hangs on a batch: the batch goes to the spool soon, not after the query timeout (PM2 kills)',
  async (t) => {
    let hung = 0;
    const store = {
      insertBatch: (): Promise<boolean> => {
        hung++;
        return new Promise<boolean>(() => {}); // a PostgreSQL that accepted the query and never answers
      },
      pruneBatches: () => Promise.resolve(),
    };
    const dir = join(tempDir(t), 'spool');
    const writer = new SpoolingWriter({ store, dir, log: quietLog() });
    await writer.start();
    const written = writer.write([usageRecord(1), usageRecord(2)]);
    await until('insert in flight', () => hung === 1);
    await within(writer.close(), 8000, 'close');
    await within(written, 1000, 'the write');
    t.equal(files(dir, '.jsonl').length, 1, 'the batch is on disk for the next run (its id: written once even if the insert commits late)');
    t.equal(writer.spooledRecords, 2);
  },
);
