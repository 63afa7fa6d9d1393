// The Scheduler (issue 14): FairQueue's rules per model over several llama-servers. Plain objects
// stand for the servers; the test changes their slots and state as /props and /health would.
import t, { type Test } from 'tap';
import { QueueFull, QueueLeft, QueueTimeout, TooManyTasks } from '../../src/admission/fair-queue.js';
import { Scheduler, type Admission, type SchedulerOptions, type SlotState, type Ticket } from '../../src/admission/scheduler.js';

// Not test/helpers.js: that one builds the whole gateway; this file needs only the scheduler.
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Waits (polling) until `check` holds; fails saying what did not happen after `ms`. */
async function until(what: string, check: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(2);
  }
}

/** `p`, or a failure saying what did not happen within `ms` (a safety net, not a timed assertion). */
function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

interface Server {
  index: number;
  slots: number;
  state: SlotState;
  weight: number;
}

const server = (index: number, slots = 2, state: SlotState = 'ready', weight = 1): Server => ({ index, slots, state, weight });

/**
 * A scheduler whose tickets are all cancelled when the test ends (waiters leave, slots are given
 * back), so that no deadline or preferMs timer outlives its test.
 */
function scheduler(t: Test, more: Partial<SchedulerOptions> = {}): Scheduler {
  const q = new Scheduler({ maxQueue: 100, maxQueuePerKey: 100, timeoutMs: 10_000, keySlots: 'all', ...more });
  const tickets: Ticket[] = [];
  const enter = q.enter.bind(q);
  q.enter = (...args) => {
    const ticket = enter(...args);
    ticket.admitted.catch(() => {}); // refusals are asserted where they matter
    tickets.push(ticket);
    return ticket;
  };
  t.teardown(() => {
    for (const ticket of tickets) ticket.cancel();
    q.close();
  });
  return q;
}

/** Lets promise callbacks (admissions, refusals) run. */
const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

/** Records, in order, the name of each ticket as it is admitted, with the server's index. */
function recorder() {
  const order: string[] = [];
  const admissions = new Map<string, Admission>();
  const errors = new Map<string, Error>();
  return {
    order,
    errors,
    watch(name: string, ticket: Ticket): Ticket {
      ticket.admitted.then(
        (a) => {
          order.push(`${name}@${a.server.index}`);
          admissions.set(name, a);
        },
        (err: Error) => errors.set(name, err),
      );
      return ticket;
    },
    /** releases the admission of `name` (it must have been admitted) */
    release(name: string): void {
      const a = admissions.get(name);
      if (a === undefined) throw new Error(`${name} was not admitted`);
      a.release();
    },
  };
}

function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (err) {
    return err;
  }
  return undefined;
}

