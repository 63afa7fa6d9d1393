// The database's write-ahead log is checkpointed by a worker thread, never inside a write on the
// gateway's own thread (a disk sync there stalls every stream).
import { statSync } from 'node:fs';
import t from 'tap';
import { KeyRegistry } from '../src/lib/key-registry.js';
import { UsageStore } from '../src/lib/usage-store.js';
import type { UsageRecord } from '../src/lib/usage.js';
import { WalCheckpointer, type CheckpointResult } from '../src/lib/wal-checkpointer.js';
import { KEY_A, startGateway, tempStore, within } from './helpers.js';

const record = (i: number): UsageRecord => ({
  ts: Date.now(), requestId: `req-${i}`, keyId: 'env-1', keyName: 'env-1', route: '/v1/chat/completions', model: 'm', status: 200,
  streamed: false, promptTokens: 1, cachedTokens: null, completionTokens: 2, estimated: false, ttftMs: null, durationMs: 1,
  bytesIn: 10, bytesOut: 20, clientIp: '127.0.0.1', userAgent: null, outcome: 'ok',
});

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
  for (let b = 0; b < 30; b++) store.insert(Array.from({ length: 1000 }, (_, i) => record(b * 1000 + i)));
  const wal = `${keys.path}-wal`;
  t.ok(statSync(wal).size > 1000 * 4096, 'the log grew past the auto-checkpoint size without a checkpoint');
  const done = await within(nextCheckpoint(checkpointer, (r) => r.log > 1000), 5000, 'a checkpoint of the big log');
  t.equal(done.checkpointed, done.log, 'every frame copied back (nothing else was reading)');

  // Once a checkpoint has caught up with the writes (the worker runs while this thread writes),
  // the next write starts the log from the beginning again: it stays small.
  let restarted = false;
  for (let i = 0; i < 50 && !restarted; i++) {
    store.insert([record(-i)]);
    restarted = (await within(nextCheckpoint(checkpointer, () => true), 5000, 'a checkpoint')).log < 10;
  }
  t.ok(restarted, 'the log restarted from the beginning');
  t.ok((keys.db.prepare('SELECT count(*) AS n FROM usage').get() as { n: number }).n > 30_000, 'every record is there');
});

t.test('stop() checkpoints once more and ends the worker; a dead worker hands checkpointing back', async (t) => {
  const keys = tempStore(t);
  const checkpointer = new WalCheckpointer(keys.db, keys.path, { everyMs: 60_000 });
  const results: CheckpointResult[] = [];
  checkpointer.onCheckpoint((r) => results.push(r));
  new UsageStore(keys.db).insert([record(1), record(2)]);
  await within(checkpointer.stop(), 5000, 'stop');
  t.equal(results.length, 1, 'one last checkpoint at stop');
  t.ok(results[0]!.log > 0 && results[0]!.checkpointed === results[0]!.log);
  await checkpointer.stop(); // twice is fine
  t.equal(keys.db.pragma('wal_autocheckpoint', { simple: true }), 0, 'a stopped checkpointer leaves the setting (the connection closes next)');

  const other = tempStore(t);
  const warnings: string[] = [];
  // A path the worker cannot open (fileMustExist): it fails at once.
  const broken = new WalCheckpointer(other.db, `${other.path}.missing`, { log: { warn: (_o, msg) => warnings.push(msg) } });
  for (let i = 0; i < 100 && other.db.pragma('wal_autocheckpoint', { simple: true }) === 0; i++) await new Promise((r) => setTimeout(r, 50));
  await broken.stop();
  t.equal(other.db.pragma('wal_autocheckpoint', { simple: true }), 1000, 'the connection checkpoints by itself again');
  t.match(warnings, [/checkpoint worker failed/]);
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
