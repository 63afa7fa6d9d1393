// A key's share of llama-server's slots, and the light calls kept apart (issue #12, item 5).
//   - With no limits set, one key could hold every slot while other keys' requests timed out in
//     the queue (the queue cannot preempt). By default a key now holds at most all-but-one slot
//     (GATEWAY_KEY_SLOTS=auto); its other requests wait, and another key's request takes the free
//     slot at once.
//   - count_tokens and /v1/models bypassed the queue, and the upstream pool had no connection cap:
//     100 concurrent count_tokens opened 100 connections to llama-server. Light calls now wait in a
//     small queue of their own (GATEWAY_LIGHT_SLOTS) and use a pool of that many connections.
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import t from 'tap';
import { ConfigError, loadConfig } from '../../src/config.js';
import { FairQueue, keySlotCap } from '../../src/admission/fair-queue.js';
import {
  AUTH_A,
  KEY_A,
  KEY_B,
  bearer,
  chatBody,
  request,
  sleep,
  startGateway,
  until,
  within,
  type Gateway,
  type RawResponse,
} from '../helpers.js';
import type { RecordedRequest } from '../fixtures/fake-llama.js';

const userOf = (r: RecordedRequest): string => (JSON.parse(r.body.toString()) as { user?: string }).user ?? '';

/** Most of `requests` open upstream at the same moment (from the fake's receive/close times). */
function peakConcurrency(requests: RecordedRequest[]): number {
  const events = requests.flatMap<[number, number]>((r) => [
    [r.receivedAt, 1],
    [r.closedAt ?? Infinity, -1],
  ]);
  events.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let open = 0;
  let peak = 0;
  for (const [, d] of events) peak = Math.max(peak, (open += d));
  return peak;
}

/** Samples the fake llama-server's open connections every millisecond until stopped: the peak. */
function watchSockets(gw: Gateway): { stop(): number } {
  let peak = gw.fake.openSockets();
  const timer = setInterval(() => (peak = Math.max(peak, gw.fake.openSockets())), 1);
  return {
    stop() {
      clearInterval(timer);
      return Math.max(peak, gw.fake.openSockets());
    },
  };
}

const COUNT_BODY = '{"model":"gpt-oss-20b","messages":[{"role":"user","content":"hi"}]}';

// Long streams: ~20 chunks 80 ms apart (~1.6 s each).
const LONG_STREAM = { chunkDelayMs: 80, extraContentChunks: 15 };

t.test('one key holds at most all-but-one slot: A’s 6 streams run 3 at a time on 4 slots, B starts at once', async (t) => {
  const gw = await startGateway(t, { maxInflight: 4 }, LONG_STREAM);
  const a: Promise<RawResponse>[] = [];
  for (let i = 1; i <= 6; i++)
    a.push(request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true, user: `A-${i}` }) }));
  await until(
    'A’s first requests reach llama-server',
    () => gw.fake.requests.length >= 3 && gw.app.queue.waiting + gw.app.queue.running === 6,
  );
  await sleep(200);
  t.equal(gw.fake.requests.length, 3, 'only 3 of A’s 6 reached llama-server: the 4th slot stays free');
  t.equal(gw.app.queue.running, 3);
  t.equal(gw.app.queue.waiting, 3, 'A’s other 3 wait in the gateway (not refused)');

  const sentB = performance.now();
  const b = request(gw.port, { path: '/v1/chat/completions', headers: bearer(KEY_B), body: chatBody({ user: 'B-1' }) });
  await until('B reaches llama-server', () => gw.fake.requests.length === 4, 1000);
  const bUp = gw.fake.requests[3]!;
  t.equal(userOf(bUp), 'B-1', 'the next request llama-server sees is B’s, not A’s');
  t.ok(bUp.receivedAt - sentB < 300, `B reached llama-server ${Math.round(bUp.receivedAt - sentB)} ms after it was sent`);
  t.ok(
    gw.fake.requests.slice(0, 3).every((r) => r.closedAt === undefined),
    'while A’s three were still running',
  );
  t.equal((await b).status, 200);

  const answers = await within(Promise.all(a), 15_000, 'all of A answered');
  t.ok(
    answers.every((r) => r.status === 200 && r.text.endsWith('data: [DONE]\n\n')),
    'all of A’s streams complete',
  );
  const ofA = gw.fake.requests.filter((r) => userOf(r).startsWith('A-'));
  t.equal(ofA.length, 6);
  t.equal(peakConcurrency(ofA), 3, 'never more than 3 of A’s upstream at once');
  const firstEnd = Math.min(...ofA.slice(0, 3).map((r) => r.closedAt!));
  t.ok(ofA[3]!.receivedAt >= firstEnd, 'A’s 4th started when one of A’s finished');
  // (Their order is the order they reached the gateway, which six sockets opened at once do not fix.)
  t.same(ofA.map(userOf).sort(), ['A-1', 'A-2', 'A-3', 'A-4', 'A-5', 'A-6'], 'each of A’s requests ran once');
});