t.test('one server: the fast path, the key share, fewest running first, then round robin', async (t) => {
  const s0 = server(0, 2);
  const q = scheduler(t, { keySlots: 'auto' }); // 2 slots: a key holds 1
  const r = recorder();
  const a1 = q.enter('a', 'm', [s0]);
  t.equal(a1.immediate, true);
  t.equal(a1.started, true);
  t.equal(a1.server, s0);
  t.same(await a1.admitted, { server: s0, release: a1.cancel }, 'admitted is already resolved, with the server');
  const a2 = r.watch('a2', q.enter('a', 'm', [s0]));
  t.equal(a2.immediate, false, 'a slot is free, but a holds its share: a2 waits');
  t.equal(a2.started, false);
  t.equal(a2.server, undefined);
  const b1 = q.enter('b', 'm', [s0]);
  t.equal(b1.immediate, true, 'b is not stuck behind a’s waiter: it takes the free slot at once');
  t.equal(q.running, 2);
  t.equal(q.runningOn(s0), 2);
  r.watch('b2', q.enter('b', 'm', [s0]));
  r.watch('c1', q.enter('c', 'm', [s0]));
  t.equal(q.waiting, 3);
  b1.cancel(); // b's request finished: the slot goes to c (nothing running), never to a (at its share)
  b1.cancel(); // twice: nothing more is given back
  await settle();
  t.same(r.order, ['c1@0']);
  t.equal(q.running, 2);
  a1.cancel();
  await settle();
  t.same(r.order, ['c1@0', 'a2@0'], 'a runs nothing now, b one just finished (a’s waiter came first)');
  t.equal(a2.started, true);
  t.equal(a2.server, s0);
  r.release('c1');
  await settle();
  t.same(r.order, ['c1@0', 'a2@0', 'b2@0']);
  r.release('a2');
  r.release('b2');
  t.equal(q.running, 0);
  t.equal(q.waiting, 0);

  // Round robin: with one slot, keys take turns; a key that was served last goes after the others.
  const one = server(1, 1);
  const rr = recorder();
  const first = q.enter('a', 'n', [one]);
  for (const name of ['a1', 'a2', 'b1', 'b2', 'c1']) rr.watch(name, q.enter(name[0]!, 'n', [one]));
  first.cancel();
  for (let i = 0; i < 5; i++) {
    await until(`admission ${i + 1}`, () => rr.order.length === i + 1);
    rr.release(rr.order[i]!.split('@')[0]!);
  }
  t.same(
    rr.order.map((x) => x.split('@')[0]),
    ['b1', 'c1', 'a1', 'b2', 'a2'],
    'a was just served: b, then c, then a; one key’s requests keep their order',
  );
});

t.test('bounds: QueueFull per key (every model counted) and overall; TooManyTasks at once', async (t) => {
  const s0 = server(0, 1);
  const s1 = server(1, 1);
  const q = scheduler(t, { maxQueue: 3, maxQueuePerKey: 2 });
  q.enter('x', 'chat', [s0]);
  q.enter('x', 'embed', [s1]);
  const waiters = [q.enter('a', 'chat', [s0]), q.enter('a', 'embed', [s1])];
  for (const w of waiters) w.admitted.catch(() => {});
  const perKey = thrown(() => q.enter('a', 'chat', [s0]));
  t.ok(perKey instanceof QueueFull && perKey.scope === 'key', 'a waits with 2 (one per model): its third is refused');
  t.equal(q.waitingFor('a'), 2);
  waiters.push(q.enter('b', 'chat', [s0]));
  waiters.at(-1)!.admitted.catch(() => {});
  const all = thrown(() => q.enter('c', 'embed', [s1]));
  t.ok(all instanceof QueueFull && all.scope === 'all', 'the overall bound');
  for (const w of waiters) w.cancel();
  t.equal(q.waiting, 0);

  // A request's tasks run on ONE server, within the key's share of the model's slots.
  const big = [server(2, 4), server(3, 4)];
  const auto = scheduler(t, { keySlots: 'auto' });
  t.throws(() => auto.enter('a', 'm', big, 5), new TooManyTasks(5, 4), 'share 7 of 8, but no server has 5 slots');
  t.throws(() => auto.enter('a', 'm', [server(4, 4)], 4), new TooManyTasks(4, 3), 'one server of 4: a key runs at most 3');
  t.equal(auto.waiting, 0, 'never queued');
  const four = auto.enter('a', 'm', big, 4);
  t.equal(four.immediate, true, '4 tasks fit on one idle server of 4');
  t.equal(auto.runningOn(four.server!), 4);
  const three = auto.enter('a', 'm', big, 3);
  t.equal(three.immediate, true, 'and 3 more on the other: the key holds 7 of 8');
  t.not(three.server, four.server);
  const more = auto.enter('a', 'm', big, 1);
  t.equal(more.immediate, false, 'at its share of 7, with a slot free');
  t.equal(auto.enter('b', 'm', big).immediate, true, 'that slot is another key’s');
  more.admitted.catch(() => {});
  more.cancel();
  t.throws(() => scheduler(t).enter('a', 'm', []), RangeError, 'no candidate: a wiring bug');
});

