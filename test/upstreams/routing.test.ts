// Several fake llama-servers behind one real gateway on real sockets (issue 14, "How it is shown"):
// routing by model (ids, aliases, unknown and missing models, per-key lists, the OpenAI SDK),
// balancing one model over two servers (2 + 2, the rest waiting in the gateway, a free slot taken
// at once), fairness across keys within a model, models that never wait on each other, a loading
// server held not failed, failover before the first byte and none after, cancellation freeing the
// right server's slot, prompt-cache affinity (cached_tokens with affinity on vs off), and the
// per-upstream /metrics series.
// Slow requests hang upstream (headersDelayMs / chunkDelayMs far in the future) until their client
// leaves, so every "while X is busy" holds for as long as the test needs it. Two places only need
// requests to overlap, with wide margins: the 2 + 2 run (1 s each) and affinity's first round (300 ms).
// Which client's request reached which server is told by a marker in its prompt.
import http from 'node:http';
import OpenAI from 'openai';
import t from 'tap';
import type { Config } from '../../src/config.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import type { UpstreamNode } from '../../src/upstreams/upstream-set.js';
import { recordings, startFakeLlama, type FakeBehavior, type FakeLlama, type RecordedRequest } from '../fixtures/fake-llama.js';
import {
  AUTH_A,
  KEY_A,
  KEY_B,
  bearer,
  metricValue,
  recordedBody,
  request,
  startGateway,
  tempStore,
  until,
  withoutUsageChunk,
  type Gateway,
  type GatewayOptions,
  type Teardown,
} from '../helpers.js';

const JSON_TYPE = 'application/json; charset=utf-8';
/** A delay that never ends: the fake holds the request until its client (the gateway) leaves. */
const FOREVER = 1e12;
const CHAT = '/v1/chat/completions';
const EMBEDDINGS = '/v1/embeddings';
/** The paths of work (what takes a slot): the gateway's own /health, /v1/models and /props polls aside. */
const WORK = new Set([CHAT, EMBEDDINGS]);
/** total_slots in the recorded /props (a fake with `slots` null reports it) */
const RECORDED_SLOTS = 2;

async function fake(t: Teardown, behavior: Partial<FakeBehavior>): Promise<FakeLlama> {
  const f = await startFakeLlama(behavior);
  t.teardown(() => f.close());
  return f;
}

/**
 * A gateway over the fakes (discovery on: their models and /props slots are read), once every
 * server is ready with its models known. (startGateway's own fake stays unused.)
 */
async function gatewayOver(
  t: Teardown,
  fakes: FakeLlama[],
  overrides: Partial<Config> = {},
  options: GatewayOptions = {},
): Promise<Gateway> {
  const gw = await startGateway(t, { upstreams: fakes.map((f) => f.url), maxInflight: null, ...overrides }, {}, options);
  await until(
    'every server ready with its models and slots',
    () =>
      gw.app.upstreams.nodes.every(
        (n, i) => n.state === 'ready' && n.models.length > 0 && n.slots === (fakes[i]!.behavior.slots ?? RECORDED_SLOTS),
      ),
    10_000,
  );
  return gw;
}

/** The generation requests a fake received (not the gateway's polls). */
const work = (f: FakeLlama): RecordedRequest[] => f.requests.filter((r) => WORK.has(r.url));
/** Those still open at the fake. */
const open = (f: FakeLlama): RecordedRequest[] => work(f).filter((r) => r.closedAt === undefined);

/** A chat body whose prompt carries `marker` (to tell which client's request reached which server). */
function chat(model: string, marker: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ model, messages: [{ role: 'user', content: marker }], max_tokens: 8, ...extra });
}

/** The marker of a recorded chat request. */
function markerOf(r: RecordedRequest): string {
  const json = JSON.parse(r.body.toString('utf8')) as { messages?: { content: string }[] };
  return json.messages?.[0]?.content ?? '';
}

/** A recording's body as a fake run with `-a model` sends it. */
function recordedAs(name: string, model: string): string {
  return recordedBody(recordings[name]!.chunks).replaceAll('"model":"gpt-oss-20b"', `"model":"${model}"`);
}

interface Sent {
  readonly req: http.ClientRequest;
  /** the response has started (status and headers received) */
  started(): boolean;
  /** the whole response (rejects if the request was destroyed) */
  readonly done: Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string }>;
}

