// Fair admission: the queue in front of llama-server's slots serves keys fairly, is bounded and has
// a deadline; per-key limits answer 429 exactly at the configured count with OpenAI's headers and
// Retry-After; a client that leaves while waiting never reaches upstream; the failed-auth brake.
import http from 'node:http';
import t from 'tap';
import { MemoryCounters } from '../../src/admission/counters.js';
import { FairQueue, QueueFull, QueueTimeout } from '../../src/admission/fair-queue.js';
import { envIdentity } from '../../src/keys/key-index.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { Limits, MINUTE_MS, resetText } from '../../src/admission/limits.js';
import { reserveFor } from '../../src/admission/token-estimate.js';
import {
  AUTH_A,
  KEY_A,
  KEY_B,
  bearer,
  chatBody,
  request,
  sleep,
  startGateway,
  tempStore,
  until,
  within,
  type RawResponse,
} from '../helpers.js';

t.test('fair queue: key A sends 20, then key B sends 1; B reaches llama-server no later than A’s 3rd', async (t) => {
  // Each generation takes 500 ms, so B is queued well before the first slot frees. A may take
  // both slots here (GATEWAY_KEY_SLOTS=all): this is about the order waiters are served in; the
  // default share (a slot kept free for B) is slot-share.test.ts.
  const gw = await startGateway(t, { maxInflight: 2, keySlots: 'all' }, { headersDelayMs: 500 });
  const all: Promise<RawResponse>[] = [];
  const sendA = (i: number): number =>
    all.push(request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ user: `A-${i}` }) }));
  // A-1 starts 150 ms before the others, so the two slots free at different times: when two free
  // in the same instant, B and A-3 are sent upstream together and llama-server sees them in
  // whichever order the kernel hands it the two sockets.
  sendA(1);
  await until('A-1 reaches llama-server', () => gw.fake.requests.length === 1);
  await sleep(150);
  for (let i = 2; i <= 20; i++) sendA(i);
  await until('A fills the slots and the queue', () => gw.fake.requests.length === 2 && gw.app.queue.waiting === 18);
  all.push(request(gw.port, { path: '/v1/chat/completions', headers: bearer(KEY_B), body: chatBody({ user: 'B-1' }) }));
  await until('B waits too', () => gw.app.queue.waiting === 19);
  t.equal(gw.fake.requests.length, 2, 'B was queued while both slots were still busy');
  const answers = await within(Promise.all(all), 20_000, 'every request is answered');
  t.ok(
    answers.every((a) => a.status === 200),
    'all 21 answered 200',
  );
  const order = gw.fake.requests.map((r) => (JSON.parse(r.body.toString()) as { user: string }).user);
  t.equal(order.length, 21);
  const b = order.indexOf('B-1');
  const a3 = order.indexOf('A-3');
  t.ok(b <= a3, `B arrived ${b + 1}th, A's 3rd arrived ${a3 + 1}th: ${order.slice(0, 5).join(' ')} …`);
  // Never more than 2 at once upstream.
  const events = gw.fake.requests.flatMap<[number, number]>((r) => [
    [r.receivedAt, 1],
    [r.closedAt ?? Infinity, -1],
  ]);
  events.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
  let open = 0;
  let peak = 0;
  for (const [, d] of events) peak = Math.max(peak, (open += d));
  t.equal(peak, 2, 'at most GATEWAY_MAX_INFLIGHT requests upstream at once');
  t.same(
    order.filter((u) => u.startsWith('A-')),
    Array.from({ length: 20 }, (_, i) => `A-${i + 1}`),
    "one key's requests keep their order",
  );
});

t.test('FairQueue: round robin by running count, bounds, deadline, leaving', async (t) => {
  const q = new FairQueue({ maxInflight: 1, maxQueue: 3, maxQueuePerKey: 2, timeoutMs: 100 });
  const first = q.enter('a');
  const releaseA1 = await first.admitted;
  const a2 = q.enter('a');
  const a3 = q.enter('a');
  a3.admitted.catch(() => {});
  const refusal = (fn: () => unknown): unknown => {
    try {
      fn();
    } catch (err) {
      return err;
    }
    return undefined;
  };
  const perKey = refusal(() => q.enter('a'));
  t.ok(perKey instanceof QueueFull && perKey.scope === 'key', 'per-key share');
  const b1 = q.enter('b');
  const overall = refusal(() => q.enter('c'));
  t.ok(overall instanceof QueueFull && overall.scope === 'all', 'overall bound');
  const served: string[] = [];
  void a2.admitted.then((r) => {
    served.push('a2');
    r();
  });
  void b1.admitted.then((r) => {
    served.push('b1');
    r();
  });
  a3.cancel(); // the client left
  await a3.admitted.then(
    () => t.fail('a cancelled waiter is not admitted'),
    (err: Error) => t.equal(err.name, 'QueueLeft'),
  );
  releaseA1();
  await sleep(10);
  t.same(served, ['b1', 'a2'], 'a just served: b goes first (round robin)');
  t.equal(q.waiting, 0);
  t.equal(q.running, 0);
  const hold = await q.enter('x').admitted;
  const late = q.enter('y');
  const lateErr = await late.admitted.then(
    () => undefined,
    (err: unknown) => err,
  );
  t.ok(lateErr instanceof QueueTimeout, 'the deadline');
  t.equal(q.waiting, 0, 'a timed-out waiter leaves the queue');
  hold();
  q.setMaxInflight(3);
  t.equal(q.maxInflight, 3);
});