t.test('the deadline, leaving while waiting and after admission', async (t) => {
  const s0 = server(0, 1);
  const q = scheduler(t, { timeoutMs: 30 });
  const first = q.enter('a', 'm', [s0]);
  const late = q.enter('b', 'm', [s0]);
  await t.rejects(late.admitted, new QueueTimeout(), 'the deadline');
  t.equal(q.waiting, 0, 'a timed-out waiter leaves the queue');
  t.equal(q.waitingFor('b'), 0);
  late.cancel(); // after the deadline: nothing to leave, nothing to give back
  t.equal(q.running, 1);

  const slow = scheduler(t);
  const held = slow.enter('a', 'm', [s0]);
  const left = slow.enter('b', 'm', [s0]);
  const next = slow.enter('c', 'm', [s0]);
  left.cancel();
  await t.rejects(left.admitted, new QueueLeft());
  t.equal(left.started, false, 'never let run');
  t.equal(slow.waiting, 1);
  held.cancel(); // it finished: its slot goes to c
  const admission = await within(next.admitted, 1000, 'c runs');
  t.equal(admission.server, s0);
  t.equal(next.started, true);
  t.equal(slow.runningOn(s0), 1);
  next.cancel(); // after admission, cancel gives the slot back
  t.equal(slow.runningOn(s0), 0);
  admission.release(); // the same function: nothing more is given back
  next.cancel();
  t.equal(slow.running, 0);
  first.cancel();
  t.equal(q.running, 0);
});

t.test('hold: released slots stay busy for a while; close() ends the holds', async (t) => {
  const s0 = server(0, 1);
  const q = scheduler(t);
  const a = q.enter('a', 'm', [s0]);
  const b = q.enter('b', 'm', [s0]);
  q.hold(a.cancel, 30);
  t.equal(q.holding, 1);
  t.equal(q.running, 1, 'the held slot still counts');
  t.equal(b.started, false);
  await within(b.admitted, 2000, 'b runs once the hold ends');
  t.equal(q.holding, 0);
  t.equal(q.runningOn(s0), 1);
  q.hold(b.cancel, 60_000);
  q.close();
  t.equal(q.holding, 0);
  t.equal(q.running, 1, 'close() gives nothing back: nothing starts any more');
});

t.test('weights: a request’s tasks run on one server; free slots are kept for a heavier fairest waiter, on one server only', async (t) => {
  const s0 = server(0, 3);
  const q = scheduler(t);
  const r = recorder();
  const a = q.enter('a', 'm', [s0], 2);
  t.equal(a.immediate, true);
  t.equal(q.running, 2, 'a 2-task request holds 2 slots');
  r.watch('b', q.enter('b', 'm', [s0], 2));
  r.watch('c', q.enter('c', 'm', [s0]));
  t.equal(q.waiting, 2, 'one slot is free, b needs 2 and c waits behind it: the free slot is kept for b');
  a.cancel();
  await settle();
  t.same(r.order, ['b@0', 'c@0']);
  r.release('b');
  r.release('c');

  // Two servers of 2 slots with one running on each: 2 slots are free, but not on ONE server.
  const x0 = server(10, 2);
  const x1 = server(11, 2);
  const pair = [x0, x1];
  const other = server(12, 1);
  const w = scheduler(t);
  const rw = recorder();
  const x = w.enter('x', 'm', pair);
  const y = w.enter('y', 'm', pair);
  t.same([x.server, y.server], [x0, x1], 'spread over both');
  rw.watch('heavy', w.enter('h', 'm', pair, 2));
  const light = w.enter('l', 'm', pair);
  t.equal(light.immediate, true, 'the heavy waiter keeps one server’s free slot; the other server goes on serving');
  t.equal(light.server, x1);
  rw.watch('light2', w.enter('l2', 'm', pair));
  t.equal(w.waiting, 2, 'x0’s free slot is kept for the heavy one');
  t.equal(w.enter('e', 'embed', [other]).immediate, true, 'another model’s server is not blocked');
  x.cancel();
  await settle();
  t.same(rw.order, ['heavy@10'], 'heavy runs on x0 once it drained');
  t.equal(w.runningOn(x0), 2);
  light.cancel();
  await settle();
  t.same(rw.order, ['heavy@10', 'light2@11']);

  // The kept-for waiter leaves: the others run.
  const k = scheduler(t);
  const kr = recorder();
  const k0 = server(20, 2);
  const busy = k.enter('a', 'm', [k0]);
  const heavy = kr.watch('heavy', k.enter('b', 'm', [k0], 2));
  kr.watch('c', k.enter('c', 'm', [k0]));
  heavy.cancel();
  await settle();
  t.same(kr.order, ['c@20']);
  t.type(kr.errors.get('heavy'), QueueLeft);
  busy.cancel();
  kr.release('c');
  t.equal(k.running, 0);
});