/** A POST on its own connection that the test may destroy at will (the client leaving). */
function send(port: number, key: string, path: string, body: string): Sent {
  const req = http.request({
    host: '127.0.0.1',
    port,
    method: 'POST',
    path,
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    agent: false,
  });
  let started = false;
  const done = new Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string }>((resolve, reject) => {
    req.on('response', (res) => {
      started = true;
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  done.catch(() => {}); // some are destroyed on purpose
  req.end(body);
  return { req, started: () => started, done };
}

async function metrics(gw: Gateway): Promise<string> {
  const res = await request(gw.port, { path: '/metrics' });
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  return res.text;
}

// ---------------------------------------------------------------------------------------------
// 1. Routing by model

t.test('routing by model: chat by id or alias to its server only, embeddings to theirs; unknown, missing, not allowed', async (t) => {
  const a = await fake(t, { modelId: 'chat', aliases: ['gpt-4o'] });
  const b = await fake(t, { modelId: 'embed' });
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A], store);
  const gw = await gatewayOver(t, [a, b], {}, { registry });
  const chatOnly = store.create({ name: 'chat-only', models: ['chat'] }).key;
  // allowed a model no server serves: it passes the key's policy and is not found
  const chatAnd70b = store.create({ name: 'chat-and-70b', models: ['chat', 'llama-70b'] }).key;
  registry.reload();

  for (const model of ['chat', 'gpt-4o']) {
    const res = await request(gw.port, { path: CHAT, headers: AUTH_A, body: chat(model, `to ${model}`) });
    t.equal(res.status, 200, model);
    t.equal(res.headers['content-type'], JSON_TYPE);
    t.equal(res.text, recordedAs('chat-nonstream', 'chat'), `${model}: the chat server's answer, whole`);
  }
  const embedBody = JSON.stringify({ model: 'embed', input: 'hello' });
  const emb = await request(gw.port, { path: EMBEDDINGS, headers: AUTH_A, body: embedBody });
  t.equal(emb.status, 200);
  t.equal(emb.text, recordedAs('embeddings', 'embed'), "the embedding server's answer, whole");
  t.same(
    work(a).map((r) => [r.url, markerOf(r)]),
    [
      [CHAT, 'to chat'],
      [CHAT, 'to gpt-4o'],
    ],
    'both chats on the chat server, bodies as sent',
  );
  t.same(
    work(b).map((r) => [r.url, r.body.toString('utf8')]),
    [[EMBEDDINGS, embedBody]],
    'the embeddings on the embedding server only',
  );

  const unknown = await request(gw.port, { path: CHAT, headers: AUTH_A, body: chat('gpt-5', 'x') });
  t.equal(unknown.status, 404);
  t.equal(unknown.headers['content-type'], JSON_TYPE);
  t.same(JSON.parse(unknown.text), {
    error: {
      message: "The model 'gpt-5' does not exist or is not served now. Available to this key: chat, gpt-4o, embed.",
      type: 'invalid_request_error',
      param: 'model',
      code: 'model_not_found',
    },
  });
  const unknownForChatOnly = await request(gw.port, { path: CHAT, headers: bearer(chatAnd70b), body: chat('llama-70b', 'x') });
  t.equal(unknownForChatOnly.status, 404);
  t.same(JSON.parse(unknownForChatOnly.text), {
    error: {
      message: "The model 'llama-70b' does not exist or is not served now. Available to this key: chat.",
      type: 'invalid_request_error',
      param: 'model',
      code: 'model_not_found',
    },
  });
  const noModelChatOnly = await request(gw.port, {
    path: CHAT,
    headers: bearer(chatOnly),
    body: JSON.stringify({ messages: [{ role: 'user', content: 'no model' }] }),
  });
  t.equal(noModelChatOnly.status, 403, 'a key kept to certain models names one, as with one server');
  t.same(JSON.parse(noModelChatOnly.text), {
    error: {
      message: 'This API key may only use certain models; name one in "model".',
      type: 'invalid_request_error',
      param: 'model',
      code: 'model_not_allowed',
    },
  });
  const notAllowed = await request(gw.port, { path: EMBEDDINGS, headers: bearer(chatOnly), body: embedBody });
  t.equal(notAllowed.status, 403);
  t.same(JSON.parse(notAllowed.text), {
    error: {
      message: "This API key may not use the model 'embed'.",
      type: 'invalid_request_error',
      param: 'model',
      code: 'model_not_allowed',
    },
  });
  const allowed = await request(gw.port, { path: CHAT, headers: bearer(chatOnly), body: chat('chat', 'chat-only key') });
  t.equal(allowed.status, 200, 'the restricted key uses its model');

  const none = await request(gw.port, {
    path: CHAT,
    headers: AUTH_A,
    body: JSON.stringify({ messages: [{ role: 'user', content: 'no model' }] }),
  });
  t.equal(none.status, 400);
  t.same(JSON.parse(none.text), {
    error: {
      message: 'This gateway serves several models; say which one in "model". Available to this key: chat, gpt-4o, embed.',
      type: 'invalid_request_error',
      param: 'model',
      code: 'model_required',
    },
  });
  t.equal(work(a).length, 3, 'nothing refused reached a server');
  t.equal(work(b).length, 1);

  // The OpenAI SDK, both ways.
  const openai = new OpenAI({ apiKey: KEY_A, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  const completion = await openai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'sdk chat' }] });
  t.strictSame(completion, JSON.parse(recordedAs('chat-nonstream', 'chat')), 'SDK chat: the whole completion');
  const embedding = await openai.embeddings.create({ model: 'embed', input: 'sdk embed', encoding_format: 'float' });
  t.strictSame(embedding, JSON.parse(recordedAs('embeddings', 'embed')), 'SDK embeddings: the whole answer');
  const sdkMissing = await openai.chat.completions
    .create({ model: 'gpt-5', messages: [{ role: 'user', content: 'x' }] })
    .catch((e: unknown) => e);
  t.ok(sdkMissing instanceof OpenAI.NotFoundError, 'unknown model: the SDK’s NotFoundError');
  t.equal((sdkMissing as InstanceType<typeof OpenAI.NotFoundError>).code, 'model_not_found');
  t.same([work(a).length, work(b).length], [4, 2], 'SDK calls routed by model too');
  t.equal(markerOf(work(a)[3]!), 'sdk chat');
  t.equal((JSON.parse(work(b)[1]!.body.toString('utf8')) as { input: unknown }).input, 'sdk embed');
});

