// GET /v1/models and /v1/models/{id} over several llama-servers: the union of what each one
// reported (data[] deduplicated by id, llama-server's Ollama-style models[] too), per-key filtering
// as with one server, answered without an upstream call; before any server has told its models,
// the first server's list is read live, as with one server.
import t from 'tap';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { recordings, startFakeLlama, type FakeBehavior, type FakeLlama } from '../fixtures/fake-llama.js';
import { AUTH_A, KEY_A, bearer, recordedBody, request, startGateway, tempStore, until, type Gateway, type Teardown } from '../helpers.js';

const JSON_TYPE = 'application/json; charset=utf-8';

async function fake(t: Teardown, behavior: Partial<FakeBehavior>): Promise<FakeLlama> {
  const f = await startFakeLlama(behavior);
  t.teardown(() => f.close());
  return f;
}

/** A gateway over `urls` with a key database (for keys kept to certain models); waits until every server told its models. */
async function gatewayOver(t: Teardown, urls: string[], discovery = true) {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A], store);
  const gw = await startGateway(t, { upstreams: urls }, {}, { registry, discovery });
  if (discovery) await until('models discovered', () => gw.app.upstreams.nodes.every((n) => n.models.length > 0));
  return { gw, store, registry };
}

const listOf = async (gw: Gateway, headers: Record<string, string> = AUTH_A) => {
  const res = await request(gw.port, { path: '/v1/models', headers });
  return {
    status: res.status,
    type: res.headers['content-type'],
    list: JSON.parse(res.text) as { object: string; data: Record<string, unknown>[]; models?: Record<string, unknown>[] },
  };
};

/** What llama-server's recorded /v1/models says for a server run with `-a id,aliases…` (the fake's rewrite). */
function recordedEntry(id: string, aliases: string[]): { data: Record<string, unknown>; model: Record<string, unknown> } {
  const list = JSON.parse(recordedBody(recordings.models!.chunks)) as {
    data: Record<string, unknown>[];
    models: Record<string, unknown>[];
  };
  return {
    data: { ...list.data[0]!, id, aliases: [id, ...aliases] },
    model: { ...list.models[0]!, name: id, model: id },
  };
}

t.test('the union of two servers: every entry once, in server order, with llama-server’s models[] too', async (t) => {
  const a = await fake(t, { modelId: 'qwen3-8b', aliases: ['chat'] });
  const b = await fake(t, { modelId: 'bge-m3', aliases: ['embed'] });
  const c = await fake(t, { modelId: 'qwen3-8b', aliases: ['chat'] }); // a second server of the first model
  const { gw } = await gatewayOver(t, [a.url, b.url, c.url]);
  const before = [a, b, c].map((f) => f.requests.length);
  const res = await listOf(gw);
  t.equal(res.status, 200);
  t.equal(res.type, JSON_TYPE);
  const qwen = recordedEntry('qwen3-8b', ['chat']);
  const bge = recordedEntry('bge-m3', ['embed']);
  t.same(res.list, { models: [qwen.model, bge.model], object: 'list', data: [qwen.data, bge.data] });
  t.same(
    [a, b, c].map((f) => f.requests.length),
    before,
    'answered from what discovery read: no upstream call',
  );

  // /v1/models/{id}: by id or alias, from the union.
  const byAlias = await request(gw.port, { path: '/v1/models/embed', headers: AUTH_A });
  t.equal(byAlias.status, 200);
  t.same(JSON.parse(byAlias.text), bge.data);
  t.same(JSON.parse((await request(gw.port, { path: '/v1/models/qwen3-8b', headers: AUTH_A })).text), qwen.data);
  const missing = await request(gw.port, { path: '/v1/models/gpt-5', headers: AUTH_A });
  t.equal(missing.status, 404);
  t.same(JSON.parse(missing.text), {
    error: { message: "The model 'gpt-5' does not exist", type: 'invalid_request_error', param: 'model', code: 'model_not_found' },
  });
});