t.test('two servers of one model: placement by running / (slots · weight), neither idle while the other has a queue', async (t) => {
  const q = scheduler(t);
  const place = (servers: Server[], n: number): number[] => {
    const out: number[] = [];
    for (let i = 0; i < n; i++) out.push(q.enter(`k${i}`, `m${servers[0]!.index}`, servers).server!.index);
    return out;
  };
  t.same(place([server(0, 2), server(1, 2)], 4), [0, 1, 0, 1], 'equal servers take turns (ties: the first)');
  t.same(place([server(2, 1), server(3, 3)], 4), [2, 3, 3, 3], 'slots count');
  t.same(
    place([server(4, 4, 'ready', 1), server(5, 4, 'ready', 3)], 8),
    [4, 5, 5, 5, 4, 5, 4, 4],
    'weight 3 takes three for one, until it is full',
  );

  const s0 = server(10, 2);
  const s1 = server(11, 2);
  const both = [s0, s1];
  const busy = scheduler(t);
  const tickets: Ticket[] = [];
  for (let i = 0; i < 24; i++) tickets.push(busy.enter(`key${i % 3}`, 'm', both));
  t.equal(busy.running, 4);
  t.equal(busy.waiting, 20);
  // Finish requests in an uneven order (always on s1 first when it has one): every freed slot is
  // taken at once, whichever server it is on.
  for (let round = 0; round < 24; round++) {
    await settle();
    t.ok(busy.waiting === 0 || (busy.runningOn(s0) === 2 && busy.runningOn(s1) === 2), `round ${round}: no idle slot while requests wait`);
    const running = tickets.filter((x) => x.started && x.server !== undefined && busy.runningOn(x.server) > 0);
    const pick = running.find((x) => x.server === s1) ?? running[0];
    pick?.cancel();
    tickets.splice(tickets.indexOf(pick!), 1);
  }
  await settle();
  t.equal(busy.running, 0);
  t.equal(busy.waiting, 0);
});

t.test('models on separate servers are independent; a server several models share goes to the longest waiting', async (t) => {
  const chat = server(0, 1);
  const embed = server(1, 1);
  const q = scheduler(t);
  const r = recorder();
  q.enter('a', 'chat', [chat]);
  for (const name of ['b', 'c', 'd']) r.watch(name, q.enter(name, 'chat', [chat]));
  t.equal(q.waitingIn('chat'), 3);
  const e = q.enter('b', 'embed', [embed]);
  t.equal(e.immediate, true, 'an embedding request never waits behind chat generations');
  t.equal(q.waitingIn('embed'), 0);
  r.watch('e2', q.enter('e', 'embed', [embed]));
  e.cancel();
  await settle();
  t.same(r.order, ['e2@1'], 'the embedding server’s slot goes to the embedding waiter; chat still waits');
  t.equal(q.waitingIn('chat'), 3);

  // Router mode / llama-swap: one server serves two models. Its free slot goes to the model whose
  // fairest waiter has waited longest.
  const shared = server(2, 1);
  const s = scheduler(t);
  const sr = recorder();
  const first = s.enter('a', 'small', [shared]);
  sr.watch('large-b', s.enter('b', 'large', [shared]));
  sr.watch('small-c', s.enter('c', 'small', [shared]));
  sr.watch('large-d', s.enter('d', 'large', [shared]));
  first.cancel();
  await settle();
  sr.release('large-b');
  await settle();
  sr.release('small-c');
  await settle();
  t.same(sr.order, ['large-b@2', 'small-c@2', 'large-d@2']);
});

