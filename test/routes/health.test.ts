// Health and the upstream key: /healthz is the gateway alone, /health is the llama-servers'
// readiness (200 ok or degraded / 503 loading / 502 down, with each server's name, state, slots and
// never a URL or a model id), both public; LLM_UPSTREAM_API_KEY is what upstream sees as Authorization,
// and without it llama-server's own 401 passes through.
import t from 'tap';
import { recordings, startFakeLlama, type FakeBehavior, type FakeLlama } from '../fixtures/fake-llama.js';
import {
  AUTH_A,
  KEY_A,
  chatBody,
  freePort,
  recordedBody,
  request,
  startGateway,
  until,
  withoutUsageChunk,
  type Gateway,
  type Teardown,
} from '../helpers.js';

const JSON_TYPE = 'application/json; charset=utf-8';
const OK = '{"status":"ok"}';

/** The /health body of one server without discovery (tests of one upstream: models unknown, slots fixed at 4). */
function oneServer(status: string, state: string): string {
  return JSON.stringify({ status, upstreams: [{ name: 'upstream-1', state, slots: 4 }] });
}
const UPSTREAM_KEY = 'llama-upstream-secret-0123456789';

t.test('GET /healthz: 200 {"status":"ok"}, no key, never calls upstream', async (t) => {
  const gw = await startGateway(t);
  for (const headers of [{}, AUTH_A, { authorization: 'Bearer sk-wrong-0123456789abcdef' }]) {
    const res = await request(gw.port, { path: '/healthz', headers });
    t.equal(res.status, 200);
    t.equal(res.text, OK);
    t.equal(res.headers['content-type'], JSON_TYPE);
    t.equal(res.headers['www-authenticate'], undefined);
  }
  t.equal(gw.fake.requests.length, 0, 'llama-server never asked');
});

t.test('GET /healthz answers even when upstream is down or loading', async (t) => {
  const down = await startGateway(t, { upstreams: [`http://127.0.0.1:${await freePort()}`] });
  const res = await request(down.port, { path: '/healthz' });
  t.equal(res.status, 200);
  t.equal(res.text, OK);
  const loading = await startGateway(t, {}, { loading: true });
  const res2 = await request(loading.port, { path: '/healthz' });
  t.equal(res2.status, 200);
  t.equal(res2.text, OK);
  t.equal(loading.fake.requests.length, 0);
});

t.test('GET /health, upstream ready: 200 ok with its name, state and slots, no key, no URL, no model id', async (t) => {
  const gw = await startGateway(t, { maxInflight: null }, {}, { discovery: true });
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 200);
  t.equal(res.text, '{"status":"ok","upstreams":[{"name":"upstream-1","state":"ready","slots":2}]}');
  t.equal(res.headers['content-type'], JSON_TYPE);
  t.notMatch(res.text, String(gw.fake.port), 'no URL, no port');
  t.equal(res.headers.server, undefined, 'no llama-server Server header');
  // Answered from what the gateway follows: more /health calls cost no upstream request.
  const probes = () => gw.fake.requests.filter((r) => r.url === '/health').length;
  const before = probes();
  for (let i = 0; i < 5; i++) t.equal((await request(gw.port, { path: '/health' })).status, 200);
  t.equal(probes(), before);
  const seen = new Set(gw.fake.requests.map((r) => r.url));
  t.ok(seen.has('/v1/models') && seen.has('/props'), 'discovery read /v1/models and /props');
  for (const r of gw.fake.requests) t.equal(r.headers.authorization, undefined, 'no upstream key configured, none sent');
});

t.test('GET /health without discovery: one upstream GET /health per check', async (t) => {
  const gw = await startGateway(t);
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 200);
  t.equal(res.text, oneServer('ok', 'ready'));
  t.equal(res.headers['content-type'], JSON_TYPE);
  t.equal(res.headers.server, undefined, 'no llama-server Server header');
  t.equal(gw.fake.requests.length, 1);
  t.equal(gw.fake.requests[0]?.method, 'GET');
  t.equal(gw.fake.requests[0]?.url, '/health');
  t.equal(gw.fake.requests[0]?.headers.authorization, undefined, 'no upstream key configured, none sent');
});

t.test('GET /health never forwards client headers upstream', async (t) => {
  const gw = await startGateway(t);
  const res = await request(gw.port, { path: '/health?x=1', headers: { ...AUTH_A, 'x-my-llm-key': 'waf-0123456789', cookie: 'a=b' } });
  t.equal(res.status, 200);
  const seen = gw.fake.requests[0]!;
  t.equal(seen.url, '/health', 'the query string is not forwarded');
  t.equal(seen.headers.authorization, undefined);
  t.equal(seen.headers['x-my-llm-key'], undefined);
  t.equal(seen.headers.cookie, undefined);
  t.notMatch(JSON.stringify(seen.headers), KEY_A);
});

