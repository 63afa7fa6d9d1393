// The database's write-ahead log is checkpointed by a worker thread, never inside a write on the
// gateway's own thread (a disk sync there stalls every stream).
import { statSync, symlinkSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import t from 'tap';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { UsageStore } from '../../src/usage/store.js';
import { WalCheckpointer, type CheckpointResult } from '../../src/storage/wal-checkpointer.js';
import { KEY_A, sleep, startGateway, tempStore, until, usageRecord, within } from '../helpers.js';

function nextCheckpoint(c: WalCheckpointer, matching: (r: CheckpointResult) => boolean): Promise<CheckpointResult> {
  return new Promise((resolve) => c.onCheckpoint((r) => matching(r) && resolve(r)));
}

t.test('the connection stops auto-checkpointing; the worker copies the log back into the file', async (t) => {
  const keys = tempStore(t);
  const autoPages = (): number => keys.db.pragma('wal_autocheckpoint', { simple: true }) as number;
  t.equal(autoPages(), 1000, 'SQLite default before');
  const checkpointer = new WalCheckpointer(keys.db, keys.path, { everyMs: 20 });
  t.teardown(() => checkpointer.stop());
  t.equal(autoPages(), 0, 'this connection no longer checkpoints inside its commits');

  const store = new UsageStore(keys.db);
  // Over 1,000 pages of log: the point where the connection used to checkpoint by itself.
  for (let b = 0; b < 30; b++) store.insert(Array.from({ length: 1000 }, (_, i) => usageRecord(b * 1000 + i)));
  const wal = `${keys.path}-wal`;
  t.ok(statSync(wal).size > 1000 * 4096, 'the log grew past the auto-checkpoint size without a checkpoint');
  const done = await within(
    nextCheckpoint(checkpointer, (r) => r.log > 1000),
    5000,
    'a checkpoint of the big log',
  );
  t.equal(done.checkpointed, done.log, 'every frame copied back (nothing else was reading)');

  // Once a checkpoint has caught up with the writes (the worker runs while this thread writes),
  // the next write starts the log from the beginning again: it stays small.
  let restarted = false;
  for (let i = 0; i < 50 && !restarted; i++) {
    store.insert([usageRecord(-i)]);
    restarted =
      (
        await within(
          nextCheckpoint(checkpointer, () => true),
          5000,
          'a checkpoint',
        )
      ).log < 10;
  }
  t.ok(restarted, 'the log restarted from the beginning');
  t.ok((keys.db.prepare('SELECT count(*) AS n FROM usage').get() as { n: number }).n > 30_000, 'every record is there');
});

t.test('stop() checkpoints once more and ends the worker; a dead worker hands checkpointing back', async (t) => {
  const keys = tempStore(t);
  const checkpointer = new WalCheckpointer(keys.db, keys.path, { everyMs: 60_000 });
  const results: CheckpointResult[] = [];
  checkpointer.onCheckpoint((r) => results.push(r));
  new UsageStore(keys.db).insert([usageRecord(1), usageRecord(2)]);
  await within(checkpointer.stop(), 5000, 'stop');
  t.equal(results.length, 1, 'one last checkpoint at stop');
  t.ok(results[0]!.log > 0 && results[0]!.checkpointed === results[0]!.log);
  await checkpointer.stop(); // twice is fine
  t.equal(
    keys.db.pragma('wal_autocheckpoint', { simple: true }),
    0,
    'a stopped checkpointer leaves the setting (the connection closes next)',
  );

  const other = tempStore(t);
  const warnings: string[] = [];
  // A path the worker cannot open (fileMustExist): it fails at once.
  const broken = new WalCheckpointer(other.db, `${other.path}.missing`, { log: { warn: (_o, msg) => warnings.push(msg) } });
  for (let i = 0; i < 100 && other.db.pragma('wal_autocheckpoint', { simple: true }) === 0; i++)
    await new Promise((r) => setTimeout(r, 50));
  await broken.stop();
  t.equal(other.db.pragma('wal_autocheckpoint', { simple: true }), 1000, 'the connection checkpoints by itself again');
  t.match(warnings, [/checkpoint worker failed/]);
});

/** A worker factory whose first `failures` calls throw, as `new Worker` does when the process is out of file descriptors. */
function failingFirst(failures: number): {
  calls: () => number;
  startWorker: (source: string, options: ConstructorParameters<typeof Worker>[1]) => Worker;
} {
  let calls = 0;
  return {
    calls: () => calls,
    startWorker: (source, options) => {
      calls++;
      if (calls <= failures) throw Object.assign(new Error('EMFILE: too many open files'), { code: 'EMFILE' });
      return new Worker(source, options);
    },
  };
}

t.test('a worker that fails to start is retried with backoff, logged each time; then it takes over again', async (t) => {
  const keys = tempStore(t);
  const autoPages = (): number => keys.db.pragma('wal_autocheckpoint', { simple: true }) as number;
  const warnings: { obj: Record<string, unknown>; msg: string }[] = [];
  const infos: string[] = [];
  const factory = failingFirst(3);
  const checkpointer = new WalCheckpointer(keys.db, keys.path, {
    everyMs: 20,
    retryMs: 30,
    maxRetryMs: 70,
    log: { warn: (obj, msg) => warnings.push({ obj: obj as Record<string, unknown>, msg }), info: (_obj, msg) => infos.push(msg) },
    startWorker: factory.startWorker,
  });
  t.teardown(() => checkpointer.stop());
  t.equal(factory.calls(), 1, 'the first start failed');
  t.equal(autoPages(), 1000, 'meanwhile the connection checkpoints itself');

  await until('the fourth start', () => factory.calls() === 4);
  await until('the worker takes over', () => autoPages() === 0);
  t.same(
    warnings.map((w) => [w.msg, w.obj.attempt, w.obj.retryInMs, (w.obj.err as { message: string }).message]),
    [
      [
        'WAL checkpoint worker failed; the database connection checkpoints itself until a new worker runs',
        1,
        30,
        'EMFILE: too many open files',
      ],
      [
        'WAL checkpoint worker failed; the database connection checkpoints itself until a new worker runs',
        2,
        60,
        'EMFILE: too many open files',
      ],
      [
        'WAL checkpoint worker failed; the database connection checkpoints itself until a new worker runs',
        3,
        70,
        'EMFILE: too many open files',
      ],
    ],
    'each failure logged with its attempt and the next delay (doubling, capped)',
  );

  // Checkpoints resume: records written now are copied back by the new worker.
  const store = new UsageStore(keys.db);
  const next = nextCheckpoint(checkpointer, (r) => r.log > 0);
  store.insert(Array.from({ length: 100 }, (_, i) => usageRecord(i)));
  const done = await within(next, 5000, 'a checkpoint by the new worker');
  t.equal(done.checkpointed, done.log, 'every frame copied back');
  t.match(infos, ['WAL checkpoint worker running again after 3 failed starts']);
});

t.test('a path the worker cannot open yet: retried until it can, then checkpoints resume', async (t) => {
  const keys = tempStore(t);
  const autoPages = (): number => keys.db.pragma('wal_autocheckpoint', { simple: true }) as number;
  const later = `${keys.path}.later`; // fileMustExist: the worker fails until this link exists
  const warnings: number[] = [];
  const checkpointer = new WalCheckpointer(keys.db, later, {
    everyMs: 20,
    retryMs: 30,
    maxRetryMs: 60,
    log: { warn: (o) => warnings.push((o as { attempt: number }).attempt) },
  });
  t.teardown(() => checkpointer.stop());
  await until('two failed starts', () => warnings.length >= 2);
  t.equal(autoPages(), 1000, 'meanwhile the connection checkpoints itself');
  symlinkSync(keys.path, later);
  await until('the worker takes over', () => autoPages() === 0);
  const next = nextCheckpoint(checkpointer, (r) => r.log > 0);
  new UsageStore(keys.db).insert([usageRecord(1)]);
  const done = await within(next, 5000, 'a checkpoint');
  t.equal(done.checkpointed, done.log);
  t.same(
    warnings,
    warnings.map((_, i) => i + 1),
    'attempts counted 1, 2, …',
  );
});

t.test('stop() during a backoff: no timer left, no new worker', async (t) => {
  const keys = tempStore(t);
  const factory = failingFirst(Infinity);
  const checkpointer = new WalCheckpointer(keys.db, keys.path, { retryMs: 40, log: { warn: () => {} }, startWorker: factory.startWorker });
  t.equal(factory.calls(), 1);
  await within(checkpointer.stop(), 1000, 'stop');
  await sleep(150);
  t.equal(factory.calls(), 1, 'no retry after stop');
  t.equal(keys.db.pragma('wal_autocheckpoint', { simple: true }), 1000, 'the connection still checkpoints itself');
});

t.test('the gateway runs one for its key database and stops it on close', async (t) => {
  const keys = tempStore(t);
  const gw = await startGateway(t, {}, {}, { registry: new KeyRegistry([KEY_A], keys) });
  t.ok(gw.app.checkpointer, 'started with the app');
  t.equal(keys.db.pragma('wal_autocheckpoint', { simple: true }), 0);
  const res = await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${KEY_A}` } });
  t.equal(res.status, 200);
  await res.text();
});
