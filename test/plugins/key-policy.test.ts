// Per-key policy, as a client meets it: disabled and expired keys get a 401 that says which, a key
// kept to certain models gets 403 for any other (and sees only its models), a key kept to certain
// browser origins gets 403 from any other site. With raw requests and with the openai SDK.
import OpenAI from 'openai';
import t from 'tap';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { AUTH_A, KEY_A, bearer, chatBody, request, sleep, startGateway, tempStore } from '../helpers.js';

async function gatewayWithStore(t: Parameters<typeof startGateway>[0]) {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A], store);
  const gw = await startGateway(t, {}, {}, { registry });
  return { gw, store, registry };
}

t.test('a disabled key: 401 key_disabled; enabled again: works', async (t) => {
  const { gw, store, registry } = await gatewayWithStore(t);
  const { key } = store.create({ name: 'carol', enabled: false });
  registry.reload();
  const res = await request(gw.port, { path: '/v1/chat/completions', headers: bearer(key), body: chatBody() });
  t.equal(res.status, 401);
  t.equal(res.headers['www-authenticate'], 'Bearer');
  t.same(JSON.parse(res.text), {
    error: {
      message: 'This API key has been disabled. Ask the gateway owner to enable it.',
      type: 'invalid_api_key',
      param: null,
      code: 'key_disabled',
    },
  });
  store.update('carol', { enabled: true });
  registry.reload();
  t.equal((await request(gw.port, { path: '/v1/chat/completions', headers: bearer(key), body: chatBody() })).status, 200);
  t.equal(gw.fake.requests.length, 1, 'the refused request never reached upstream');
});

t.test('a key that expires during the test: works, then 401 key_expired', async (t) => {
  const { gw, store, registry } = await gatewayWithStore(t);
  const expiresAt = Date.now() + 1200;
  const { key } = store.create({ name: 'temp', expiresAt });
  registry.reload();
  t.equal((await request(gw.port, { path: '/v1/models', headers: bearer(key) })).status, 200, 'before expiry');
  while (Date.now() < expiresAt + 20) await sleep(50);
  const res = await request(gw.port, { path: '/v1/models', headers: bearer(key) });
  t.equal(res.status, 401);
  t.same(JSON.parse(res.text), {
    error: {
      message: `This API key expired on ${new Date(expiresAt).toISOString()}. Ask the gateway owner for a new one.`,
      type: 'invalid_api_key',
      param: null,
      code: 'key_expired',
    },
  });
});

t.test('models: only the listed ones, by raw request', async (t) => {
  const { gw, store, registry } = await gatewayWithStore(t);
  const { key } = store.create({ name: 'dave', models: ['gpt-oss-20b', 'qwen3'] });
  registry.reload();
  const ok = await request(gw.port, { path: '/v1/chat/completions', headers: bearer(key), body: chatBody({ model: 'gpt-oss-20b' }) });
  t.equal(ok.status, 200);
  const other = await request(gw.port, { path: '/v1/chat/completions', headers: bearer(key), body: chatBody({ model: 'llama-70b' }) });
  t.equal(other.status, 403);
  t.same(JSON.parse(other.text), {
    error: {
      message: "This API key may not use the model 'llama-70b'.",
      type: 'invalid_request_error',
      param: 'model',
      code: 'model_not_allowed',
    },
  });
  const none = await request(gw.port, { path: '/v1/embeddings', headers: bearer(key), body: '{"input":"x"}' });
  t.equal(none.status, 403, 'a request naming no model would get the default model: refused');
  t.equal((JSON.parse(none.text) as { error: { code: string } }).error.code, 'model_not_allowed');
  const notString = await request(gw.port, {
    path: '/v1/completions',
    headers: bearer(key),
    body: '{"prompt":"x","model":["gpt-oss-20b"]}',
  });
  t.equal(notString.status, 400, 'a model that is not a string is refused for everyone (client-input.ts), before the key policy');
  t.equal((JSON.parse(notString.text) as { error: { code: string; param: string } }).error.param, 'model');
  t.equal(gw.fake.requests.length, 1, 'refused requests never reached upstream');

  // The model list shows only what the key may use; others get 404 for a model they may not use.
  const list = JSON.parse((await request(gw.port, { path: '/v1/models', headers: bearer(key) })).text) as {
    data: { id: string }[];
    models: { name: string }[];
  };
  t.same(
    list.data.map((m) => m.id),
    ['gpt-oss-20b'],
  );
  t.same(
    list.models.map((m) => m.name),
    ['gpt-oss-20b'],
  );
  t.equal((await request(gw.port, { path: '/v1/models/gpt-oss-20b', headers: bearer(key) })).status, 200);
  const hidden = await request(gw.port, { path: '/v1/models/llama-70b', headers: bearer(key) });
  t.equal(hidden.status, 404);
  const narrow = store.create({ name: 'erin', models: ['qwen3'] }).key;
  registry.reload();
  const empty = JSON.parse((await request(gw.port, { path: '/v1/models', headers: bearer(narrow) })).text) as { data: unknown[] };
  t.same(empty.data, [], 'a key for a model this server does not have sees none');
  // An unrestricted key still gets llama-server's list byte for byte.
  const full = await request(gw.port, { path: '/v1/models', headers: AUTH_A });
  t.match(full.text, /"owned_by":"llamacpp"/);
});