t.test('GET /health while llama-server loads: 503 loading', async (t) => {
  const gw = await startGateway(t, {}, { loading: true });
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 503);
  t.equal(res.text, oneServer('loading', 'loading'));
  t.equal(res.headers['content-type'], JSON_TYPE);
  t.equal(res.headers.server, undefined);
  t.equal(gw.fake.requests.length, 1);
  t.equal(gw.fake.requests[0]?.url, '/health');

  // Ready again: the next probe says so.
  gw.fake.behavior.loading = false;
  const ready = await request(gw.port, { path: '/health' });
  t.equal(ready.status, 200);
  t.equal(ready.text, oneServer('ok', 'ready'));
});

t.test('GET /health, upstream down: 502 down; a proxied route says upstream_unreachable', async (t) => {
  const gw = await startGateway(t, { upstreams: [`http://127.0.0.1:${await freePort()}`] });
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 502);
  t.equal(res.headers['content-type'], JSON_TYPE);
  t.equal(res.text, oneServer('down', 'down'));
  t.equal(gw.fake.requests.length, 0);
  const chat = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(chat.status, 502);
  t.strictSame(JSON.parse(chat.text), {
    error: {
      message: 'The gateway could not reach the model server (llama-server). It may be stopped or starting up; try again shortly.',
      type: 'upstream_error',
      param: null,
      code: 'upstream_unreachable',
    },
  });
});

t.test('llama-server with --api-key and upstreamApiKey set: /health 200, upstream sees our key', async (t) => {
  const gw = await startGateway(t, { upstreamApiKey: UPSTREAM_KEY }, { apiKey: UPSTREAM_KEY });
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 200);
  t.equal(res.text, oneServer('ok', 'ready'));
  t.equal(gw.fake.requests[0]?.headers.authorization, `Bearer ${UPSTREAM_KEY}`);
});

t.test('llama-server with --api-key, no upstreamApiKey: /health is public upstream too, still 200', async (t) => {
  const gw = await startGateway(t, {}, { apiKey: UPSTREAM_KEY });
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 200);
  t.equal(res.text, oneServer('ok', 'ready'));
});

t.test('upstreamApiKey: proxied requests reach upstream as Bearer <upstreamApiKey> and succeed', async (t) => {
  const gw = await startGateway(t, { upstreamApiKey: UPSTREAM_KEY }, { apiKey: UPSTREAM_KEY });
  const chat = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(chat.status, 200);
  t.equal(chat.text, recordedBody(recordings['chat-nonstream']!.chunks));
  const stream = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { 'x-api-key': KEY_A },
    body: chatBody({ stream: true }),
  });
  t.equal(stream.status, 200);
  t.equal(stream.text, withoutUsageChunk(recordedBody(recordings['chat-stream-include-usage']!.chunks)));
  const models = await request(gw.port, { path: '/v1/models', headers: AUTH_A });
  t.equal(models.status, 200);
  t.equal(models.text, recordedBody(recordings.models!.chunks));
  const model = await request(gw.port, { path: '/v1/models/gpt-oss-20b', headers: AUTH_A });
  t.equal(model.status, 200, 'models.retrieve reads the list with the upstream key too');
  t.equal((JSON.parse(model.text) as { id: string }).id, 'gpt-oss-20b');

  t.equal(gw.fake.requests.length, 4);
  for (const seen of gw.fake.requests) {
    t.equal(seen.headers.authorization, `Bearer ${UPSTREAM_KEY}`, `${seen.method} ${seen.url}`);
    t.equal(seen.headers['x-api-key'], undefined, 'the client x-api-key is not forwarded');
    t.notMatch(JSON.stringify(seen.headers), KEY_A, 'the client key appears in no upstream header');
  }
});

t.test("no upstreamApiKey against llama-server's --api-key: its 401 passes through", async (t) => {
  const gw = await startGateway(t, {}, { apiKey: UPSTREAM_KEY });
  const recorded = recordedBody(recordings['upstream-apikey-401']!.chunks);
  const chat = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(chat.status, 401);
  t.equal(chat.text, recorded);
  t.strictSame(JSON.parse(chat.text), { error: { message: 'Invalid API Key', type: 'authentication_error', code: 401 } });
  t.equal(chat.headers['content-type'], JSON_TYPE);
  t.equal(chat.headers.server, undefined);
  t.equal(chat.headers['www-authenticate'], undefined, 'not mistaken for the gateway’s own 401');
  const model = await request(gw.port, { path: '/v1/models/gpt-oss-20b', headers: AUTH_A });
  t.equal(model.status, 401);
  t.equal(model.text, recorded);
  t.equal(gw.fake.requests.length, 2);
  for (const seen of gw.fake.requests) t.equal(seen.headers.authorization, undefined, 'the client key is not sent as a fallback');
});

// ---------------------------------------------------------------------------------------------
// Several llama-servers: the status is the worst over the models of the servers that are not ready.

