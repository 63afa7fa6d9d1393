// Red-team findings on the per-key slot share (issue #12):
//   F3  one request can run several llama-server tasks at once (a /v1/completions prompt array:
//       one task per prompt; `n`: one per choice). It counted as one in the fair queue, so with 2
//       slots one such request from key A took both and key B waited behind it. A ticket now
//       weighs its task count; a request weighing more than its key's share is refused at once.
//   F4  llama-server notices a closed non-streamed request only by polling about once a second, so
//       the slot the gateway freed at once stayed busy upstream, and the next key's request waited
//       in llama-server's own queue. Such a slot is now held ~1.5 s after the client leaves.
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import t from 'tap';
import { FairQueue, TooManyTasks } from '../../src/admission/fair-queue.js';
import { AUTH_A, KEY_A, KEY_B, bearer, chatBody, request, sleep, startGateway, until, within, type RawResponse } from '../helpers.js';

const completions = (extra: Record<string, unknown>): string => JSON.stringify({ model: 'gpt-oss-20b', prompt: 'x', ...extra });

interface OpenAIError {
  error: { message: string; type: string; param: string | null; code: string };
}

t.test('FairQueue: a ticket weighs its tasks; running counts, the share and dispatch use weights', async (t) => {
  const q = new FairQueue({ maxInflight: 3, maxQueue: 10, maxQueuePerKey: 10, timeoutMs: 10_000, keySlots: 'all' });
  const a = q.enter('a', 2);
  t.equal(a.immediate, true);
  t.equal(q.running, 2, 'a 2-task request holds 2 slots');
  const b = q.enter('b', 2);
  t.equal(b.immediate, false, 'one slot is free, b needs 2: it waits');
  const c = q.enter('c');
  t.equal(c.immediate, false, 'the free slot is kept for b (its turn), not taken by c');
  (await a.admitted)();
  const releaseB = await within(b.admitted, 1000, 'b runs once 2 slots are free');
  const releaseC = await within(c.admitted, 1000, 'c takes the third');
  t.equal(q.running, 3);
  releaseB();
  releaseC();
  t.equal(q.running, 0);

  t.throws(() => q.enter('a', 4), new TooManyTasks(4, 3), 'more tasks than the key’s share: refused at once');
  t.equal(q.waiting, 0, 'and never queued');

  const share = new FairQueue({ maxInflight: 4, maxQueue: 10, maxQueuePerKey: 10, timeoutMs: 10_000, keySlots: 'auto' });
  t.throws(() => share.enter('a', 4), TooManyTasks, 'auto: a key runs at most 3 of 4');
  const a3 = share.enter('a', 3);
  t.equal(a3.immediate, true);
  t.equal(share.enter('b').immediate, true, 'the 4th slot is another key’s');
  const waiting = share.enter('c', 2);
  t.equal(waiting.immediate, false);
  // llama-server restarted with 2 slots: c's 2 tasks can never run (share 1): refused, not left to time out.
  share.setMaxInflight(2);
  await t.rejects(waiting.admitted, new TooManyTasks(2, 1));
  t.equal(share.waiting, 0);
});

t.test('a cancelled waiter that slots were kept for lets the others run', async (t) => {
  const q = new FairQueue({ maxInflight: 2, maxQueue: 10, maxQueuePerKey: 10, timeoutMs: 10_000, keySlots: 'all' });
  const a = q.enter('a');
  const b = q.enter('b', 2);
  b.admitted.catch(() => {});
  const c = q.enter('c');
  t.equal(c.immediate, false, 'the free slot waits for b');
  b.cancel();
  await within(c.admitted, 1000, 'c runs once b left');
  a.cancel();
  c.cancel();
  t.equal(q.running, 0);
});

t.test('a prompt array with more prompts than the key’s share is refused at once: 400 too_many_tasks', async (t) => {
  const gw = await startGateway(t, { maxInflight: 2 }); // auto: a key runs at most 1 of 2
  const res = await request(gw.port, { path: '/v1/completions', headers: AUTH_A, body: completions({ prompt: ['x', 'x'] }) });
  t.equal(res.status, 400);
  const body = JSON.parse(res.text) as OpenAIError;
  t.same(body.error, {
    message: 'This request runs 2 tasks on the model server at once (one per prompt and choice); this API key may run at most 1 at once.',
    type: 'invalid_request_error',
    param: 'prompt',
    code: 'too_many_tasks',
  });
  const n = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ n: 2 }) });
  t.equal(n.status, 400);
  t.equal((JSON.parse(n.text) as OpenAIError).error.param, 'n');
  t.equal(gw.fake.requests.length, 0, 'neither reached llama-server');
  t.equal(gw.app.queue.running + gw.app.queue.waiting, 0);

  const tokens = await request(gw.port, { path: '/v1/completions', headers: AUTH_A, body: completions({ prompt: [1, 2, 3] }) });
  t.equal(tokens.status, 200, 'an array of numbers is one prompt given as tokens');
  const one = await request(gw.port, { path: '/v1/completions', headers: AUTH_A, body: completions({ prompt: ['x'], n: 1 }) });
  t.equal(one.status, 200);
});

