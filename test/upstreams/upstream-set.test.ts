// The set of llama-servers (src/upstreams/upstream-set.ts) against real fake llama-servers: what
// discovery reads (models, aliases, slots, n_ctx), routing by name, a loading server turning ready,
// a down one probed with backoff and coming back, what the proxy reports (markDown, markLoading),
// the upstreams file's pinned models and slots, and discovery off.
import t from 'tap';
import { configWith } from '../../src/config.js';
import {
  DEFAULT_PROBE_TIMINGS,
  UpstreamSet,
  nextDownDelay,
  type UpstreamNode,
  type UpstreamSetOptions,
} from '../../src/upstreams/upstream-set.js';
import type { UpstreamSpec } from '../../src/upstreams/upstreams-file.js';
import { startFakeLlama, type FakeBehavior, type FakeLlama } from '../fixtures/fake-llama.js';
import { KEY_A, freePort, until, type Teardown } from '../helpers.js';

const config = configWith({ apiKeys: [KEY_A] });
/** Short intervals, so that a test waits for a change in well under a second. */
const FAST = { readyMs: 50, loadingMs: 30, downMinMs: 20, downMaxMs: 80, rediscoverMs: 200 };

async function fake(t: Teardown, behavior: Partial<FakeBehavior> = {}): Promise<FakeLlama> {
  const f = await startFakeLlama(behavior);
  t.teardown(() => f.close());
  return f;
}

interface Logged {
  level: 'info' | 'warn';
  obj: Record<string, unknown>;
  msg: string;
}

function setOf(
  t: Teardown,
  specs: UpstreamSpec[],
  opts: UpstreamSetOptions = {},
): { set: UpstreamSet; logs: Logged[]; changes: UpstreamNode[] } {
  const logs: Logged[] = [];
  const log = {
    info: (obj: object, msg: string) => logs.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
    warn: (obj: object, msg: string) => logs.push({ level: 'warn', obj: obj as Record<string, unknown>, msg }),
  };
  const set = new UpstreamSet(specs, config, { log, timings: FAST, ...opts });
  const changes: UpstreamNode[] = [];
  set.onChange((n) => changes.push(n));
  t.teardown(() => set.destroy());
  return { set, logs, changes };
}

const urls = (r: FakeLlama) => r.requests.map((q) => q.url);

t.test('two servers: models, aliases, slots and n_ctx discovered; routing by id and alias', async (t) => {
  const a = await fake(t, { modelId: 'qwen3-8b', aliases: ['chat'], slots: 2 });
  const b = await fake(t, { modelId: 'bge-m3', aliases: ['embed'], slots: 3 });
  const { set, changes } = setOf(t, [{ url: a.url }, { url: b.url }]);
  t.equal(set.discovered, false);
  t.equal(set.nodes[0]!.state, 'unknown');
  t.equal(set.nodes[0]!.slots, 4, 'the fallback slot count until /props says');
  t.equal(set.resolve('chat'), undefined);
  set.start();
  await until('both ready with their models', () => set.nodes.every((n) => n.state === 'ready' && n.models.length > 0));

  const [na, nb] = set.nodes as [UpstreamNode, UpstreamNode];
  t.same(
    set.nodes.map((n) => [n.index, n.name, n.url, n.weight]),
    [
      [0, 'upstream-1', a.url, 1],
      [1, 'upstream-2', b.url, 1],
    ],
  );
  t.same(
    na.models.map((m) => [m.id, m.aliases]),
    [['qwen3-8b', ['chat']]],
    'the id itself is not repeated as an alias',
  );
  t.equal(na.models[0]!.entry.owned_by, 'llamacpp', 'the raw /v1/models entry is kept');
  t.same([na.slots, nb.slots], [2, 3], '/props total_slots');
  t.same([na.nCtx, nb.nCtx], [2048, 2048], '/props default_generation_settings.n_ctx');
  t.ok(na.serves('chat') && na.serves('qwen3-8b') && !na.serves('embed'));
  t.same(set.modelIds(), ['qwen3-8b', 'chat', 'bge-m3', 'embed']);
  t.equal(set.discovered, true);

  const chat = set.resolve('chat')!;
  t.equal(chat.model, 'qwen3-8b', 'an alias resolves to the canonical id');
  t.same(
    chat.nodes.map((n) => n.name),
    ['upstream-1'],
  );
  t.equal(set.resolve('qwen3-8b'), chat, 'one Route object per model and servers: the same for id and alias');
  t.equal(set.resolve('chat'), chat, 'and the same object on every lookup');
  t.same(
    set.resolve('embed')!.nodes.map((n) => n.index),
    [1],
  );
  t.equal(set.resolve('gpt-4o'), undefined);
  t.equal(set.defaultRoute, undefined, 'two models: no default');
  t.ok(changes.includes(na) && changes.includes(nb), 'onChange heard each server');
  for (const f of [a, b]) {
    t.same(urls(f).slice(0, 3).sort(), ['/health', '/props', '/v1/models'], 'one /health, then /v1/models and /props');
  }
});