t.test('the key share is per model, from the slots its servers offer now', async (t) => {
  const s0 = server(0, 2);
  const s1 = server(1, 2);
  const q = scheduler(t, { keySlots: 'auto' });
  t.equal(q.enter('a', 'chat', [s0]).immediate, true);
  t.equal(q.enter('a', 'embed', [s1]).immediate, true, 'a holds its share of chat, not of embed');
  const waits = q.enter('a', 'chat', [s0]);
  t.equal(waits.immediate, false, 'at its share of chat (1 of 2), with a slot free');
  t.equal(q.enter('b', 'chat', [s0]).immediate, true, 'the free slot is another key’s');
  waits.admitted.catch(() => {});
  waits.cancel();

  const both = [server(2, 2), server(3, 2, 'loading')];
  t.equal(q.keySlotsOf(both), 1, 'a loading server’s slots do not count: 1 of 2');
  const l = scheduler(t, { keySlots: 'auto' });
  t.equal(l.enter('a', 'm', both).immediate, true);
  const second = l.enter('a', 'm', both);
  t.equal(second.immediate, false, 'a holds its share of the slots usable now');
  both[1]!.state = 'ready';
  l.changed();
  t.equal(q.keySlotsOf(both), 3);
  t.equal((await within(second.admitted, 1000, 'the share grew: a second runs')).server, both[1]);
});

t.test('loading: requests wait, never fail; admitted when the server is ready (changed())', async (t) => {
  const s0 = server(0, 2, 'loading');
  const q = scheduler(t);
  const ticket = q.enter('a', 'm', [s0]);
  t.equal(ticket.immediate, false, 'loading: waits');
  q.changed();
  await settle();
  t.equal(ticket.started, false, 'still loading: still waits');
  s0.state = 'ready';
  q.changed();
  t.equal((await within(ticket.admitted, 1000, 'ready: it runs')).server, s0);

  const loading = server(1, 2, 'loading');
  const ready = server(2, 2);
  t.equal(q.enter('b', 'n', [loading, ready]).server, ready, 'a ready server of the model takes it at once');
  t.equal(
    q.enter('b', 'n', [loading, ready], 1, { prefer: loading, preferMs: 10_000 }).server,
    ready,
    'a loading preferred server is not waited for',
  );

  const unknown = server(3, 2, 'unknown');
  t.equal(q.enter('c', 'u', [unknown]).immediate, true, 'unknown (not probed yet) counts as ready');
});

t.test('down: skipped while another server of the model is up; used when every one is down', async (t) => {
  const s0 = server(0, 1, 'down');
  const s1 = server(1, 1);
  const both = [s0, s1];
  const q = scheduler(t);
  const a = q.enter('a', 'm', both);
  t.equal(a.server, s1, 'the down server is skipped');
  const b = q.enter('b', 'm', both);
  t.equal(b.immediate, false, 's1 is full: b waits rather than go to the down server');
  const bLoading = q.enter('c', 'm', [server(2, 1, 'loading'), server(3, 1, 'down')]);
  t.equal(bLoading.immediate, false, 'one loading, one down: it waits for the loading one');
  bLoading.cancel();
  await t.rejects(bLoading.admitted, QueueLeft);
  s1.state = 'down';
  q.changed();
  t.equal((await within(b.admitted, 1000, 'every server is down: b is sent (it fails fast)')).server, s0);
  const allDown = [server(4, 1, 'down'), server(5, 1, 'down')];
  t.equal(q.enter('d', 'x', allDown).server, allDown[0], 'every candidate down: the first with room, at once');
  t.equal(q.enter('e', 'x', allDown).server, allDown[1]);
});