t.test('GATEWAY_KEY_SLOTS=all: one key may take every slot (the old behaviour)', async (t) => {
  const gw = await startGateway(t, { maxInflight: 4, keySlots: 'all' }, LONG_STREAM);
  const a: Promise<RawResponse>[] = [];
  for (let i = 1; i <= 6; i++)
    a.push(request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true, user: `A-${i}` }) }));
  await until('A fills every slot', () => gw.fake.requests.length === 4 && gw.app.queue.waiting === 2);
  await sleep(100);
  t.equal(gw.fake.requests.length, 4);
  t.ok((await within(Promise.all(a), 15_000, 'all of A answered')).every((r) => r.status === 200));
});

t.test('a number: GATEWAY_KEY_SLOTS=2 lets a key run 2 at once', async (t) => {
  const gw = await startGateway(t, { maxInflight: 4, keySlots: 2 }, LONG_STREAM);
  const a: Promise<RawResponse>[] = [];
  for (let i = 1; i <= 3; i++)
    a.push(request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true, user: `A-${i}` }) }));
  await until('two of A run, one waits', () => gw.fake.requests.length === 2 && gw.app.queue.waiting === 1);
  await sleep(100);
  t.equal(gw.fake.requests.length, 2);
  t.ok((await within(Promise.all(a), 15_000, 'all of A answered')).every((r) => r.status === 200));
});

t.test('FairQueue key share: the fast path, skipping capped keys, a slot count that changes', async (t) => {
  t.equal(keySlotCap('auto', 4), 3);
  t.equal(keySlotCap('auto', 2), 1);
  t.equal(keySlotCap('auto', 1), 1, 'one slot: a key may still use it');
  t.equal(keySlotCap('all', 4), 4);
  t.equal(keySlotCap(2, 4), 2);
  t.equal(keySlotCap(9, 4), 4);

  const q = new FairQueue({ maxInflight: 2, maxQueue: 10, maxQueuePerKey: 10, timeoutMs: 10_000, keySlots: 'auto' });
  t.equal(q.keySlots, 1);
  const a1 = q.enter('a');
  t.equal(a1.immediate, true);
  const a2 = q.enter('a');
  t.equal(a2.immediate, false, 'a slot is free, but a holds its share: a2 waits');
  const b1 = q.enter('b');
  t.equal(b1.immediate, true, 'b is not stuck behind a’s waiter: it takes the free slot at once');
  t.equal(q.running, 2);
  const b2 = q.enter('b');
  const c1 = q.enter('c');
  const served: string[] = [];
  for (const [name, ticket] of [
    ['a2', a2],
    ['b2', b2],
    ['c1', c1],
  ] as const)
    void ticket.admitted.then(() => served.push(name));
  b1.cancel(); // b's request finished: the slot goes to c (nothing running), never to a (at its share)
  await sleep(0);
  t.same(served, ['c1']);
  (await a1.admitted)(); // a's request finished: its waiter runs
  await sleep(0);
  t.same(served, ['c1', 'a2']);
  t.equal(q.running, 2);
  t.equal(q.waiting, 1, 'b2 waits for a slot');

  // llama-server restarted with 4 slots: the share follows (3), waiting requests run at once.
  q.setMaxInflight(4);
  t.equal(q.keySlots, 3);
  await sleep(0);
  t.same(served, ['c1', 'a2', 'b2']);
  const a3 = q.enter('a');
  t.equal(a3.immediate, true, '4 slots: a may hold 2 (its share is 3)');
  const a4 = q.enter('a');
  t.equal(a4.immediate, false, 'every slot is busy');
  // Down to 2 slots: nobody is stopped, but a runs nothing more until it is under its share.
  q.setMaxInflight(2);
  t.equal(q.keySlots, 1);
  (await c1.admitted)();
  (await b2.admitted)();
  await sleep(0);
  t.equal(q.running, 2, 'a holds 2 (over its share of 1): a4 still waits');
  t.equal(q.waiting, 1);
  (await a2.admitted)();
  await sleep(0);
  t.equal(q.waiting, 1, 'a holds 1 of 2 slots: its share');
  const d = q.enter('d');
  t.equal(d.immediate, true, 'another key takes the free slot at once');
  d.cancel();
  (await a3.admitted)();
  const release = await within(a4.admitted, 1000, 'a4 runs once a is under its share');
  release();
  t.equal(q.running, 0);
  t.equal(q.waiting, 0);
});