t.test('one model on two servers: one route over both, and it is the default', async (t) => {
  const a = await fake(t, { modelId: 'qwen3-8b', slots: 2 });
  const b = await fake(t, { modelId: 'qwen3-8b', aliases: ['chat'], slots: 4 });
  const { set } = setOf(t, [
    { url: a.url, name: 'gpu-a' },
    { url: b.url, name: 'gpu-b', weight: 2 },
  ]);
  set.start();
  await until('both discovered', () => set.nodes.every((n) => n.models.length > 0));
  const route = set.resolve('qwen3-8b')!;
  t.same(
    route.nodes.map((n) => n.name),
    ['gpu-a', 'gpu-b'],
    'in set order',
  );
  t.equal(set.defaultRoute, route, 'one model served: the default route');
  t.same(
    set.resolve('chat')!.nodes.map((n) => n.name),
    ['gpu-b'],
    'an alias only one server knows',
  );
  t.equal(set.resolve('chat')!.model, 'qwen3-8b');
  t.same(
    set.modelEntries().map((e) => e.id),
    ['qwen3-8b'],
    'the model list is deduplicated by id',
  );
  t.equal(set.nodes[1]!.weight, 2);
});

t.test('a loading server (503) is loading, then ready with its models once it has loaded', async (t) => {
  const a = await fake(t, { loading: true, modelId: 'qwen3-8b', slots: 3 });
  const { set, logs, changes } = setOf(t, [{ url: a.url }]);
  set.start();
  const node = set.nodes[0]!;
  await until('loading', () => node.state === 'loading');
  t.equal(set.discovered, false, 'no models while loading (its /v1/models is not read)');
  await a.waitForRequests(3); // polled again while loading
  t.same(urls(a).slice(0, 3), ['/health', '/health', '/health'], 'only /health while loading');
  a.behavior.loading = false;
  await until('ready', () => node.state === 'ready');
  t.same(
    node.models.map((m) => m.id),
    ['qwen3-8b'],
    'the models arrive with the ready state',
  );
  t.equal(node.slots, 3);
  t.equal(set.defaultRoute, set.resolve('qwen3-8b'));
  const states = logs.filter((l) => l.obj.state !== undefined).map((l) => [l.obj.state, l.obj.was]);
  t.same(
    states,
    [
      ['loading', 'unknown'],
      ['ready', 'loading'],
    ],
    'each change of state logged once, not once per poll',
  );
  t.ok(changes.length >= 2);
});

t.test('down: nothing listening → probed with backoff; back once it listens again', async (t) => {
  const a = await fake(t, { modelId: 'qwen3-8b' });
  await a.refuse();
  const { set, logs } = setOf(t, [{ url: a.url }]);
  set.start();
  const node = set.nodes[0]!;
  await until('down', () => node.state === 'down');
  const down = logs.find((l) => l.obj.state === 'down')!;
  t.equal(down.level, 'warn');
  t.equal(down.obj.reason, 'upstream_unreachable');
  t.equal(down.obj.upstream, 'upstream-1');
  t.equal(set.discovered, false);
  await a.accept();
  await until('ready again', () => node.state === 'ready' && node.models.length === 1, 5000);
  t.equal(logs.filter((l) => l.obj.state === 'down').length, 1, 'down logged once, however many probes failed');
});