t.test('a 2-task request holds 2 slots: another key’s request waits for them, not beside them', async (t) => {
  const gw = await startGateway(t, { maxInflight: 2, keySlots: 'all' }, { headersDelayMs: 400 });
  const a = request(gw.port, { path: '/v1/completions', headers: AUTH_A, body: completions({ prompt: ['x', 'x'] }) });
  await gw.fake.waitForRequests(1);
  t.equal(gw.app.queue.running, 2, 'A’s one request holds both slots');
  const b = request(gw.port, { path: '/v1/chat/completions', headers: bearer(KEY_B), body: chatBody() });
  await until('B waits in the gateway', () => gw.app.queue.waiting === 1);
  await sleep(100);
  t.equal(gw.fake.requests.length, 1, 'B is not sent to llama-server while A’s two tasks run');
  t.equal((await a).status, 200);
  t.equal((await b).status, 200);
  t.equal(gw.app.queue.running, 0);
});

/** A request sent and destroyed after `ms`. */
function abortAfter(port: number, key: string, body: string, ms: number): Promise<void> {
  const req = http.request({
    host: '127.0.0.1',
    port,
    method: 'POST',
    path: '/v1/completions',
    headers: { ...bearer(key), 'content-type': 'application/json' },
  });
  req.on('error', () => {});
  req.end(body);
  return sleep(ms).then(() => void req.destroy());
}

t.test('a client that leaves a non-streamed request llama-server is running: its slot is held ~1.5 s more', async (t) => {
  const gw = await startGateway(t, { maxInflight: 2, keySlots: 'all' }, { headersDelayMs: 5000 });
  await abortAfter(gw.port, KEY_A, completions({}), 100);
  t.equal(gw.fake.requests.length, 1, 'it reached llama-server');
  const left = performance.now();
  await sleep(300);
  t.equal(gw.app.queue.running, 1, 'the slot is still held (llama-server has not noticed yet)');
  await sleep(900);
  t.equal(gw.app.queue.running, 1, '1.2 s later, still held');
  await until('the slot is released', () => gw.app.queue.running === 0, 2000);
  const held = performance.now() - left;
  t.ok(held >= 1400 && held < 2200, `released ${Math.round(held)} ms after the client left`);

  // A streamed request: llama-server cancels at its next token write; the slot is freed at once.
  await abortAfter(gw.port, KEY_A, completions({ stream: true }), 100);
  await until('freed at once', () => gw.app.queue.running === 0, 300);
  t.pass('a streamed abort frees its slot at once');
});

t.test('a non-streamed request that leaves while waiting in the queue frees nothing late (it never ran)', async (t) => {
  const gw = await startGateway(t, { maxInflight: 1, keySlots: 'all' }, { headersDelayMs: 600 });
  const first: Promise<RawResponse> = request(gw.port, { path: '/v1/completions', headers: AUTH_A, body: completions({}) });
  await gw.fake.waitForRequests(1);
  await abortAfter(gw.port, KEY_B, completions({}), 100);
  await until('it left the queue', () => gw.app.queue.waiting === 0, 500);
  t.equal((await first).status, 200);
  await until('the one slot is free as soon as the first answered', () => gw.app.queue.running === 0, 200);
  t.equal(gw.fake.requests.length, 1);
});

t.test('a held slot does not keep the process alive: closing the app clears its timer', async (t) => {
  const gw = await startGateway(t, { maxInflight: 2, keySlots: 'all' }, { headersDelayMs: 5000 });
  await abortAfter(gw.port, KEY_A, completions({}), 100);
  await until('the gateway saw the client leave', () => gw.app.queue.holding === 1, 500);
  t.equal(gw.app.queue.running, 1, 'one slot held after its client left');
  gw.app.server.closeAllConnections();
  await gw.app.close();
  t.equal(gw.app.queue.holding, 0, 'the hold ended with the app');
});
