// What is forwarded: the /v1 allowlist, each to its own path; the dangerous llama-server routes
// and every path trick end in the gateway's 404 without touching upstream; bodies go upstream
// byte for byte; bad bodies get a gateway 400/413 instead of llama-server's 500.
import t from 'tap';
import { recordings } from '../fixtures/fake-llama.js';
import { AUTH_A, chatBody, rawExchange, recordedBody, request, startGateway } from '../helpers.js';

const JSON_CT = { 'content-type': 'application/json' };

t.test('every allowed route reaches its own path upstream', async (t) => {
  const gw = await startGateway(t);
  const routes: [string, string, string | undefined, number][] = [
    ['POST', '/v1/chat/completions', chatBody(), 200],
    ['POST', '/v1/completions', JSON.stringify({ prompt: 'Hi', max_tokens: 4 }), 200],
    ['POST', '/v1/embeddings', JSON.stringify({ input: ['a', 'b'] }), 200],
    ['POST', '/v1/rerank', JSON.stringify({ query: 'q', documents: ['a', 'b'] }), 200],
    ['POST', '/v1/responses', JSON.stringify({ input: 'Hi' }), 200],
    ['POST', '/v1/messages', JSON.stringify({ model: 'm', max_tokens: 4, messages: [{ role: 'user', content: 'Hi' }] }), 200],
    ['POST', '/v1/messages/count_tokens', JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'Hi' }] }), 200],
    ['GET', '/v1/models', undefined, 200],
  ];
  for (const [method, path, body, status] of routes) {
    const before = gw.fake.requests.length;
    const res = await request(gw.port, { method, path, headers: { ...AUTH_A, ...JSON_CT }, body });
    t.equal(res.status, status, `${method} ${path}`);
    const seen = gw.fake.requests[before];
    t.equal(seen?.method, method);
    t.equal(seen?.url, path, 'forwarded to the same path');
    if (body !== undefined) t.equal(seen?.body.toString('utf8'), body);
  }
  t.equal(gw.fake.requests.length, routes.length);
});

t.test('non-streamed answers are passed through whole', async (t) => {
  const gw = await startGateway(t);
  const chat = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(chat.text, recordedBody(recordings['chat-nonstream']!.chunks), 'chat body byte for byte');
  t.equal(chat.headers['content-length'], String(Buffer.byteLength(chat.text)));
  const emb = await request(gw.port, { path: '/v1/embeddings', headers: AUTH_A, body: '{"input":["a","b"]}' });
  t.equal(emb.text, recordedBody(recordings.embeddings!.chunks));
  const models = await request(gw.port, { path: '/v1/models', headers: AUTH_A });
  t.equal(models.text, recordedBody(recordings.models!.chunks));
});

t.test('GET /v1/models/:id answers from the model list', async (t) => {
  const gw = await startGateway(t);
  const found = await request(gw.port, { path: '/v1/models/gpt-oss-20b', headers: AUTH_A });
  t.equal(found.status, 200);
  const model = JSON.parse(found.text) as Record<string, unknown>;
  t.equal(model.id, 'gpt-oss-20b');
  t.equal(model.object, 'model');
  t.equal(model.owned_by, 'llamacpp');
  const missing = await request(gw.port, { path: '/v1/models/gpt-5', headers: AUTH_A });
  t.equal(missing.status, 404);
  t.same(JSON.parse(missing.text), {
    error: { message: "The model 'gpt-5' does not exist", type: 'invalid_request_error', param: 'model', code: 'model_not_found' },
  });
  t.same(
    gw.fake.requests.map((r) => r.url),
    ['/v1/models', '/v1/models'],
  );
});

t.test('query strings are dropped; the client URL never reaches upstream', async (t) => {
  const gw = await startGateway(t);
  const res = await request(gw.port, { path: '/v1/chat/completions?action=erase&x=../../slots', headers: AUTH_A, body: chatBody() });
  t.equal(res.status, 200);
  t.equal(gw.fake.requests[0]?.url, '/v1/chat/completions');
  await request(gw.port, { path: '/v1/models?limit=1', headers: AUTH_A });
  t.equal(gw.fake.requests[1]?.url, '/v1/models');
});

const FORBIDDEN: [string, string][] = [
  ['GET', '/slots'],
  ['POST', '/slots/0?action=save'],
  ['POST', '/slots/0?action=erase'],
  ['GET', '/props'],
  ['POST', '/props'],
  ['POST', '/metrics'],
  ['GET', '/lora-adapters'],
  ['POST', '/lora-adapters'],
  ['GET', '/cors-proxy?url=http://169.254.169.254/'],
  ['POST', '/tools'],
  ['GET', '/v1/stream'],
  ['DELETE', '/v1/stream'],
  ['GET', '/v1/streams/lookup'],
  ['GET', '/models'],
  ['POST', '/models/load'],
  ['POST', '/predict'],
  ['GET', '/'],
  ['GET', '/index.html'],
  ['POST', '/completion'],
  ['POST', '/chat/completions'],
  ['POST', '/v1/health'],
  ['POST', '/tokenize'],
  ['POST', '/infill'],
  ['POST', '/apply-template'],
  // path tricks
  ['GET', '/v1/../slots'],
  ['GET', '//slots'],
  ['GET', '/v1/%2e%2e/slots'],
  ['GET', '/v1/%2E%2E/props'],
  ['GET', '/v1//models'],
  ['GET', '/V1/models'],
  ['POST', '/V1/chat/completions'],
  ['POST', '/v1/chat/completions/'],
  ['POST', '/v1/chat/completions/../../slots'],
  ['POST', '/v1/chat/completions%2f..%2f..%2fslots'],
  ['POST', '/v1/chat/completionsX'],
  ['POST', '/v1/chat/completions;/slots'],
  ['POST', '/v1/chat/completions%00'],
  ['GET', '/v1/models/../../slots'],
  ['GET', '/v1/models/gpt-oss-20b/../../../props'],
  ['GET', '/v1/chat/completions'],
  ['PUT', '/v1/chat/completions'],
  ['DELETE', '/v1/models'],
  ['HEAD', '/v1/models'],
];