t.test('models: the openai SDK sees PermissionDeniedError for a model the key may not use', async (t) => {
  const { gw, store, registry } = await gatewayWithStore(t);
  const { key } = store.create({ name: 'frank', models: ['gpt-oss-20b'] });
  registry.reload();
  const client = new OpenAI({ apiKey: key, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  const ok = await client.chat.completions.create({ model: 'gpt-oss-20b', messages: [{ role: 'user', content: 'hi' }] });
  t.equal(ok.object, 'chat.completion');
  const err = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof OpenAI.PermissionDeniedError, 'PermissionDeniedError');
  t.equal((err as InstanceType<typeof OpenAI.PermissionDeniedError>).status, 403);
  t.equal((err as InstanceType<typeof OpenAI.PermissionDeniedError>).code, 'model_not_allowed');
  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  t.same(models, ['gpt-oss-20b']);

  store.update('frank', { enabled: false });
  registry.reload();
  const disabled = await client.models.list().then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(disabled instanceof OpenAI.AuthenticationError, 'a disabled key is an AuthenticationError');
  t.equal((disabled as InstanceType<typeof OpenAI.AuthenticationError>).code, 'key_disabled');
});

t.test('origins: per-key CORS', async (t) => {
  const { gw, store, registry } = await gatewayWithStore(t);
  const { key } = store.create({ name: 'webapp', origins: ['https://chat.example.com'] });
  registry.reload();
  const allowed = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...bearer(key), origin: 'https://chat.example.com' },
    body: chatBody(),
  });
  t.equal(allowed.status, 200);
  const other = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...bearer(key), origin: 'https://evil.example' },
    body: chatBody(),
  });
  t.equal(other.status, 403);
  t.same(JSON.parse(other.text), {
    error: {
      message: 'This API key may not be used from this website (Origin).',
      type: 'invalid_request_error',
      param: null,
      code: 'origin_not_allowed',
    },
  });
  const server = await request(gw.port, { path: '/v1/chat/completions', headers: bearer(key), body: chatBody() });
  t.equal(server.status, 200, 'a request without Origin (not a browser) is not a website');
  const envKey = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, origin: 'https://evil.example' },
    body: chatBody(),
  });
  t.equal(envKey.status, 200, 'LLM_API_KEYS keys have no origin rule');
  t.equal(gw.fake.requests.length, 3);
});

t.test('limits are stored with the key and enforced (see admission.test.ts for each limit)', async (t) => {
  const { gw, store, registry } = await gatewayWithStore(t);
  const { key } = store.create({ name: 'limited', limits: { rpm: 1, tpm: 10, tpd: 100, concurrency: 1 } });
  registry.reload();
  t.same(registry.index.verify(key)?.limits, { rpm: 1, tpm: 10, tpd: 100, concurrency: 1 });
  t.equal((await request(gw.port, { path: '/v1/models', headers: bearer(key) })).status, 200);
  t.equal((await request(gw.port, { path: '/v1/models', headers: bearer(key) })).status, 429, 'the second request in the minute');
});