t.test('requests per minute: 429 exactly at the limit, with headers and Retry-After', async (t) => {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A], store);
  const { key } = store.create({ name: 'rpm3', limits: { rpm: 3 } });
  registry.reload();
  const gw = await startGateway(t, {}, {}, { registry });
  for (let i = 1; i <= 3; i++) {
    const ok = await request(gw.port, { path: '/v1/chat/completions', headers: bearer(key), body: chatBody() });
    t.equal(ok.status, 200, `request ${i}`);
    t.equal(ok.headers['x-ratelimit-limit-requests'], '3');
    t.equal(ok.headers['x-ratelimit-remaining-requests'], String(3 - i));
    // The minute window resets within 60 s; exactly at a minute's start that is written 1m0s.
    t.match(ok.headers['x-ratelimit-reset-requests'], /^(\d+s|1m0s)$/);
    t.equal(ok.headers['x-ratelimit-limit-tokens'], undefined, 'no token limit, no token headers');
  }
  const refused = await request(gw.port, { path: '/v1/chat/completions', headers: bearer(key), body: chatBody() });
  t.equal(refused.status, 429);
  const retry = Number(refused.headers['retry-after']);
  t.ok(retry >= 1 && retry <= 60, `Retry-After ${retry}`);
  t.equal(refused.headers['x-ratelimit-remaining-requests'], '0');
  t.same(JSON.parse(refused.text), {
    error: {
      message: `Rate limit reached for this API key: 3 requests per minute. Try again in ${retry} s.`,
      type: 'rate_limit_exceeded',
      param: null,
      code: 'requests_per_minute',
    },
  });
  t.equal(gw.fake.requests.length, 3, 'the refused request never reached upstream');
  const other = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(other.status, 200, 'another key is not limited');
  t.equal(other.headers['x-ratelimit-limit-requests'], undefined, 'and gets no rate-limit headers');
});

t.test('tokens per minute: counted from llama-server usage; refused once at the budget', async (t) => {
  const gw = await startGateway(t, { defaultTpm: 60 });
  const hold = reserveFor(Buffer.from(chatBody()), JSON.parse(chatBody()) as Record<string, unknown>, true, 1024);
  const first = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(first.status, 200);
  t.equal(first.headers['x-ratelimit-remaining-tokens'], String(60 - hold), 'before the answer, only its hold counts');
  await sleep(20); // the record (and its tokens) is taken when the response finishes
  const second = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(second.status, 200, '39 of 60 used: admitted');
  t.equal(second.headers['x-ratelimit-remaining-tokens'], String(Math.max(0, 21 - hold)), '39 used and this request held');
  await sleep(20);
  const third = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(third.status, 429, '78 of 60 used: refused');
  t.equal((JSON.parse(third.text) as { error: { code: string } }).error.code, 'tokens_per_minute');
  t.equal(third.headers['x-ratelimit-limit-tokens'], '60');
  t.equal(third.headers['x-ratelimit-remaining-tokens'], '0');
  t.ok(Number(third.headers['retry-after']) >= 1);
});

t.test('concurrent requests: the one over the limit gets 429 at once', async (t) => {
  const gw = await startGateway(t, { defaultConcurrency: 1 }, { headersDelayMs: 300 });
  const slow = request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await gw.fake.waitForRequests(1);
  const second = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(second.status, 429);
  t.equal(second.headers['retry-after'], '1');
  t.equal((JSON.parse(second.text) as { error: { code: string } }).error.code, 'concurrent_requests');
  t.equal((await slow).status, 200);
  t.equal(
    (await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() })).status,
    200,
    'free again after the first finished',
  );
});