t.test('operator routes and path tricks → gateway 404, upstream untouched (with a valid key)', async (t) => {
  const gw = await startGateway(t);
  for (const [method, path] of FORBIDDEN) {
    const res = await request(gw.port, { method, path, headers: AUTH_A, body: method === 'POST' || method === 'PUT' ? '{}' : undefined });
    t.equal(res.status, 404, `${method} ${path}`);
    if (method !== 'HEAD') {
      const body = JSON.parse(res.text) as { error: { type: string; code: string } };
      t.equal(body.error.type, 'invalid_request_error');
      t.equal(body.error.code, 'route_not_found');
    }
  }
  t.equal(gw.fake.requests.length, 0, 'llama-server never saw any of them');
});

t.test('path tricks on a raw socket (no client-side normalisation)', async (t) => {
  const gw = await startGateway(t);
  for (const target of ['/v1/../slots', '/v1/./../props', 'http://127.0.0.1/slots', '*']) {
    const answer = await rawExchange(
      gw.port,
      `GET ${target} HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH_A.authorization}\r\nConnection: close\r\n\r\n`,
    );
    t.match(answer, /^HTTP\/1\.1 (400|404) /, `GET ${target} is refused`);
  }
  t.equal(gw.fake.requests.length, 0);
  // Percent-encoded letters decode to the allowed route; upstream still gets only its canonical path.
  const encoded = await rawExchange(
    gw.port,
    `GET /%76%31/models HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH_A.authorization}\r\nConnection: close\r\n\r\n`,
  );
  t.match(encoded, /^HTTP\/1\.1 200 /);
  t.same(
    gw.fake.requests.map((r) => r.url),
    ['/v1/models'],
  );
});

t.test('bodies are forwarded byte for byte, whatever their spacing, order or Content-Type', async (t) => {
  const gw = await startGateway(t);
  const bodies = [
    '{ "messages" : [ {"role":"user","content":"héllo \\u00e9 😀"} ],\n\t"model":"x", "max_tokens":8, "temperature":0.10000000000000001 }',
    '{"messages":[{"role":"user","content":"a"}],"model":"x","z":1e300,"dup":1,"dup":2}',
    `{"messages":[{"role":"user","content":"${'x'.repeat(200_000)}"}]}`,
  ];
  for (const body of bodies) {
    const before = gw.fake.requests.length;
    const res = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body });
    t.equal(res.status, 200);
    t.ok(gw.fake.requests[before]?.body.equals(Buffer.from(body)), 'same bytes upstream');
    t.equal(gw.fake.requests[before]?.headers['content-type'], 'application/json');
    t.equal(gw.fake.requests[before]?.headers['content-length'], String(Buffer.byteLength(body)));
  }
  // curl -d sends application/x-www-form-urlencoded; llama-server reads JSON anyway, so do we.
  const form = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, 'content-type': 'application/x-www-form-urlencoded' },
    body: chatBody(),
  });
  t.equal(form.status, 200);
  const none = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, 'transfer-encoding': 'chunked' },
    body: chatBody(),
  });
  t.equal(none.status, 200, 'no Content-Type and a chunked body');
});

t.test('bad bodies get a gateway 400/413 in OpenAI shape and never reach upstream', async (t) => {
  const gw = await startGateway(t, { bodyLimit: 64 * 1024 });
  const cases: [string, string | Buffer | undefined, Record<string, string>, number, string][] = [
    ['broken JSON', '{"messages":[{"role":"user","content":"hi"}', JSON_CT, 400, 'invalid_json'],
    ['not JSON at all', 'hello', JSON_CT, 400, 'invalid_json'],
    ['a JSON array', '[1,2]', JSON_CT, 400, 'invalid_json'],
    ['a JSON string', '"hi"', JSON_CT, 400, 'invalid_json'],
    ['null', 'null', JSON_CT, 400, 'invalid_json'],
    ['an empty body with JSON type', '', JSON_CT, 400, 'missing_body'],
    ['no body at all', undefined, {}, 400, 'missing_body'],
    ['a body over the limit', `{"p":"${'x'.repeat(70 * 1024)}"}`, JSON_CT, 413, 'request_too_large'],
    ['invalid UTF-8', Buffer.from([0x7b, 0x22, 0xff, 0xfe, 0x22, 0x7d]), JSON_CT, 400, 'invalid_json'],
  ];
  for (const [what, body, headers, status, code] of cases) {
    const res = await request(gw.port, { method: 'POST', path: '/v1/chat/completions', headers: { ...AUTH_A, ...headers }, body });
    t.equal(res.status, status, what);
    t.equal(res.headers['content-type'], 'application/json; charset=utf-8');
    const parsed = JSON.parse(res.text) as { error: { message: string; type: string; param: unknown; code: string } };
    t.equal(parsed.error.type, 'invalid_request_error');
    t.equal(parsed.error.code, code);
    t.type(parsed.error.message, 'string');
    t.not(parsed.error.message, '');
  }
  t.equal(gw.fake.requests.length, 0);
});