// ---------------------------------------------------------------------------------------------
// 2. One model on two servers

/**
 * Two servers of model 'm', 2 slots each, and a gateway over them; `behavior` applies once the
 * gateway has read their models and slots (a delay also holds llama-server's /v1/models and /props).
 */
async function twoOfOneModel(t: Teardown, behavior: Partial<FakeBehavior> = {}, overrides: Partial<Config> = {}) {
  const a = await fake(t, { modelId: 'm', slots: 2 });
  const b = await fake(t, { modelId: 'm', slots: 2 });
  const gw = await gatewayOver(t, [a, b], overrides);
  // Token counting (the usage completer's, for a request that left) is answered at once whatever the delay.
  Object.assign(a.behavior, { countDelayMs: 0 }, behavior);
  Object.assign(b.behavior, { countDelayMs: 0 }, behavior);
  const [nodeA, nodeB] = gw.app.upstreams.nodes as [UpstreamNode, UpstreamNode];
  return { a, b, gw, nodeA, nodeB };
}

/** The client whose marker a fake's request carries. */
function clientOf(sent: Map<string, Sent>, r: RecordedRequest): Sent {
  const s = sent.get(markerOf(r));
  if (s === undefined) throw new Error(`no client sent ${markerOf(r)}`);
  return s;
}

const CHAT_M = () => recordedAs('chat-nonstream', 'm');
/** A chat stream as a client that did not ask for usage gets it (the gateway asked and hides the usage chunk). */
const STREAM_M = () => withoutUsageChunk(recordedAs('chat-stream-include-usage', 'm'));

t.test('one model on two servers: 4 slow requests run 2 + 2, all answered whole', async (t) => {
  // Slow enough that all four are at their servers at once (nothing waits on it but maxBusySeen).
  const { a, b, gw } = await twoOfOneModel(t, { headersDelayMs: 1000 });
  const answers = await Promise.all([0, 1, 2, 3].map((i) => send(gw.port, i % 2 === 0 ? KEY_A : KEY_B, CHAT, chat('m', `r${i}`)).done));
  for (const res of answers) {
    t.equal(res.status, 200);
    t.equal(res.headers['content-type'], JSON_TYPE);
    t.equal(res.text, CHAT_M());
  }
  t.same([work(a).length, work(b).length], [2, 2], 'two on each server');
  t.same([a.maxBusySeen, b.maxBusySeen], [2, 2], 'each ran two at once, never more');
});