t.test('Limits: windows roll over; tokens per day; headers; reset format', async (t) => {
  const counters = new MemoryCounters();
  const limits = new Limits(counters, { rpm: null, tpm: null, tpd: 100, concurrency: null });
  const key = { ...envIdentity(1), limits: { rpm: 2, tpm: null, tpd: null, concurrency: null } };
  const l = limits.of(key);
  t.same(l, { rpm: 2, tpm: null, tpd: 100, concurrency: null }, 'own limits, defaults for the rest');
  const t0 = Date.parse('2026-11-26T10:00:10Z');
  limits.admit(key.id, t0)();
  limits.admit(key.id, t0 + 1000)();
  t.match(limits.check(key.id, l, t0 + 2000), { limit: 'requests per minute', max: 2, retryAfter: 48 });
  t.equal(limits.check(key.id, l, t0 + 50_000), undefined, 'the next minute starts fresh');
  limits.addTokens(key.id, 100, t0);
  t.match(limits.check(key.id, l, t0 + 50_000), { limit: 'tokens per day', max: 100 });
  t.equal(limits.check(key.id, l, Date.parse('2026-11-27T00:00:01Z')), undefined, 'a new UTC day');
  t.same(limits.headers(key.id, l, t0 + 2000), {
    'x-ratelimit-limit-requests': '2',
    'x-ratelimit-remaining-requests': '0',
    'x-ratelimit-reset-requests': '48s',
    'x-ratelimit-limit-tokens': '100',
    'x-ratelimit-remaining-tokens': '0',
    'x-ratelimit-reset-tokens': '13h59m48s',
  });
  t.equal(resetText(0), '1s');
  t.equal(resetText(61_000), '1m1s');
  t.equal(MINUTE_MS, 60_000);
});

t.test('queue bounds and deadline: 429 for one key, 503 overall and on timeout, with Retry-After', async (t) => {
  const gw = await startGateway(t, { maxInflight: 1, maxQueue: 2, maxQueuePerKey: 1, queueTimeoutMs: 400 }, { headersDelayMs: 1500 });
  const running = request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await gw.fake.waitForRequests(1);
  const waitingA = request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await until('A waits', () => gw.app.queue.waiting === 1);
  const keyFull = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(keyFull.status, 429, 'this key already has its share waiting');
  t.equal(keyFull.headers['retry-after'], '5');
  t.equal((JSON.parse(keyFull.text) as { error: { code: string } }).error.code, 'queue_full_for_key');
  const waitingB = request(gw.port, { path: '/v1/chat/completions', headers: bearer(KEY_B), body: chatBody() });
  await until('B waits', () => gw.app.queue.waiting === 2);
  const timedOut = await waitingA;
  t.equal(timedOut.status, 503, 'waited past GATEWAY_QUEUE_TIMEOUT_MS');
  t.equal(timedOut.headers['retry-after'], '10');
  t.same(JSON.parse(timedOut.text), {
    error: {
      message: 'The model server stayed busy for 0 s while this request waited (GATEWAY_QUEUE_TIMEOUT_MS); try again shortly.',
      type: 'server_error',
      param: null,
      code: 'queue_timeout',
    },
  });
  t.equal((await waitingB).status, 503);
  t.equal((await running).status, 200);
  t.equal(gw.fake.requests.length, 1, 'nothing that timed out reached upstream');
});

t.test('the whole queue full → 503 queue_full', async (t) => {
  const gw = await startGateway(t, { maxInflight: 1, maxQueue: 1, maxQueuePerKey: 5 }, { headersDelayMs: 300 });
  const running = request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await gw.fake.waitForRequests(1);
  const waiting = request(gw.port, { path: '/v1/chat/completions', headers: bearer(KEY_B), body: chatBody() });
  await until('one waits', () => gw.app.queue.waiting === 1);
  const full = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(full.status, 503);
  t.equal(full.headers['retry-after'], '5');
  t.equal((JSON.parse(full.text) as { error: { code: string } }).error.code, 'queue_full');
  t.equal((await running).status, 200);
  t.equal((await waiting).status, 200, 'the waiting one is served when the slot frees');
});