t.test('affinity: the preferred server when it has room; with preferMs, waits for it, then takes any', async (t) => {
  const s0 = server(0, 2);
  const s1 = server(1, 2);
  const both = [s0, s1];
  const q = scheduler(t);
  const r = recorder();
  const first = q.enter('a', 'm', both);
  t.equal(first.server, s0);
  t.equal(q.enter('b', 'm', both, 1, { prefer: s0 }).server, s0, 'preferred, though s1 is idle');
  t.equal(q.enter('c', 'm', both, 1, { prefer: s0 }).server, s1, 'no room there and no preferMs: the other one');
  const stray = q.enter('c', 'm', [s1], 1, { prefer: server(9, 8) });
  t.equal(stray.server, s1, 'a preferred server that is not a candidate is ignored');
  stray.cancel();

  const patient = r.watch('patient', q.enter('d', 'm', both, 1, { prefer: s0, preferMs: 10_000 }));
  t.equal(patient.immediate, false, 's1 has a slot, but it waits for s0');
  t.equal(q.enter('e', 'm', both).server, s1, 'the free slot on s1 is not kept for it');
  first.cancel();
  await settle();
  t.same(r.order, ['patient@0'], 'a slot of s0 frees: it runs there');

  // preferMs passes: a timer dispatches again, and it takes any server.
  const p0 = server(2, 1);
  const p1 = server(3, 1);
  const p = scheduler(t);
  const pr = recorder();
  p.enter('a', 'n', [p0, p1], 1, { prefer: p0 });
  pr.watch('later', p.enter('b', 'n', [p0, p1], 1, { prefer: p0, preferMs: 20 }));
  t.equal(p.waiting, 1, 'p1 is free, but it waits for p0 for 20 ms');
  await until('preferMs passed: it runs on p1', () => pr.order.length === 1);
  t.same(pr.order, ['later@3']);

  // A heavy waiter for its preferred server has that server's free slots kept for it.
  const h0 = server(4, 2);
  const h1 = server(5, 2);
  const h = scheduler(t);
  const hr = recorder();
  const busy = h.enter('a', 'o', [h0, h1], 1, { prefer: h0 });
  hr.watch('heavy', h.enter('b', 'o', [h0, h1], 2, { prefer: h0, preferMs: 10_000 }));
  t.equal(h.enter('c', 'o', [h0, h1]).server, h1, 'h0’s free slot is kept for it; h1 serves others');
  busy.cancel();
  await settle();
  t.same(hr.order, ['heavy@4']);
});

t.test('front: a failover retry goes first in its key’s line', async (t) => {
  const s0 = server(0, 1);
  const s1 = server(1, 1);
  const q = scheduler(t);
  const r = recorder();
  const running = q.enter('a', 'm', [s0, s1]);
  const failed = q.enter('a', 'm', [s0, s1]);
  t.equal(failed.server, s1);
  r.watch('a2', q.enter('a', 'm', [s0, s1]));
  r.watch('a3', q.enter('a', 'm', [s0, s1]));
  r.watch('b', q.enter('b', 'm', [s0, s1]));
  // s1 refused the connection: marked down, and the retry enters before the failed ticket is given
  // back, on the other servers only.
  s1.state = 'down';
  q.changed();
  r.watch('retry', q.enter('a', 'm', [s0], 1, { front: true }));
  failed.cancel();
  await settle();
  t.same(r.order, [], 's1 is down: nobody is sent there (s0 is up)');
  running.cancel();
  for (let i = 1; i <= 4; i++) {
    await until(`admission ${i}`, () => r.order.length === i);
    r.release(r.order.at(-1)!.split('@')[0]!);
  }
  t.same(
    r.order,
    ['b@0', 'retry@0', 'a2@0', 'a3@0'],
    'first b (keys take turns: a was served last), then the retry, at the head of a’s line, before a2 and a3',
  );
});