t.test('GATEWAY_KEY_SLOTS and GATEWAY_LIGHT_SLOTS', async (t) => {
  const env = (more: Record<string, string>) => loadConfig({ LLM_API_KEYS: KEY_A, ...more });
  t.equal(env({}).keySlots, 'auto', 'default: all but one slot');
  t.equal(env({ GATEWAY_KEY_SLOTS: 'ALL' }).keySlots, 'all');
  t.equal(env({ GATEWAY_KEY_SLOTS: ' 3 ' }).keySlots, 3);
  t.throws(
    () => env({ GATEWAY_KEY_SLOTS: '0' }),
    new ConfigError('GATEWAY_KEY_SLOTS', 'must be auto (all slots but one), all, or a whole number ≥ 1, got "0"'),
  );
  t.throws(() => env({ GATEWAY_KEY_SLOTS: 'half' }), ConfigError);
  t.equal(env({}).lightSlots, 2);
  t.equal(env({ GATEWAY_LIGHT_SLOTS: '4' }).lightSlots, 4);
  t.throws(() => env({ GATEWAY_LIGHT_SLOTS: '0' }), ConfigError);
});

t.test('100 concurrent count_tokens: at most GATEWAY_LIGHT_SLOTS connections to llama-server, every one answered', async (t) => {
  const gw = await startGateway(t, { maxQueue: 100, maxQueuePerKey: 100 }, { headersDelayMs: 10 });
  const sockets = watchSockets(gw);
  const answers = await within(
    Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        request(gw.port, { path: '/v1/messages/count_tokens', headers: bearer(i % 2 === 0 ? KEY_A : KEY_B), body: COUNT_BODY }),
      ),
    ),
    15_000,
    'all answered',
  );
  const peak = sockets.stop();
  t.ok(
    answers.every((r) => r.status === 200 && r.text === '{"input_tokens":28}'),
    'all 100 answered with llama-server’s count',
  );
  t.equal(gw.fake.requests.length, 100);
  t.ok(peak <= 2, `at most 2 connections to llama-server at once (saw ${peak})`);
  t.ok(peakConcurrency(gw.fake.requests) <= 2, 'at most 2 light requests upstream at once');
  t.equal(gw.app.lightQueue.running, 0);
  t.equal(gw.app.lightQueue.waiting, 0);
});

t.test(
  'light calls never wait behind generations: count_tokens, models and input_tokens while every slot is busy and the queue is full',
  async (t) => {
    const gw = await startGateway(
      t,
      { maxInflight: 2, keySlots: 'all', maxQueue: 2, maxQueuePerKey: 2 },
      { chunkDelayMs: 100, extraContentChunks: 20 },
    );
    const gens: Promise<RawResponse>[] = [];
    for (let i = 1; i <= 4; i++)
      gens.push(
        request(gw.port, {
          path: '/v1/completions',
          headers: AUTH_A,
          body: JSON.stringify({ model: 'gpt-oss-20b', prompt: 'x', stream: true, user: `A-${i}` }),
        }),
      );
    await until('both slots busy, the queue full', () => gw.fake.requests.length === 2 && gw.app.queue.waiting === 2);
    const full = await request(gw.port, { path: '/v1/chat/completions', headers: bearer(KEY_B), body: chatBody() });
    t.equal(full.status, 503, 'one more generation is refused: the queue is full');
    for (const [path, body] of [
      ['/v1/messages/count_tokens', COUNT_BODY],
      ['/v1/chat/completions/input_tokens', COUNT_BODY],
      ['/v1/responses/input_tokens', '{"model":"gpt-oss-20b","input":"hi"}'],
      ['/v1/models', undefined],
      ['/v1/models/gpt-oss-20b', undefined],
    ] as const) {
      const started = performance.now();
      const res = await request(gw.port, { path, headers: bearer(KEY_B), ...(body === undefined ? {} : { body }) });
      const ms = performance.now() - started;
      t.equal(res.status, 200, `${path} answered`);
      t.ok(gw.app.queue.running === 2 && gw.app.queue.waiting === 2, `${path}: answered while every generation slot stayed busy`);
      t.comment(`${path} in ${Math.round(ms)} ms`);
    }
    t.same(
      gw.fake.requests.slice(-5).map((r) => `${r.method} ${r.url}`),
      [
        'POST /v1/messages/count_tokens',
        'POST /v1/chat/completions/input_tokens',
        'POST /v1/responses/input_tokens',
        'GET /v1/models',
        'GET /v1/models',
      ],
      'each forwarded to llama-server’s own route',
    );
    t.ok((await within(Promise.all(gens), 20_000, 'the generations end')).every((r) => r.status === 200));
  },
);