t.test('a client that leaves while waiting leaves the queue at once and never reaches upstream', async (t) => {
  const gw = await startGateway(t, { maxInflight: 1 }, { headersDelayMs: 500 });
  const running = request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ user: 'first' }) });
  await gw.fake.waitForRequests(1);
  const req = http.request({ host: '127.0.0.1', port: gw.port, method: 'POST', path: '/v1/chat/completions', headers: bearer(KEY_B) });
  req.on('error', () => {});
  req.end(chatBody({ user: 'leaver' }));
  await until('it waits', () => gw.app.queue.waiting === 1);
  req.destroy();
  await until('it left the queue', () => gw.app.queue.waiting === 0, 1000);
  t.equal((await running).status, 200);
  await sleep(200);
  t.same(
    gw.fake.requests.map((r) => (JSON.parse(r.body.toString()) as { user: string }).user),
    ['first'],
    'llama-server never saw the request whose client left',
  );
  t.ok(gw.logs.some((l) => l.msg === 'client left while waiting for a slot; never sent upstream'));
  const after = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(after.status, 200, 'the slot was not leaked');
});

t.test('count_tokens and models do not wait in the queue', async (t) => {
  const gw = await startGateway(t, { maxInflight: 1 }, { headersDelayMs: 400 });
  const running = request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await gw.fake.waitForRequests(1);
  gw.fake.behavior.headersDelayMs = 0;
  const count = await request(gw.port, {
    path: '/v1/messages/count_tokens',
    headers: AUTH_A,
    body: '{"model":"m","messages":[{"role":"user","content":"hi"}]}',
  });
  t.equal(count.status, 200);
  const models = await request(gw.port, { path: '/v1/models', headers: AUTH_A });
  t.equal(models.status, 200);
  t.equal(gw.app.queue.waiting, 0);
  t.equal((await running).status, 200);
});

t.test('failed-auth brake: too many wrong keys from one address → 429 for a while (behind a trusted proxy)', async (t) => {
  const gw = await startGateway(t, { trustProxy: true, authFailLimit: 3, authBlockMs: 800 });
  const from = (ip: string, key: string): Promise<RawResponse> =>
    request(gw.port, { path: '/v1/models', headers: { ...bearer(key), 'cf-connecting-ip': ip } });
  for (let i = 0; i < 3; i++) t.equal((await from('203.0.113.5', `sk-guess-${i}-0123456789abcdef`)).status, 401, `guess ${i + 1}`);
  const blocked = await from('203.0.113.5', KEY_A);
  t.equal(blocked.status, 429, 'blocked, even with the right key now');
  t.equal(blocked.headers['retry-after'], '1');
  t.same(JSON.parse(blocked.text), {
    error: {
      message: 'Too many requests with a wrong API key from your address; try again in 1 s.',
      type: 'rate_limit_exceeded',
      param: null,
      code: 'too_many_failed_attempts',
    },
  });
  t.equal((await from('198.51.100.9', KEY_A)).status, 200, 'another address is not affected');
  t.ok(gw.logs.some((l) => l.msg === 'too many wrong API keys from this address: blocked for a while' && l.ip === '203.0.113.5'));
  await sleep(900);
  t.equal((await from('203.0.113.5', KEY_A)).status, 200, 'the block ends');
  t.equal(gw.fake.requests.length, 2);
});

t.test('without GATEWAY_TRUST_PROXY, forwarding headers are not believed and loopback is not braked', async (t) => {
  const gw = await startGateway(t, { authFailLimit: 2, authBlockMs: 60_000 });
  for (let i = 0; i < 4; i++) {
    const res = await request(gw.port, {
      path: '/v1/models',
      headers: { ...bearer(`sk-guess-${i}-0123456789abcdef`), 'cf-connecting-ip': `203.0.113.${i}` },
    });
    t.equal(res.status, 401);
  }
  t.equal((await request(gw.port, { path: '/v1/models', headers: AUTH_A })).status, 200, 'a tunnel (all loopback) is not locked out');
  // The brake itself: test/auth-brake.test.ts.
});

t.test('GATEWAY_MAX_INFLIGHT unset: llama-server’s /props total_slots', async (t) => {
  const gw = await startGateway(t, { maxInflight: null }, {}, { discovery: true });
  await until('the slot count is read', () => gw.app.upstreams.nodes[0]!.slots === 2);
  t.ok(
    gw.fake.requests.some((r) => r.url === '/props'),
    'asked llama-server (directly, never for a client)',
  );
  t.ok(gw.logs.some((l) => l.msg === 'model server: models and slots' && l.slots === 2));
});

/** Reads a streamed response as it arrives: its status, and the chunks with the time each came. */
function openStream(port: number, key: string, body: string): Promise<{ status: number; chunks: string[]; done: Promise<string> }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/v1/chat/completions', headers: bearer(key) }, (res) => {
      const chunks: string[] = [];
      res.setEncoding('utf8');
      const done = new Promise<string>((r) => res.on('end', () => r(chunks.join(''))));
      res.on('data', (c: string) => chunks.push(c));
      resolve({ status: res.statusCode ?? 0, chunks, done });
    });
    req.on('error', reject);
    req.end(body);
  });
}