t.test('changed(): live slot counts; waiters that can never fit are refused', async (t) => {
  const s0 = server(0, 1);
  const q = scheduler(t);
  const r = recorder();
  q.enter('a', 'm', [s0]);
  r.watch('b', q.enter('b', 'm', [s0]));
  s0.slots = 2; // /props: llama-server restarted with 2 slots
  q.changed();
  await settle();
  t.same(r.order, ['b@0']);

  const s1 = server(1, 4);
  const auto = scheduler(t, { keySlots: 'auto' });
  const ar = recorder();
  auto.enter('a', 'm', [s1], 3);
  auto.enter('b', 'm', [s1]);
  ar.watch('heavy', auto.enter('c', 'm', [s1], 3));
  ar.watch('light', auto.enter('d', 'm', [s1]));
  s1.slots = 2;
  auto.changed();
  await settle();
  t.same(ar.errors.get('heavy'), new TooManyTasks(3, 1), '3 tasks can never run on 2 slots (share 1): refused');
  t.equal(auto.waiting, 1, 'the light one still waits');
});

t.test('readings and the snapshot for /admin/live', async (t) => {
  const s0 = server(0, 2);
  const s1 = server(1, 1);
  const q = scheduler(t);
  t.equal(q.enter('b', 'chat', [s0, s1], 2).server, s0);
  t.equal(q.enter('a', 'chat', [s0, s1]).server, s1);
  const waiting = [q.enter('a', 'chat', [s0, s1]), q.enter('c', 'chat', [s0, s1]), q.enter('c', 'embed', [s1])];
  for (const w of waiting) w.admitted.catch(() => {});
  t.equal(q.running, 3);
  t.equal(q.waiting, 3);
  t.equal(q.runningOn(s0), 2);
  t.equal(q.runningOn(s1), 1);
  t.equal(q.runningFor('b'), 2);
  t.equal(q.waitingFor('c'), 2);
  t.equal(q.waitingIn('chat'), 2);
  t.equal(q.waitingIn('embed'), 1);
  t.equal(q.waitingIn('nothing'), 0);
  t.same(q.snapshot(), {
    running: 3,
    waiting: 3,
    holding: 0,
    groups: [
      {
        group: 'chat',
        running: 3,
        waiting: 2,
        keys: [
          { key: 'b', running: 2, waiting: 0 },
          { key: 'a', running: 1, waiting: 1 },
          { key: 'c', running: 0, waiting: 1 },
        ],
      },
      { group: 'embed', running: 0, waiting: 1, keys: [{ key: 'c', running: 0, waiting: 1 }] },
    ],
    servers: [
      { index: 0, running: 2 },
      { index: 1, running: 1 },
    ],
  });
  for (const w of waiting) w.cancel();
  await sleep(0);
  t.equal(q.waiting, 0);
  t.equal(q.waitingFor('c'), 0);
});

t.test('cancel frees the slot on the server that had the request', async (t) => {
  const s0 = server(0, 1);
  const s1 = server(1, 1);
  const q = scheduler(t);
  const r = recorder();
  const a = q.enter('a', 'm', [s0, s1]);
  const b = q.enter('b', 'm', [s0, s1]);
  t.same([a.server, b.server], [s0, s1]);
  r.watch('c', q.enter('c', 'm', [s0, s1]));
  b.cancel();
  t.equal(q.runningOn(s0), 1);
  await settle();
  t.same(r.order, ['c@1'], 'c runs on s1, where b was');
});

