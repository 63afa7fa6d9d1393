// Health and the upstream key: /healthz is the gateway alone, /health is llama-server's readiness
// (200 / its own 503 while loading / our 502 when it is down), both public; LLM_UPSTREAM_API_KEY
// is what upstream sees as Authorization, and without it llama-server's own 401 passes through.
import t from 'tap';
import { recordings } from '../fixtures/fake-llama.js';
import { AUTH_A, KEY_A, chatBody, freePort, recordedBody, request, startGateway, withoutUsageChunk } from '../helpers.js';

const JSON_TYPE = 'application/json; charset=utf-8';
const OK = '{"status":"ok"}';
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

t.test('GET /health, upstream ready: 200 {"status":"ok"}, no key, one upstream GET /health', async (t) => {
  const gw = await startGateway(t);
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 200);
  t.equal(res.text, OK);
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

t.test('GET /health while llama-server loads: 503 with its recorded body', async (t) => {
  const gw = await startGateway(t, {}, { loading: true });
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 503);
  t.equal(res.text, recordedBody(recordings['loading-503']!.chunks));
  t.strictSame(JSON.parse(res.text), { error: { message: 'Loading model', type: 'unavailable_error', code: 503 } });
  t.equal(res.headers['content-type'], JSON_TYPE);
  t.equal(res.headers.server, undefined);
  t.equal(gw.fake.requests.length, 1);
  t.equal(gw.fake.requests[0]?.url, '/health');

  // Ready again: the next probe says so.
  gw.fake.behavior.loading = false;
  const ready = await request(gw.port, { path: '/health' });
  t.equal(ready.status, 200);
  t.equal(ready.text, OK);
});

t.test('GET /health, upstream down: 502 upstream_error in OpenAI shape', async (t) => {
  const gw = await startGateway(t, { upstreams: [`http://127.0.0.1:${await freePort()}`] });
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 502);
  t.equal(res.headers['content-type'], JSON_TYPE);
  t.strictSame(JSON.parse(res.text), {
    error: {
      message: 'The gateway could not reach the model server (llama-server). It may be stopped or starting up; try again shortly.',
      type: 'upstream_error',
      param: null,
      code: 'upstream_unreachable',
    },
  });
  t.equal(gw.fake.requests.length, 0);
  // A proxied route says the same.
  const chat = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(chat.status, 502);
  t.equal(chat.text, res.text);
});

t.test('llama-server with --api-key and upstreamApiKey set: /health 200, upstream sees our key', async (t) => {
  const gw = await startGateway(t, { upstreamApiKey: UPSTREAM_KEY }, { apiKey: UPSTREAM_KEY });
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 200);
  t.equal(res.text, OK);
  t.equal(gw.fake.requests[0]?.headers.authorization, `Bearer ${UPSTREAM_KEY}`);
});

t.test('llama-server with --api-key, no upstreamApiKey: /health is public upstream too, still 200', async (t) => {
  const gw = await startGateway(t, {}, { apiKey: UPSTREAM_KEY });
  const res = await request(gw.port, { path: '/health' });
  t.equal(res.status, 200);
  t.equal(res.text, OK);
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