t.test('a stream waiting in the queue is started early and kept alive with comments, then continues', async (t) => {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A, KEY_B], store);
  const gw = await startGateway(t, { maxInflight: 1 }, { headersDelayMs: 700 }, { registry, queuePingMs: 100 });
  const running = request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await gw.fake.waitForRequests(1);
  const waiting = await openStream(gw.port, KEY_B, chatBody({ stream: true }));
  t.equal(waiting.status, 200, 'headers arrive while the request still waits');
  t.equal(gw.fake.requests.length, 1, 'it has not reached llama-server yet');
  await until('a keep-alive comment', () => waiting.chunks.join('').startsWith(':\n\n'));
  t.equal((await running).status, 200);
  const text = await within(waiting.done, 5000, 'the stream ends');
  const pings = /^(:\n\n)+/.exec(text)?.[0] ?? '';
  t.ok(pings.length >= 3, `${pings.length / 3} comments while waiting`);
  t.match(
    text.slice(pings.length),
    /^data: \{"choices":\[\{"finish_reason":null,"index":0,"delta":\{"role":"assistant"/,
    'then llama-server’s stream',
  );
  t.match(text, /data: \[DONE\]\n\n$/);
  await gw.app.close();
  const rows = store.db.prepare('SELECT status, outcome, completion_tokens AS c FROM usage ORDER BY id').all();
  t.same(
    rows,
    [
      { status: 200, outcome: 'ok', c: 8 },
      { status: 200, outcome: 'ok', c: 6 },
    ],
    'recorded like any other stream',
  );
});

t.test('a started stream that times out in the queue ends with an error event', async (t) => {
  const gw = await startGateway(t, { maxInflight: 1, queueTimeoutMs: 350 }, { headersDelayMs: 1500 }, { queuePingMs: 100 });
  const running = request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await gw.fake.waitForRequests(1);
  const waiting = await openStream(gw.port, KEY_B, chatBody({ stream: true }));
  const text = await within(waiting.done, 5000, 'the stream ends');
  t.match(
    text,
    /^(:\n\n)+data: \{"error":\{"message":"The model server stayed busy for 0 s while this request waited \(GATEWAY_QUEUE_TIMEOUT_MS\); try again shortly\.","type":"server_error","param":null,"code":"queue_timeout"\}\}\n\n$/,
    'the queue timeout as its 503 says it, not as an upstream_error',
  );
  t.equal((await running).status, 200);
  t.equal(gw.fake.requests.length, 1);
});

t.test('a started stream whose upstream then fails gets the failure as an error event', async (t) => {
  const gw = await startGateway(t, { maxInflight: 1 }, { headersDelayMs: 400 }, { queuePingMs: 100 });
  const running = request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await gw.fake.waitForRequests(1);
  const waiting = await openStream(gw.port, KEY_B, chatBody({ stream: true, x_fake_context_exceeded: true }));
  await until('started early', () => waiting.chunks.length > 0);
  gw.fake.behavior.headersDelayMs = 0;
  const text = await within(waiting.done, 5000, 'the stream ends');
  t.match(
    text,
    /^(:\n\n)+data: \{"error":\{"message":"request \(5028 tokens\) exceeds the available context size \(2048 tokens\), try increasing it","type":"upstream_error","param":null,"code":"exceed_context_size_error"\}\}\n\n$/,
  );
  t.equal((await running).status, 200);
});

t.test('a stream that meets a loading llama-server waits for it kept alive with comments, then continues', async (t) => {
  const gw = await startGateway(t, {}, { loading: true }, { queuePingMs: 100 });
  const waiting = await openStream(gw.port, KEY_A, chatBody({ stream: true }));
  t.equal(waiting.status, 200, 'headers arrive while it waits for the server to load');
  await until('two keep-alive comments', () => waiting.chunks.join('').startsWith(':\n\n:\n\n'));
  t.equal(gw.app.upstreams.nodes[0]!.state, 'loading');
  gw.fake.behavior.loading = false;
  const text = await within(waiting.done, 10_000, 'the stream ends');
  const pings = /^(:\n\n)+/.exec(text)?.[0] ?? '';
  t.match(
    text.slice(pings.length),
    /^data: \{"choices":\[\{"finish_reason":null,"index":0,"delta":\{"role":"assistant"/,
    'then llama-server’s stream',
  );
  t.match(text, /data: \[DONE\]\n\n$/);
});
