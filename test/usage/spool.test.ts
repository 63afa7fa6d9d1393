// PostgreSQL's usage writer (usage/spool.ts): a batch PostgreSQL does not take goes to a file, and
// so does every batch after it until the files are written back, oldest first, each file removed
// only once its batch is committed. Here against a stand-in for PgUsageStore that can be "down".
import { existsSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import type { UsageColumns } from '../../src/usage/pg-usage-store.js';
import { SpoolingWriter } from '../../src/usage/spool.js';
import { tempDir, until, usageRecord } from '../helpers.js';

class FakeTable {
  down = false;
  /** request ids in the order they were committed */
  readonly rows: string[] = [];
  readonly batches = new Set<string>();
  insertBatch(rows: readonly UsageColumns[], id: string): Promise<boolean> {
    if (this.down) return Promise.reject(Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:5432'), { code: 'ECONNREFUSED' }));
    if (this.batches.has(id)) return Promise.resolve(false);
    this.batches.add(id);
    for (const r of rows) this.rows.push(r[1] as string);
    return Promise.resolve(true);
  }
  pruneBatches(): Promise<void> {
    return Promise.resolve();
  }
}

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

const records = (from: number, n: number) => Array.from({ length: n }, (_, i) => usageRecord(from + i));
const spoolFiles = (dir: string): string[] => (existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.jsonl')) : []);

t.test('PostgreSQL down: batches are spooled in order, then written back in order and the files removed', async (t) => {
  const dir = join(tempDir(t), 'spool');
  const table = new FakeTable();
  const log = quietLog();
  const writer = new SpoolingWriter({ store: table, dir, log });
  await writer.start();
  t.notOk(existsSync(dir), 'the folder is made on first use only');
  await writer.write(records(1, 3));
  t.same(table.rows, ['req-1', 'req-2', 'req-3']);
  table.down = true;
  await writer.write(records(4, 2));
  table.down = false; // back already, but a file waits: the next batch queues behind it
  await writer.write(records(6, 2));
  t.equal(spoolFiles(dir).length, 2, 'one file per batch');
  t.equal(writer.spooledRecords, 4);
  t.ok(
    log.lines.some((l) => l.startsWith('usage spool started')),
    'said so',
  );
  t.equal(writer.pendingTokens('env-1', 0, null), 12, 'spooled tokens count for budget seeds (1 + 2 each)');
  await until('spool drained', () => (writer.spooledRecords === 0 ? true : undefined), 10_000);
  t.same(table.rows, ['req-1', 'req-2', 'req-3', 'req-4', 'req-5', 'req-6', 'req-7'], 'in the order they were made');
  t.same(spoolFiles(dir), []);
  t.equal(writer.pendingTokens('env-1', 0, null), 0);
  t.equal(writer.spooledTotal, 4);
  t.equal(writer.replayedTotal, 4);
  t.ok(
    log.lines.some((l) => l.startsWith('usage spool drained')),
    'said so',
  );
  await writer.close();
});

t.test('closing while PostgreSQL is down leaves the batches spooled; the next start writes them, once', async (t) => {
  const dir = join(tempDir(t), 'spool');
  const table = new FakeTable();
  table.down = true;
  const first = new SpoolingWriter({ store: table, dir, log: quietLog() });
  await first.start();
  await first.write(records(1, 2));
  await first.write(records(3, 1));
  await first.close();
  t.equal(spoolFiles(dir).length, 2);
  // A crash between a commit and the file's removal: the batch's id is in the table already.
  const [oldest] = spoolFiles(dir).sort();
  const id = oldest!
    .replace(/\.jsonl$/, '')
    .split('-')
    .slice(2)
    .join('-');
  table.batches.add(id);
  table.rows.push('req-1', 'req-2');
  // A spooling that never finished (no final name): not a batch.
  writeFileSync(join(dir, 'x.jsonl.tmp'), '{"batch":"half"');
  // (an hour old: a young one may be another process's write in progress, left alone)
  utimesSync(join(dir, 'x.jsonl.tmp'), new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));
  table.down = false;
  const log = quietLog();
  const second = new SpoolingWriter({ store: table, dir, log });
  await second.start();
  t.equal(second.spooledRecords, 3, 'read at start');
  await until('replayed', () => (second.spooledRecords === 0 ? true : undefined), 10_000);
  t.same(table.rows, ['req-1', 'req-2', 'req-3'], 'the committed batch not written twice');
  t.same(readdirSync(dir), [], 'files removed, the half-written one too');
  t.ok(log.lines.some((l) => l.includes('already in PostgreSQL')));
  await second.close();
});

t.test('an unreadable spool file is set aside, the others are written', async (t) => {
  const dir = join(tempDir(t), 'spool');
  const table = new FakeTable();
  table.down = true;
  const first = new SpoolingWriter({ store: table, dir, log: quietLog() });
  await first.start();
  await first.write(records(1, 1));
  await first.close();
  writeFileSync(join(dir, '000000000000001-000000-broken.jsonl'), '{"batch":"broken","records":2}\n[1]\n');
  table.down = false;
  const log = quietLog();
  const second = new SpoolingWriter({ store: table, dir, log });
  await second.start();
  await until('replayed', () => (second.spooledRecords === 0 ? true : undefined), 10_000);
  t.same(table.rows, ['req-1']);
  t.same(readdirSync(dir), ['000000000000001-000000-broken.jsonl.rejected']);
  t.ok(log.lines.some((l) => l.startsWith('usage spool file cannot be written')));
  await second.close();
});

t.test('a budget seed reads while no batch commits: each record counted once, in the table or pending', async (t) => {
  const table = new FakeTable();
  let open!: () => void;
  const gate = new Promise<void>((resolve) => (open = resolve));
  const insert = table.insertBatch.bind(table);
  table.insertBatch = async (rows, id) => {
    await gate;
    return insert(rows, id);
  };
  const writer = new SpoolingWriter({ store: table, dir: join(tempDir(t), 'spool'), log: quietLog() });
  await writer.start();
  const written = writer.write(records(1, 2));
  t.equal(writer.pendingTokens('env-1', 0, null), 6, 'being written: pending');
  const order: string[] = [];
  const seed = writer.counted(async () => {
    order.push(`seed: table ${table.rows.length}, pending ${writer.pendingTokens('env-1', 0, null)}`);
    return Promise.resolve();
  });
  open();
  await Promise.all([written, seed]);
  t.same(order, ['seed: table 2, pending 0'], 'after the commit: in the table, no longer pending');
  await writer.close();
});
