// The usage recorder writes once a second, or at once when a batch reaches FLUSH_AT records (so
// heavy load never makes one long insert that stalls every request).
import { setImmediate as nextTurn } from 'node:timers/promises';
import t from 'tap';
import { FLUSH_AT, REFUSALS_STORED_PER_MINUTE, UsageRecorder } from '../../src/usage/recorder.js';
import { UsageStore } from '../../src/usage/store.js';
import { tempStore, usageRecord } from '../helpers.js';

t.test(`a batch of ${FLUSH_AT} records is written at once, the rest on the timer or at close`, async (t) => {
  const keys = tempStore(t);
  const rows = (): number => (keys.db.prepare('SELECT count(*) AS n FROM usage').get() as { n: number }).n;
  const recorder = new UsageRecorder({ store: new UsageStore(keys.db) });
  recorder.start(undefined, 60_000); // the timer will not fire during the test
  for (let i = 1; i < FLUSH_AT; i++) recorder.record(usageRecord(i));
  await nextTurn();
  t.equal(rows(), 0, 'below the batch size: waiting for the timer');
  recorder.record(usageRecord(FLUSH_AT));
  t.equal(rows(), 0, 'not on the request path itself');
  await nextTurn();
  t.equal(rows(), FLUSH_AT, 'written on the next turn');
  for (let i = 1; i <= 5; i++) recorder.record(usageRecord(FLUSH_AT + i));
  await nextTurn();
  t.equal(rows(), FLUSH_AT);
  await recorder.close();
  t.equal(rows(), FLUSH_AT + 5, 'close writes the rest');
});

t.test(`a backlog is written ${FLUSH_AT} records per turn, with the event loop free in between`, async (t) => {
  const keys = tempStore(t);
  const rows = (): number => (keys.db.prepare('SELECT count(*) AS n FROM usage').get() as { n: number }).n;
  const recorder = new UsageRecorder({ store: new UsageStore(keys.db) });
  // Records arriving before start() (or while a write is behind) pile up: 3.5 slices' worth.
  const total = Math.floor(FLUSH_AT * 3.5);
  for (let i = 1; i <= total; i++) recorder.record(usageRecord(i));
  recorder.start(undefined, 60_000);
  void recorder.flush();
  t.equal(rows(), FLUSH_AT, 'one slice now');
  const seen: number[] = [];
  for (let turn = 0; turn < 5; turn++) {
    await nextTurn();
    seen.push(rows());
  }
  t.same(seen.slice(0, 3), [2 * FLUSH_AT, 3 * FLUSH_AT, total], 'then one slice per turn');
  await recorder.close();
  t.equal(rows(), total);
});

t.test('close() writes a backlog of several slices completely', async (t) => {
  const keys = tempStore(t);
  const rows = (): number => (keys.db.prepare('SELECT count(*) AS n FROM usage').get() as { n: number }).n;
  const recorder = new UsageRecorder({ store: new UsageStore(keys.db) });
  recorder.start(undefined, 60_000);
  for (let i = 1; i <= FLUSH_AT * 4 + 7; i++) recorder.record(usageRecord(i));
  await recorder.close();
  t.equal(rows(), FLUSH_AT * 4 + 7);
});

t.test(`refusals are stored at most ${REFUSALS_STORED_PER_MINUTE} per key and minute, and all reach the listeners`, async (t) => {
  const keys = tempStore(t);
  const rows = (outcome: string): number =>
    (keys.db.prepare('SELECT count(*) AS n FROM usage WHERE outcome = ?').get(outcome) as { n: number }).n;
  const recorder = new UsageRecorder({ store: new UsageStore(keys.db) });
  let heard = 0;
  recorder.onRecord(() => heard++);
  const minute = Date.parse('2026-11-29T10:00:00Z');
  const refusal = (i: number, keyId: string, ts: number) => ({
    ...usageRecord(i),
    keyId,
    ts,
    status: 429,
    outcome: 'rejected_limit' as const,
  });
  for (let i = 0; i < 1000; i++) recorder.record(refusal(i, 'key_a', minute + i));
  for (let i = 0; i < 10; i++) recorder.record(refusal(2000 + i, 'key_b', minute + i));
  for (let i = 0; i < 5; i++) recorder.record({ ...refusal(3000 + i, 'key_a', minute + 60_000 + i) });
  for (let i = 0; i < 100; i++) recorder.record({ ...usageRecord(4000 + i), keyId: 'key_a', ts: minute + i });
  await recorder.close();
  t.equal(heard, 1115, 'metrics and limits see every record');
  t.equal(rows('rejected_limit'), REFUSALS_STORED_PER_MINUTE + 10 + 5, "key_a's minute capped, key_b's 10 and the next minute's 5 stored");
  t.equal(recorder.refusalsNotStored, 1000 - REFUSALS_STORED_PER_MINUTE);
  t.equal(rows('ok'), 100, 'answered requests are never dropped');
});