t.test('one model on two servers: 6 at once → 4 run, 2 wait in the gateway; a slot freed on B goes to a waiter at once', async (t) => {
  // Everything hangs upstream until its client leaves: the state holds as long as the test looks.
  const { a, b, gw, nodeA, nodeB } = await twoOfOneModel(t, { headersDelayMs: FOREVER });
  const sent = new Map<string, Sent>();
  for (let i = 0; i < 6; i++) sent.set(`r${i}`, send(gw.port, i % 2 === 0 ? KEY_A : KEY_B, CHAT, chat('m', `r${i}`, { stream: true })));
  const q = gw.app.queue;
  await until('4 running, 2 waiting', () => q.running === 4 && q.waiting === 2 && open(a).length === 2 && open(b).length === 2);
  t.same([q.runningOn(nodeA), q.runningOn(nodeB)], [2, 2]);
  t.same([a.busySlots(), b.busySlots()], [2, 2], 'each server runs 2');

  // 9. /metrics, a local scrape (no key): per-upstream series and the model's waiters.
  const text = await metrics(gw);
  for (const upstream of ['upstream-1', 'upstream-2']) {
    t.equal(metricValue(text, 'llm_gateway_upstream_in_flight', { upstream }), 2, `${upstream} in flight`);
    t.equal(metricValue(text, 'llm_gateway_upstream_slots', { upstream }), 2, `${upstream} slots`);
    t.equal(metricValue(text, 'llm_gateway_upstream_state', { upstream, state: 'ready' }), 1, `${upstream} ready`);
    t.equal(metricValue(text, 'llm_gateway_upstream_state', { upstream, state: 'down' }), 0);
    t.equal(metricValue(text, 'llm_gateway_upstream_failures_total', { upstream }), 0);
  }
  t.equal(metricValue(text, 'llm_gateway_model_requests_waiting', { model: 'm' }), 2, 'two wait for model m');

  // B answers what reaches it from now on at once; A keeps hanging (full the whole time).
  b.behavior.headersDelayMs = 0;
  const waiters = [...sent.keys()].filter((m) => ![...work(a), ...work(b)].some((r) => markerOf(r) === m));
  t.equal(waiters.length, 2);
  // A client on B leaves: its slot goes to the first waiter at once; that one finishes on B, and
  // the second waiter starts there in turn. A, full, gets neither.
  clientOf(sent, open(b)[0]!).req.destroy();
  const done = await Promise.all(waiters.map((m) => sent.get(m)!.done));
  for (const res of done) {
    t.equal(res.status, 200);
    t.equal(res.headers['content-type'], 'text/event-stream');
    t.equal(res.text, STREAM_M(), 'the waiter’s stream, whole');
  }
  t.same(
    work(b)
      .slice(2)
      .map((r) => markerOf(r))
      .sort(),
    [...waiters].sort(),
    'both waiters ran on B',
  );
  t.equal(work(a).length, 2, 'A got no more than its two');
  t.equal(q.waiting, 0);
  t.same([q.runningOn(nodeA), q.runningOn(nodeB)], [2, 1]);
  t.same([a.maxBusySeen, b.maxBusySeen], [2, 2], 'nothing piled up in a server’s own queue');

  for (const s of sent.values()) s.req.destroy();
  await until('every slot given back', () => q.running === 0);
});

// ---------------------------------------------------------------------------------------------
// 3. Fairness across keys within a model

t.test('fairness within a model over two servers: B’s one request starts before A’s 5th', async (t) => {
  // keySlots all: A may take every slot, so only the queue's order lets B in.
  const { a, b, gw } = await twoOfOneModel(t, { headersDelayMs: FOREVER }, { keySlots: 'all' });
  const q = gw.app.queue;
  const sent = new Map<string, Sent>();
  for (let i = 0; i < 8; i++) sent.set(`a${i}`, send(gw.port, KEY_A, CHAT, chat('m', `a${i}`, { stream: true })));
  await until('A: 4 running, 4 waiting', () => q.running === 4 && q.waiting === 4 && open(a).length + open(b).length === 4);
  sent.set('b0', send(gw.port, KEY_B, CHAT, chat('m', 'b0', { stream: true })));
  await until('B waiting too', () => q.waiting === 5);
  const firstFour = [...work(a), ...work(b)].map(markerOf);
  a.behavior.headersDelayMs = 0;
  b.behavior.headersDelayMs = 0;
  // One of A's running requests ends: the free slot goes to B (nothing running) before A's next.
  clientOf(sent, open(a)[0]!).req.destroy();
  const bAnswer = await sent.get('b0')!.done;
  t.equal(bAnswer.status, 200);
  t.equal(bAnswer.text, STREAM_M());
  // The rest of A's: its running ones leave, its waiters run.
  for (const m of firstFour) sent.get(m)!.req.destroy();
  const rest = await Promise.all([...sent.keys()].filter((m) => m.startsWith('a') && !firstFour.includes(m)).map((m) => sent.get(m)!.done));
  t.same(
    rest.map((r) => r.status),
    [200, 200, 200, 200],
  );
  const all = [...work(a), ...work(b)];
  const bAt = all.find((r) => markerOf(r) === 'b0')!.receivedAt;
  const laterA = all.filter((r) => markerOf(r).startsWith('a') && !firstFour.includes(markerOf(r)));
  t.equal(laterA.length, 4);
  t.ok(
    laterA.every((r) => r.receivedAt > bAt),
    'B reached a server before any of A’s 5th to 8th',
  );
});