t.test('the token-counting routes answer what llama-server counts', async (t) => {
  const gw = await startGateway(t);
  const chat = await request(gw.port, { path: '/v1/chat/completions/input_tokens', headers: AUTH_A, body: COUNT_BODY });
  t.equal(chat.status, 200);
  t.same(JSON.parse(chat.text), { input_tokens: 29, object: 'response.input_tokens' });
  const responses = await request(gw.port, {
    path: '/v1/responses/input_tokens',
    headers: AUTH_A,
    body: '{"model":"gpt-oss-20b","input":"hi"}',
  });
  t.equal(responses.status, 200);
  t.same(JSON.parse(responses.text), { input_tokens: 29, object: 'response.input_tokens' });
  const empty = await request(gw.port, { method: 'POST', path: '/v1/responses/input_tokens', headers: AUTH_A });
  t.equal(empty.status, 400, 'a body is required, as for the other POST routes');
  t.equal((JSON.parse(empty.text) as { error: { type: string } }).error.type, 'invalid_request_error');
});

t.test(
  'the gateway’s own calls use a small pool of their own: 50 concurrent /health and 20 counting POSTs stay within its 3 connections',
  async (t) => {
    const gw = await startGateway(t);
    const sockets = watchSockets(gw);
    const health = await within(
      Promise.all(Array.from({ length: 50 }, () => request(gw.port, { path: '/health' }))),
      10_000,
      '/health answered',
    );
    t.ok(health.every((r) => r.status === 200));
    const posts = await within(
      Promise.all(Array.from({ length: 20 }, () => gw.app.upstream.post('/v1/messages/count_tokens', COUNT_BODY))),
      10_000,
      'posts answered',
    );
    t.ok(posts.every((r) => r.statusCode === 200 && r.text === '{"input_tokens":28}'));
    const peak = sockets.stop();
    t.ok(peak <= 3, `at most 3 connections, the gateway's own pool (saw ${peak})`);
    t.ok(gw.fake.requests.filter((r) => r.url === '/health').length < 50, 'concurrent /health checks share one upstream call');
    const post = gw.fake.requests.find((r) => r.url === '/v1/messages/count_tokens')!;
    t.equal(post.method, 'POST');
    t.equal(post.headers['content-type'], 'application/json');
    t.equal(post.body.toString(), COUNT_BODY);
  },
);

t.test('/metrics: the light queue and the key share as gauges', async (t) => {
  const gw = await startGateway(t, { maxInflight: 4, lightSlots: 3 });
  const text = (await request(gw.port, { path: '/metrics' })).text;
  t.match(text, /\nllm_gateway_light_requests_waiting 0\n/);
  t.match(text, /\nllm_gateway_light_requests_running 0\n/);
  t.match(text, /\nllm_gateway_light_slots 3\n/);
  t.match(text, /\nllm_gateway_key_slots 3\n/);
});

t.test('a client that leaves while its light call waits leaves the light queue', async (t) => {
  const gw = await startGateway(t, { lightSlots: 1 }, { headersDelayMs: 400 });
  const first = request(gw.port, { path: '/v1/messages/count_tokens', headers: AUTH_A, body: COUNT_BODY });
  await gw.fake.waitForRequests(1);
  const req = http.request({ host: '127.0.0.1', port: gw.port, method: 'POST', path: '/v1/messages/count_tokens', headers: bearer(KEY_B) });
  req.on('error', () => {});
  req.end(COUNT_BODY);
  await until('it waits', () => gw.app.lightQueue.waiting === 1);
  req.destroy();
  await until('it left', () => gw.app.lightQueue.waiting === 0, 1000);
  t.equal((await first).status, 200);
  await sleep(100);
  t.equal(gw.fake.requests.length, 1, 'never sent upstream');
  t.equal(gw.app.lightQueue.running, 0, 'no light slot leaked');
});