async function fakes(t: Teardown, ...behaviors: Partial<FakeBehavior>[]): Promise<FakeLlama[]> {
  const out: FakeLlama[] = [];
  for (const b of behaviors) {
    const f = await startFakeLlama(b);
    t.teardown(() => f.close());
    out.push(f);
  }
  return out;
}

async function gatewayOver(t: Teardown, urls: string[]): Promise<Gateway> {
  return startGateway(t, { upstreams: urls, maxInflight: null });
}

const health = async (gw: Gateway) => {
  const res = await request(gw.port, { path: '/health' });
  return { status: res.status, body: JSON.parse(res.text) as unknown };
};

t.test('two servers, two models, both ready: 200 ok, each with its name, state, slots and models', async (t) => {
  const [a, b] = await fakes(t, { modelId: 'qwen3-8b', aliases: ['chat'], slots: 2 }, { modelId: 'bge-m3', slots: 3 });
  const gw = await gatewayOver(t, [a!.url, b!.url]);
  t.same(await health(gw), {
    status: 200,
    body: {
      status: 'ok',
      upstreams: [
        { name: 'upstream-1', state: 'ready', slots: 2 },
        { name: 'upstream-2', state: 'ready', slots: 3 },
      ],
    },
  });
});

t.test('one model on two servers, one of them loading: 200 degraded; both loading: 503 loading', async (t) => {
  const [a, b] = await fakes(t, { modelId: 'qwen3-8b', slots: 2 }, { modelId: 'qwen3-8b', slots: 2 });
  const gw = await gatewayOver(t, [a!.url, b!.url]);
  t.equal((await health(gw)).status, 200);
  const [na, nb] = gw.app.upstreams.nodes;
  b!.behavior.loading = true;
  gw.app.upstreams.markLoading(nb!); // what the proxy reports when it sees 503 loading
  t.same(await health(gw), {
    status: 200,
    body: {
      status: 'degraded',
      upstreams: [
        { name: 'upstream-1', state: 'ready', slots: 2 },
        { name: 'upstream-2', state: 'loading', slots: 2 },
      ],
    },
  });
  a!.behavior.loading = true;
  gw.app.upstreams.markLoading(na!);
  const loading = await health(gw);
  t.equal(loading.status, 503);
  t.match(loading.body, { status: 'loading' });
  // Loaded again: the probes (every second while loading) see it.
  a!.behavior.loading = false;
  b!.behavior.loading = false;
  await until('ready again', async () => (await health(gw)).status === 200 && na!.state === 'ready' && nb!.state === 'ready');
  t.match((await health(gw)).body, { status: 'ok' });
});

t.test('two models, the only server of one is loading: 503 loading; down: 502 down', async (t) => {
  const [a, b] = await fakes(t, { modelId: 'qwen3-8b', slots: 2 }, { modelId: 'bge-m3', slots: 3 });
  const gw = await gatewayOver(t, [a!.url, b!.url]);
  t.equal((await health(gw)).status, 200);
  const nb = gw.app.upstreams.nodes[1]!;
  b!.behavior.loading = true;
  gw.app.upstreams.markLoading(nb);
  t.same(await health(gw), {
    status: 503,
    body: {
      status: 'loading',
      upstreams: [
        { name: 'upstream-1', state: 'ready', slots: 2 },
        { name: 'upstream-2', state: 'loading', slots: 3 },
      ],
    },
  });
  await b!.refuse();
  gw.app.upstreams.markDown(nb, 'ECONNREFUSED'); // what the proxy reports when a connection is refused
  t.same(await health(gw), {
    status: 502,
    body: {
      status: 'down',
      upstreams: [
        { name: 'upstream-1', state: 'ready', slots: 2 },
        { name: 'upstream-2', state: 'down', slots: 3 },
      ],
    },
  });
  b!.behavior.loading = false;
  await b!.accept();
  // Probed again after 1 s, 2 s, 4 s …: back at the next probe once it answers.
  await until('back', async () => (await health(gw)).status === 200, 10_000, 100);
});

t.test('a server that never answered counts as a model of its own: loading from the start 503, nothing listening 502', async (t) => {
  const [a, b] = await fakes(t, { modelId: 'qwen3-8b', slots: 2 }, { loading: true });
  const gw = await gatewayOver(t, [a!.url, b!.url, `http://127.0.0.1:${await freePort()}`]);
  const first = await health(gw);
  t.same(first, {
    status: 502,
    body: {
      status: 'down',
      upstreams: [
        { name: 'upstream-1', state: 'ready', slots: 2 },
        { name: 'upstream-2', state: 'loading', slots: 4 },
        { name: 'upstream-3', state: 'down', slots: 4 },
      ],
    },
  });
  const gw2 = await gatewayOver(t, [a!.url, b!.url]);
  t.same(await health(gw2), {
    status: 503,
    body: {
      status: 'loading',
      upstreams: [
        { name: 'upstream-1', state: 'ready', slots: 2 },
        { name: 'upstream-2', state: 'loading', slots: 4 },
      ],
    },
  });
});