// ---------------------------------------------------------------------------------------------
// 4. Separate models don't wait on each other

t.test('separate models: embeddings answered at once while every chat slot is busy and chats wait', async (t) => {
  const a = await fake(t, { modelId: 'chat', slots: 2, countDelayMs: 0 });
  const b = await fake(t, { modelId: 'embed', slots: 2 });
  const gw = await gatewayOver(t, [a, b]);
  a.behavior.headersDelayMs = FOREVER;
  const q = gw.app.queue;
  const chats = [0, 1, 2].map((i) => send(gw.port, i === 2 ? KEY_B : KEY_A, CHAT, chat('chat', `c${i}`, { stream: true })));
  await until('both chat slots busy, one chat waiting', () => open(a).length === 2 && q.waitingIn('chat') === 1);
  const res = await request(gw.port, { path: EMBEDDINGS, headers: AUTH_A, body: JSON.stringify({ model: 'embed', input: 'now' }) });
  t.equal(res.status, 200);
  t.equal(res.text, recordedAs('embeddings', 'embed'));
  t.equal(q.waitingIn('chat'), 1, 'the chat still waits');
  t.equal(open(a).length, 2, 'and the chat server is still busy');
  t.equal(work(b).length, 1);
  for (const c of chats) c.req.destroy();
  await until('every slot given back', () => q.running === 0 && q.waiting === 0);
});

// ---------------------------------------------------------------------------------------------
// 5. Loading held, not failed

const health = async (gw: Gateway) => {
  const res = await request(gw.port, { path: '/health' });
  return { status: res.status, type: res.headers['content-type'], body: JSON.parse(res.text) as unknown };
};

t.test('a loading server: its model’s requests wait in the gateway and are answered once it is ready', async (t) => {
  const a = await fake(t, { modelId: 'chat' });
  const b = await fake(t, { modelId: 'embed' });
  const gw = await gatewayOver(t, [a, b]);
  const q = gw.app.queue;
  const nodeB = gw.app.upstreams.nodes[1]!;
  const embedBody = JSON.stringify({ model: 'embed', input: 'while loading' });
  b.behavior.loading = true;
  // The first request hears llama-server's 503 "Loading model": the server is marked loading and
  // the request goes back to the queue for it.
  const first = send(gw.port, KEY_A, EMBEDDINGS, embedBody);
  await until('B marked loading, its request waiting', () => nodeB.state === 'loading' && q.waiting === 1);
  // The next one waits for it without being sent.
  const second = send(gw.port, KEY_B, EMBEDDINGS, embedBody);
  await until('the second waits too', () => q.waiting === 2);
  t.equal(work(b).length, 1, 'only the first reached the loading server');
  t.same(await health(gw), {
    status: 503,
    type: JSON_TYPE,
    body: {
      status: 'loading',
      upstreams: [
        { name: 'upstream-1', state: 'ready', slots: RECORDED_SLOTS },
        { name: 'upstream-2', state: 'loading', slots: RECORDED_SLOTS },
      ],
    },
  });
  t.equal(first.started() || second.started(), false, 'no answer yet');
  // Chat, on the other server, is not held up meanwhile.
  const chatRes = await request(gw.port, { path: CHAT, headers: AUTH_A, body: chat('chat', 'meanwhile') });
  t.equal(chatRes.status, 200);

  b.behavior.loading = false; // its next /health probe (1 s) says ready
  for (const res of await Promise.all([first.done, second.done])) {
    t.equal(res.status, 200);
    t.equal(res.text, recordedAs('embeddings', 'embed'), 'answered once the server was ready');
  }
  t.equal(nodeB.state, 'ready');
  t.equal(work(b).length, 3);
  t.equal(nodeB.failures, 1, 'the 503 counted once');
});