t.test('a key kept to certain models sees only those, by id or alias, in the list and one by one', async (t) => {
  const a = await fake(t, { modelId: 'qwen3-8b', aliases: ['chat'] });
  const b = await fake(t, { modelId: 'bge-m3', aliases: ['embed'] });
  const { gw, store, registry } = await gatewayOver(t, [a.url, b.url]);
  const byAlias = store.create({ name: 'chat-only', models: ['chat'] }).key;
  const byId = store.create({ name: 'embed-only', models: ['bge-m3', 'llama-70b'] }).key;
  const none = store.create({ name: 'nothing-served', models: ['llama-70b'] }).key;
  registry.reload();
  const qwen = recordedEntry('qwen3-8b', ['chat']);
  const bge = recordedEntry('bge-m3', ['embed']);

  t.same(
    (await listOf(gw, bearer(byAlias))).list,
    { models: [], object: 'list', data: [qwen.data] },
    'models[] by model name: the alias is not one',
  );
  t.same((await listOf(gw, bearer(byId))).list, { models: [bge.model], object: 'list', data: [bge.data] });
  t.same((await listOf(gw, bearer(none))).list, { models: [], object: 'list', data: [] });

  t.equal((await request(gw.port, { path: '/v1/models/chat', headers: bearer(byAlias) })).status, 200);
  const hidden = await request(gw.port, { path: '/v1/models/bge-m3', headers: bearer(byAlias) });
  t.equal(hidden.status, 404, 'another model is not found for this key');
  t.equal((await request(gw.port, { path: '/v1/models/llama-70b', headers: bearer(byId) })).status, 404, 'allowed but served nowhere');
  t.same((await listOf(gw)).list.data.length, 2, 'an unrestricted key sees both');
});

t.test('one server with discovery: its list as llama-server sent it, byte for byte', async (t) => {
  const gw = await startGateway(t, {}, {}, { discovery: true });
  await until('discovered', () => gw.app.upstreams.discovered);
  const res = await request(gw.port, { path: '/v1/models', headers: AUTH_A });
  t.equal(res.status, 200);
  t.equal(res.text, recordedBody(recordings.models!.chunks));
});

t.test('a model list that changes upstream is followed (a new version of the union)', async (t) => {
  const a = await fake(t, { modelId: 'qwen3-8b' });
  const b = await fake(t, { modelId: 'bge-m3' });
  const { gw } = await gatewayOver(t, [a.url, b.url]);
  t.same(
    (await listOf(gw)).list.data.map((d) => d.id),
    ['qwen3-8b', 'bge-m3'],
  );
  // llama-server restarted with another model: the proxy saw it loading; ready again, its new list is read.
  b.behavior.modelId = 'qwen3-14b';
  gw.app.upstreams.markLoading(gw.app.upstreams.nodes[1]!);
  await until('new list', async () => (await listOf(gw)).list.data.some((d) => d.id === 'qwen3-14b'), 10_000, 50);
  t.same(
    (await listOf(gw)).list.data.map((d) => d.id),
    ['qwen3-8b', 'qwen3-14b'],
  );
});

t.test('no server has told its models yet: the first server’s list is read live', async (t) => {
  const a = await fake(t, { modelId: 'qwen3-8b' });
  const b = await fake(t, { modelId: 'bge-m3' });
  const { gw } = await gatewayOver(t, [a.url, b.url], false);
  t.equal(gw.app.upstreams.discovered, false);
  const res = await listOf(gw);
  t.equal(res.status, 200);
  t.same(
    res.list.data.map((d) => d.id),
    ['qwen3-8b'],
  );
  t.same(
    a.requests.map((r) => r.url),
    ['/v1/models'],
  );
  t.equal(b.requests.length, 0);
  t.equal((await request(gw.port, { path: '/v1/models/qwen3-8b', headers: AUTH_A })).status, 200);
});