t.test('a random mix drains: never over a server’s slots or a key’s share, no slot lost, every request runs', async (t) => {
  let seed = 14;
  const random = (): number => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
  const servers = [server(0, 2), server(1, 3), server(2, 1)];
  const groups: Record<string, Server[]> = { chat: [servers[0]!, servers[1]!], embed: [servers[2]!], router: [servers[1]!, servers[2]!] };
  const q = scheduler(t, { keySlots: 'auto', maxQueue: 1000, maxQueuePerKey: 1000 });
  const running: Admission[] = [];
  let entered = 0;
  let admitted = 0;
  let refused = 0;
  const broken: string[] = []; // rules broken, with the step
  const check = (when: string): void => {
    let sum = 0;
    for (const s of servers) {
      sum += q.runningOn(s);
      if (q.runningOn(s) > s.slots) broken.push(`${when}: server ${s.index} runs ${q.runningOn(s)} of ${s.slots}`);
    }
    if (sum !== q.running) broken.push(`${when}: ${q.running} running, ${sum} on the servers`);
    for (const g of q.snapshot().groups)
      for (const k of g.keys)
        if (k.running > q.keySlotsOf(groups[g.group]!)) broken.push(`${when}: ${k.key} runs ${k.running} in ${g.group}, over its share`);
  };
  for (let step = 0; step < 300; step++) {
    if (random() < 0.6 || running.length === 0) {
      const group = pick(Object.keys(groups));
      const candidates = groups[group]!;
      const prefer = random() < 0.3 ? pick(candidates) : undefined;
      try {
        const ticket = q.enter(pick(['k1', 'k2', 'k3', 'k4']), group, candidates, random() < 0.2 ? 2 : 1, prefer && { prefer });
        entered++;
        void ticket.admitted.then((a) => {
          admitted++;
          running.push(a);
        });
      } catch (err) {
        t.type(err, TooManyTasks, 'only a request heavier than it could ever be is refused');
        refused++;
      }
    } else running.splice(Math.floor(random() * running.length), 1)[0]!.release();
    await settle();
    check(`step ${step}`);
  }
  t.ok(q.waiting > 0, `the mix made requests wait (${q.waiting} waiting after 300 steps)`);
  while (running.length > 0) {
    for (const a of running.splice(0)) a.release();
    await settle();
    check('draining');
  }
  t.same(broken, [], 'never more running on a server than its slots or for a key than its share; no slot lost');
  t.equal(admitted, entered, `every one of the ${entered} requests ran (${refused} refused at once)`);
  t.equal(q.running, 0);
  t.equal(q.waiting, 0);
  t.same(
    q.snapshot().groups.map((g) => g.keys),
    [[], [], []],
    'nothing left behind',
  );
});

t.test(
  'a server two models share (router mode, llama-swap): a key holds at most its share of that server, across the models',
  async (t) => {
    const q = scheduler(t, { keySlots: 'auto' });
    const s = server(0, 4);
    // One model alone: the key takes its share of the model's slots (3 of 4).
    const a = [q.enter('x', 'model-a', [s]), q.enter('x', 'model-a', [s]), q.enter('x', 'model-a', [s])];
    t.ok(
      a.every((x) => x.immediate),
      'three of model-a run at once',
    );
    // The same server serves model-b too: x already holds 3 of its 4 slots, so its model-b request waits…
    const b = q.enter('x', 'model-b', [s]);
    t.notOk(b.immediate, "x's model-b request waits: x holds its share of the server");
    // …and the last slot is there for another key at once.
    const other = q.enter('y', 'model-b', [s]);
    t.ok(other.immediate, "y's request takes the last slot at once");
    other.cancel();
    t.equal(q.runningOn(s), 3, 'the free slot stays free for others: x is still at its share');
    a[0]!.cancel();
    const admitted = await within(b.admitted, 2000, 'x’s model-b request starts once one of its own ends');
    t.equal(admitted.server, s);
    t.equal(q.runningOn(s), 3);
    for (const x of [...a, b]) x.cancel();
    t.equal(q.runningOn(s), 0, 'every slot given back');
  },
);

t.test('servers that serve one model each: the per-model share alone applies (a key may fill one server)', async (t) => {
  const q = scheduler(t, { keySlots: 'auto' });
  const s1 = server(0, 2);
  const s2 = server(1, 2);
  const seats = [0, 1, 2].map(() => q.enter('x', 'm', [s1, s2]));
  t.ok(
    seats.every((x) => x.immediate),
    'three of four slots over the two servers',
  );
  const e = q.enter('e', 'embed', [server(2, 1)]);
  t.ok(e.immediate, 'another model on its own server is not affected');
  for (const x of [...seats, e]) x.cancel();
});