t.test('one model on two servers, one loading: requests go to the other', async (t) => {
  const { a, b, gw, nodeB } = await twoOfOneModel(t);
  const q = gw.app.queue;
  a.behavior.headersDelayMs = FOREVER;
  b.behavior.loading = true;
  // s1 takes a slot on A (hanging there); s2 goes to B (less loaded), hears "Loading model", and is
  // sent to A instead.
  const s1 = send(gw.port, KEY_B, CHAT, chat('m', 's1', { stream: true }));
  await until('s1 on A', () => open(a).length === 1);
  // (Another key: with B loading, A's 2 slots are the model's usable ones, and one key holds at
  // most all but one of them: GATEWAY_KEY_SLOTS auto.)
  const s2 = send(gw.port, KEY_A, CHAT, chat('m', 's2', { stream: true }));
  await until('s2 on A after B said it is loading', () => open(a).length === 2);
  t.equal(nodeB.state, 'loading');
  t.same(work(b).map(markerOf), ['s2']);
  t.equal(q.waiting, 0);
  s1.req.destroy();
  s2.req.destroy();
  await until('slots back', () => q.running === 0);
  // While B loads, everything goes to A, nothing to B.
  a.behavior.headersDelayMs = 0;
  const answers = await Promise.all([0, 1, 2, 3].map((i) => send(gw.port, i % 2 ? KEY_A : KEY_B, CHAT, chat('m', `l${i}`)).done));
  t.same(
    answers.map((r) => [r.status, r.text === CHAT_M()]),
    [
      [200, true],
      [200, true],
      [200, true],
      [200, true],
    ],
  );
  t.equal(work(a).filter((r) => markerOf(r).startsWith('l')).length, 4, 'all four on A');
  t.equal(work(b).length, 1, 'none sent to the loading server');
});

// ---------------------------------------------------------------------------------------------
// 6. Failover before the first byte, none after

t.test('failover: B refuses connections → its requests go to A; B marked down, then back and used again', async (t) => {
  const { a, b, gw, nodeA, nodeB } = await twoOfOneModel(t);
  const q = gw.app.queue;
  // s1 hangs on A for the whole test, so that the next request is placed on B (the less loaded).
  // It is another key's: with B down, A's 2 slots are the usable ones, and one key holds at most
  // all but one of them (GATEWAY_KEY_SLOTS auto).
  a.behavior.headersDelayMs = FOREVER;
  const s1 = send(gw.port, KEY_B, CHAT, chat('m', 's1', { stream: true }));
  await until('s1 on A', () => open(a).length === 1);
  a.behavior.headersDelayMs = 0;

  await b.refuse(); // the gateway still thinks B is ready
  t.equal(nodeB.state, 'ready');
  const r1 = await request(gw.port, { path: CHAT, headers: AUTH_A, body: chat('m', 'r1') });
  t.equal(r1.status, 200, 'answered by A');
  t.equal(r1.text, CHAT_M());
  t.same(work(a).map(markerOf), ['s1', 'r1'], 'sent to A after B refused');
  t.equal(nodeB.state, 'down', 'B marked down');
  t.same([nodeA.failures, nodeB.failures], [0, 1]);
  t.same(await health(gw), {
    status: 200,
    type: JSON_TYPE,
    body: {
      status: 'degraded',
      upstreams: [
        { name: 'upstream-1', state: 'ready', slots: 2 },
        { name: 'upstream-2', state: 'down', slots: 2 },
      ],
    },
  });
  const text = await metrics(gw);
  t.equal(metricValue(text, 'llm_gateway_upstream_failures_total', { upstream: 'upstream-2' }), 1);
  t.equal(metricValue(text, 'llm_gateway_upstream_failures_total', { upstream: 'upstream-1' }), 0);
  t.equal(metricValue(text, 'llm_gateway_upstream_state', { upstream: 'upstream-2', state: 'down' }), 1);
  t.equal(metricValue(text, 'llm_gateway_upstream_state', { upstream: 'upstream-2', state: 'ready' }), 0);
  t.equal(metricValue(text, 'llm_gateway_upstream_in_flight', { upstream: 'upstream-1' }), 1, 's1');
  // While B is down, nothing is tried there.
  const r2 = await request(gw.port, { path: CHAT, headers: AUTH_A, body: chat('m', 'r2') });
  t.equal(r2.status, 200);
  t.equal(nodeB.failures, 1, 'B not tried again');

  await b.accept();
  await until('B ready again after its probe', () => nodeB.state === 'ready', 10_000);
  const r3 = await request(gw.port, { path: CHAT, headers: AUTH_A, body: chat('m', 'r3') });
  t.equal(r3.status, 200);
  t.equal(r3.text, CHAT_M());
  t.same(work(b).map(markerOf), ['r3'], 'B used again');
  t.same(work(a).map(markerOf), ['s1', 'r1', 'r2']);
  t.equal((await health(gw)).status, 200);
  s1.req.destroy();
  await until('slots back', () => q.running === 0);
});

