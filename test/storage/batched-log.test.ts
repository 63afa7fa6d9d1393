// The batched log destination: lines written in one turn of the event loop leave in one write, in
// order; a quiet process still writes each line on the next turn.
import { setImmediate as nextTurn } from 'node:timers/promises';
import t from 'tap';
import { BatchedLog } from '../../src/storage/batched-log.js';

function sink(): { writes: string[]; write(text: string): boolean } {
  const writes: string[] = [];
  return { writes, write: (text: string) => writes.push(text) > 0 };
}

t.test('lines of one turn leave together, in order, on the next turn', async (t) => {
  const out = sink();
  const log = new BatchedLog(out);
  for (let i = 0; i < 100; i++) log.write(`{"n":${i}}\n`);
  t.same(out.writes, [], 'nothing written synchronously');
  await nextTurn();
  t.equal(out.writes.length, 1, 'one write for 100 lines');
  t.equal(out.writes[0], Array.from({ length: 100 }, (_, i) => `{"n":${i}}\n`).join(''));
});

t.test('a line on its own is written on the next turn; later lines in a write of their own', async (t) => {
  const out = sink();
  const log = new BatchedLog(out);
  log.write('a\n');
  await nextTurn();
  t.same(out.writes, ['a\n']);
  log.write('b\n');
  log.write('c\n');
  await nextTurn();
  t.same(out.writes, ['a\n', 'b\nc\n']);
  await nextTurn();
  t.equal(out.writes.length, 2, 'no empty writes');
});

t.test('flush() writes what waits at once (process exit)', async (t) => {
  const out = sink();
  const log = new BatchedLog(out);
  log.write('last words\n');
  log.flush();
  t.same(out.writes, ['last words\n']);
  await nextTurn();
  t.same(out.writes, ['last words\n'], 'not written twice');
});
