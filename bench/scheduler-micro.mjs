// Micro-benchmark of the admission fast path (issue 14): enter + release when a slot is free and
// nothing waits, FairQueue (one pool of slots) against Scheduler (one server; and two, for scale).
// After `npm run build`: `node bench/scheduler-micro.mjs [--dist DIR] [--n 1000000] [--runs 5]`.
// Each run times N enter+release pairs in the process's CPU time (user + system: steadier than the
// wall clock on a shared machine); the runs alternate between the queues (after one warm-up run
// each) and the median per pair is printed. A guard checks that every ticket was immediate.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values } = parseArgs({
  options: { dist: { type: 'string' }, n: { type: 'string', default: '1000000' }, runs: { type: 'string', default: '5' } },
});
const dist = resolve(values.dist ?? join(dirname(fileURLToPath(import.meta.url)), '..', 'dist'));
const N = Number(values.n);
const RUNS = Number(values.runs);
const { FairQueue } = await import(pathToFileURL(join(dist, 'admission', 'fair-queue.js')).href);
const { Scheduler } = await import(pathToFileURL(join(dist, 'admission', 'scheduler.js')).href);

const OPTS = { maxQueue: 1000, maxQueuePerKey: 100, timeoutMs: 60_000, keySlots: 'auto' };
const KEYS = ['key-a', 'key-b', 'key-c'];

/** CPU nanoseconds since `start` (a process.cpuUsage() reading), per pair. */
const perPair = (start) => {
  const { user, system } = process.cpuUsage(start);
  return ((user + system) * 1000) / N;
};

function fairQueue() {
  const q = new FairQueue({ ...OPTS, maxInflight: 4 });
  let immediate = 0;
  const t0 = process.cpuUsage();
  for (let i = 0; i < N; i++) {
    const ticket = q.enter(KEYS[i % 3]);
    if (ticket.immediate) immediate++;
    ticket.cancel();
  }
  const ns = perPair(t0);
  if (immediate !== N || q.running !== 0) throw new Error('FairQueue: not every ticket took the fast path');
  return ns;
}

function scheduler(servers) {
  const s = new Scheduler(OPTS);
  let immediate = 0;
  const t0 = process.cpuUsage();
  for (let i = 0; i < N; i++) {
    const ticket = s.enter(KEYS[i % 3], 'model', servers);
    if (ticket.immediate) immediate++;
    ticket.cancel();
  }
  const ns = perPair(t0);
  if (immediate !== N || s.running !== 0) throw new Error('Scheduler: not every ticket took the fast path');
  return ns;
}

const server = (index) => ({ index, slots: 4, state: 'ready', weight: 1 });
const one = [server(0)];
const two = [server(0), server(1)];
const cases = [
  ['FairQueue', () => fairQueue()],
  ['Scheduler, 1 server', () => scheduler(one)],
  ['Scheduler, 2 servers', () => scheduler(two)],
];
const times = cases.map(() => []);
for (const [, run] of cases) run(); // warm-up
for (let r = 0; r < RUNS; r++) cases.forEach(([, run], i) => times[i].push(run()));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(`enter + release on the fast path, ${N} pairs, median of ${RUNS} (node ${process.version})`);
for (const [i, [name]] of cases.entries())
  console.log(
    `${name.padEnd(22)} ${median(times[i]).toFixed(1).padStart(7)} ns CPU/pair (min ${Math.min(...times[i]).toFixed(1)})   runs: ${times[i].map((t) => t.toFixed(1)).join(' ')}`,
  );