t.test('failover: a 502 or 503 from B before its answer → sent to A once; both failing → the error passed on', async (t) => {
  const { a, b, gw, nodeB } = await twoOfOneModel(t);
  a.behavior.headersDelayMs = FOREVER;
  const s1 = send(gw.port, KEY_B, CHAT, chat('m', 's1', { stream: true }));
  await until('s1 on A', () => open(a).length === 1);
  a.behavior.headersDelayMs = 0;

  let failures = 0;
  for (const [status, body] of [
    [502, '{"error":{"code":502,"message":"fake bad gateway","type":"server_error"}}'],
    [503, '{"error":{"code":503,"message":"fake unavailable","type":"unavailable_error"}}'],
  ] as const) {
    b.behavior.failWith = { status, body };
    const res = await request(gw.port, { path: CHAT, headers: AUTH_A, body: chat('m', `f${status}`) });
    t.equal(res.status, 200, `${status} from B: answered by A`);
    t.equal(res.text, CHAT_M());
    t.same([markerOf(work(b).at(-1)!), markerOf(work(a).at(-1)!)], [`f${status}`, `f${status}`], 'tried on B, then on A');
    t.equal(nodeB.failures, ++failures);
    t.equal(nodeB.state, 'down');
    b.behavior.failWith = null;
    await until('B ready again after its probe', () => nodeB.state === 'ready', 10_000);
  }

  // Both fail: one retry only, and the second server's error goes to the client as it came.
  const both = '{"error":{"code":502,"message":"fake bad gateway","type":"server_error"}}';
  a.behavior.failWith = { status: 502, body: both };
  b.behavior.failWith = { status: 502, body: both };
  const aBefore = work(a).length;
  const bBefore = work(b).length;
  const res = await request(gw.port, { path: CHAT, headers: AUTH_A, body: chat('m', 'both') });
  t.equal(res.status, 502);
  t.equal(res.headers['content-type'], JSON_TYPE);
  t.equal(res.text, both);
  t.same([work(a).length - aBefore, work(b).length - bBefore], [1, 1], 'once on each, no more');
  s1.req.destroy();
});

t.test('no failover after the first byte: a stream cut mid-way on B ends with an error event, not re-sent to A', async (t) => {
  const { a, b, gw } = await twoOfOneModel(t);
  a.behavior.headersDelayMs = FOREVER;
  const s1 = send(gw.port, KEY_B, CHAT, chat('m', 's1', { stream: true }));
  await until('s1 on A', () => open(a).length === 1);
  b.behavior.cutAfterChunks = 2;
  const res = await request(gw.port, { path: CHAT, headers: AUTH_A, body: chat('m', 'cut', { stream: true }) });
  t.equal(res.status, 200, 'the stream had started');
  t.equal(res.headers['content-type'], 'text/event-stream');
  const sent = Buffer.concat(recordings['chat-stream-include-usage']!.chunks.slice(0, 2))
    .toString('utf8')
    .replaceAll('"model":"gpt-oss-20b"', '"model":"m"');
  t.equal(
    res.text,
    `${sent}data: {"error":{"message":"The model server (llama-server) closed the stream before it was complete.","type":"upstream_error","param":null,"code":"upstream_stream_broken"}}\n\n`,
    'what B sent, then the error event',
  );
  t.same(work(b).map(markerOf), ['cut']);
  t.same(work(a).map(markerOf), ['s1'], 'not sent to A');
  s1.req.destroy();
});

// ---------------------------------------------------------------------------------------------
// 7. Cancellation frees the right server's slot

t.test('a client leaving a stream on B: B sees the close, B’s slot is given back, A untouched', async (t) => {
  const { a, b, gw, nodeA, nodeB } = await twoOfOneModel(t);
  const q = gw.app.queue;
  a.behavior.headersDelayMs = FOREVER;
  const onA = send(gw.port, KEY_A, CHAT, chat('m', 'on A', { stream: true }));
  await until('one on A', () => open(a).length === 1);
  b.behavior.chunkDelayMs = FOREVER; // the first chunk, then nothing
  const onB = send(gw.port, KEY_A, CHAT, chat('m', 'on B', { stream: true }));
  await until('the stream on B has started', () => onB.started() && open(b).length === 1);
  t.same([q.runningOn(nodeA), q.runningOn(nodeB)], [1, 1]);
  const upstream = open(b)[0]!;
  onB.req.destroy();
  await upstream.closed;
  t.equal(upstream.abortedByClient, true, 'B saw its client (the gateway) go away');
  await until('B’s slot given back', () => q.runningOn(nodeB) === 0);
  t.equal(q.runningOn(nodeA), 1, 'A still runs its request');
  t.same(open(a).map(markerOf), ['on A'], 'A’s request untouched');
  t.equal(work(a).length, 1);
  onA.req.destroy();
  await until('A’s slot given back', () => q.running === 0);
});

// ---------------------------------------------------------------------------------------------
// 8. Prompt-cache affinity