t.test('the backoff of a down server: 1 s, 2 s, 4 s … 30 s', async (t) => {
  const delays: number[] = [];
  let d: number | null = null;
  for (let i = 0; i < 8; i++) delays.push((d = nextDownDelay(d)));
  t.same(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  t.same(DEFAULT_PROBE_TIMINGS, { readyMs: 5000, loadingMs: 1000, downMinMs: 1000, downMaxMs: 30000, rediscoverMs: 30000 });
});

t.test('markDown / markLoading: what the proxy saw counts at once; probes bring the server back', async (t) => {
  const a = await fake(t, { modelId: 'qwen3-8b' });
  const b = await fake(t, { modelId: 'qwen3-8b' });
  const { set, changes } = setOf(t, [{ url: a.url }, { url: b.url }], { timings: { ...FAST, readyMs: 60_000 } });
  set.start();
  await until('ready', () => set.nodes.every((n) => n.state === 'ready' && n.models.length > 0));
  const [na, nb] = set.nodes as [UpstreamNode, UpstreamNode];
  changes.length = 0;

  await a.refuse();
  set.markDown(na, 'ECONNREFUSED');
  t.equal(na.state, 'down', 'at once');
  t.same(changes, [na], 'listeners hear it');
  set.markDown(na, 'ECONNREFUSED');
  t.same(changes, [na], 'once: it was down already');
  t.same(
    set.resolve('qwen3-8b')!.nodes.map((n) => n.index),
    [0, 1],
    'a down server keeps its models (the scheduler sends it no traffic)',
  );
  await a.accept();
  await until('a ready again', () => na.state === 'ready');

  b.behavior.loading = true;
  set.markLoading(nb);
  t.equal(nb.state, 'loading');
  await b.waitForRequests(b.requests.length + 1); // probed while loading
  b.behavior.loading = false;
  await until('b ready again', () => nb.state === 'ready');
});

t.test('a probe that was out when the proxy saw a failure does not undo it', async (t) => {
  const a = await fake(t, { modelId: 'm', headersDelayMs: 0 });
  const { set } = setOf(t, [{ url: a.url }], { discovery: false });
  const node = set.nodes[0]!;
  const probe = node.probe(); // GET /health is on its way and will say 200
  set.markDown(node, 'ECONNRESET');
  await probe;
  t.equal(node.state, 'down', 'still down: the next probe decides');
  await until('ready after the next probe', () => node.state === 'ready');
});

t.test('upstreams file: pinned models are not discovered, pinned slots win over /props, names and keys per server', async (t) => {
  const key = 'llama-key-0123456789abcdef';
  const a = await fake(t, { modelId: 'qwen3-8b', slots: 2, apiKey: key });
  const { set } = setOf(t, [{ url: a.url, name: 'gpu-a', apiKey: key, models: ['chat', 'alias2'], slots: 7 }]);
  const node = set.nodes[0]!;
  t.equal(node.name, 'gpu-a');
  t.equal(node.slots, 7);
  t.same(
    node.models.map((m) => [m.id, m.aliases, m.entry.object, m.entry.owned_by]),
    [
      ['chat', [], 'model', 'llamacpp'],
      ['alias2', [], 'model', 'llamacpp'],
    ],
  );
  t.equal(set.discovered, true, 'known before any probe');
  t.same(set.modelIds(), ['chat', 'alias2']);
  t.equal(set.defaultRoute, undefined, 'each pinned name is a model id: two models');
  set.start();
  await until('n_ctx read', () => node.nCtx !== null);
  t.equal(node.state, 'ready');
  t.equal(node.slots, 7, 'the file wins over /props total_slots');
  t.equal(node.nCtx, 2048);
  t.notOk(urls(a).includes('/v1/models'), 'its /v1/models is never read');
  t.same(
    node.models.map((m) => m.id),
    ['chat', 'alias2'],
  );
  for (const r of a.requests) t.equal(r.headers.authorization, `Bearer ${key}`, `${r.url} with its own key`);
});

t.test('GATEWAY_MAX_INFLIGHT fixes every server’s slots (the file still wins)', async (t) => {
  const a = await fake(t, { slots: 2 });
  const b = await fake(t, { slots: 2 });
  const fixed = configWith({ apiKeys: [KEY_A], maxInflight: 5 });
  const set = new UpstreamSet([{ url: a.url }, { url: b.url, slots: 1 }], fixed, { timings: FAST });
  t.teardown(() => set.destroy());
  set.start();
  await until('discovered', () => set.nodes[0]!.nCtx !== null);
  t.same(
    set.nodes.map((n) => n.slots),
    [5, 1],
  );
});

t.test('rediscovery while ready: a changed model list and slot count are followed', async (t) => {
  const a = await fake(t, { modelId: 'old', slots: 2 });
  const { set } = setOf(t, [{ url: a.url }]);
  set.start();
  const node = set.nodes[0]!;
  await until('discovered', () => node.models.length === 1);
  const version = set.version;
  a.behavior.modelId = 'new';
  a.behavior.slots = 6;
  await until('followed', () => node.models[0]?.id === 'new' && node.slots === 6);
  t.ok(set.version > version, 'the model list version moved');
  t.equal(set.resolve('old'), undefined);
  t.equal(set.resolve('new')!.nodes[0], node);
});

t.test('discovery off: nothing in the background; refresh() asks /health only', async (t) => {
  const a = await fake(t);
  const { set } = setOf(t, [{ url: a.url }], { discovery: false });
  set.start();
  t.equal(set.discovery, false);
  await set.refresh();
  t.equal(set.nodes[0]!.state, 'ready');
  t.same(urls(a), ['/health']);
  await Promise.all([set.refresh(), set.refresh(), set.refresh()]);
  t.ok(a.requests.length <= 3, 'concurrent refreshes share a probe');
  t.ok(
    a.requests.every((r) => r.url === '/health'),
    'never /v1/models or /props',
  );
});

t.test('close/destroy stop probing and end the clients', async (t) => {
  const port = await freePort();
  const set = new UpstreamSet([{ url: `http://127.0.0.1:${port}` }], config, { timings: FAST });
  set.start();
  await until('down', () => set.nodes[0]!.state === 'down');
  await set.destroy();
  await t.rejects(set.nodes[0]!.client.get('/health'), { code: 'shutting_down' }, 'its client is destroyed');
  t.equal(set.nodes[0]!.state, 'down');
});