interface Turn {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/**
 * Two conversations, TURNS turns each, over two servers of one model with one slot each and the
 * prompt cache emulated (each slot keeps its last prompt; cached_tokens = the shared prefix). Each
 * round sends both conversations' next turn at once, in alternating order, so that least-loaded
 * placement alone puts a conversation on the other server every round. Returns the cached_tokens
 * the servers reported, summed, and the prompt tokens.
 */
async function conversations(t: Teardown, affinity: boolean): Promise<{ cached: number; prompt: number; switches: number }> {
  const TURNS = 6;
  const a = await fake(t, { modelId: 'm', slots: 1, cache: true });
  const b = await fake(t, { modelId: 'm', slots: 1, cache: true });
  const gw = await gatewayOver(t, [a, b], { affinity });
  // The two requests of a round overlap at the servers: the second is placed while the first runs.
  a.behavior.headersDelayMs = 300;
  b.behavior.headersDelayMs = 300;
  const talks: Turn[][] = [0, 1].map((c) => [
    { role: 'system', content: `Conversation ${c}. You are a patient assistant who answers questions about tide tables, briefly.` },
    { role: 'user', content: `Conversation ${c}, question 0: when is high tide at harbour ${c}?` },
  ]);
  let cached = 0;
  let prompt = 0;
  const where: string[][] = [[], []];
  for (let round = 0; round < TURNS; round++) {
    const order = round % 2 === 0 ? [0, 1] : [1, 0];
    const inFlight: { c: number; done: Sent['done'] }[] = [];
    for (const c of order) {
      const s = send(gw.port, c === 0 ? KEY_A : KEY_B, CHAT, JSON.stringify({ model: 'm', messages: talks[c], max_tokens: 8 }));
      inFlight.push({ c, done: s.done });
      // The first round's first turn is at its server before the second is sent (so they overlap).
      if (round === 0 && c === 0) await until('the first turn at a server', () => open(a).length + open(b).length === 1);
    }
    for (const { c, done } of inFlight) {
      const res = await done;
      if (res.status !== 200) throw new Error(`turn ${round} of conversation ${c}: ${res.status} ${res.text}`);
      const answer = JSON.parse(res.text) as {
        choices: { message: { content: string } }[];
        usage: { prompt_tokens: number; prompt_tokens_details: { cached_tokens: number } };
      };
      cached += answer.usage.prompt_tokens_details.cached_tokens;
      prompt += answer.usage.prompt_tokens;
      talks[c]!.push(
        { role: 'assistant', content: answer.choices[0]!.message.content },
        { role: 'user', content: `Conversation ${c}, question ${round + 1}: and the round after that?` },
      );
    }
    // Which server ran each conversation's turn this round.
    for (const c of [0, 1]) {
      const onA = work(a).some((r) => r.body.includes(`question ${round}: `) && r.body.includes(`Conversation ${c}.`));
      where[c]!.push(onA ? 'A' : 'B');
    }
  }
  const switches = where.reduce((n, w) => n + w.filter((s, i) => i > 0 && s !== w[i - 1]).length, 0);
  return { cached, prompt, switches };
}

t.test('prompt-cache affinity: more cached_tokens with affinity on than off', async (t) => {
  const on = await conversations(t, true);
  const off = await conversations(t, false);
  t.comment(`affinity on:  cached_tokens ${on.cached} of ${on.prompt} prompt tokens, ${on.switches} server switches`);
  t.comment(`affinity off: cached_tokens ${off.cached} of ${off.prompt} prompt tokens, ${off.switches} server switches`);
  t.ok(on.cached > off.cached, 'affinity raises cached_tokens');
  t.equal(on.switches, 0, 'with affinity each conversation stays on its server');
});

t.test('both servers refuse: 502, and each is marked down and counted (the second failure too)', async (t) => {
  const a = await fake(t, { modelId: 'm', slots: 2 });
  const b = await fake(t, { modelId: 'm', slots: 2 });
  const gw = await gatewayOver(t, [a, b]);
  const [nodeA, nodeB] = gw.app.upstreams.nodes;
  await a.refuse();
  await b.refuse();
  const res = await request(gw.port, { path: CHAT, headers: AUTH_A, body: chat('m', 'r') });
  t.equal(res.status, 502);
  t.equal((JSON.parse(res.text) as { error: { code: string } }).error.code, 'upstream_unreachable');
  t.same(
    [nodeA!.state, nodeB!.state, nodeA!.failures + nodeB!.failures],
    ['down', 'down', 2],
    'tried once on each, both marked down at once',
  );
  t.equal(gw.app.queue.running, 0, 'no slot left taken');
});
