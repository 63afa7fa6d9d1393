// Red-team pass over issue 14 (several llama-servers) and issue 16 (the admin console), as a client
// holding an ordinary key and as someone with no key. Each test is named after what broke (or could
// have), and each failed before its fix.
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { readForm } from '../../src/http/form-data.js';
import { startFakeLlama, type FakeBehavior, type FakeLlama } from '../fixtures/fake-llama.js';
import { AUTH_A, KEY_A, chatBody, request, startGateway, until, type Teardown } from '../helpers.js';
import { skipTier, startLlama, startRealGateway } from '../real/llama.js';

async function fake(t: Teardown, behavior: Partial<FakeBehavior> = {}): Promise<FakeLlama> {
  const f = await startFakeLlama(behavior);
  t.teardown(() => f.close());
  return f;
}

/**
 * A llama-server look-alike whose generations answer a 503 (not "Loading model") whose body never
 * ends: the status line and headers, a few bytes, then nothing. /health, /v1/models and /props answer
 * like a ready llama-server of `model`, so discovery routes to it.
 */
async function hangingErrorServer(t: Teardown, model: string): Promise<{ url: string; posts: () => number }> {
  let posts = 0;
  const sockets = new Set<import('node:net').Socket>();
  const server = http.createServer((req, res) => {
    req.resume();
    const json = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' });
      res.end(JSON.stringify(body));
    };
    if (req.method === 'GET' && req.url === '/health') return json(200, { status: 'ok' });
    if (req.method === 'GET' && req.url === '/v1/models') return json(200, { object: 'list', data: [{ id: model, object: 'model' }] });
    if (req.method === 'GET' && req.url === '/props') return json(200, { total_slots: 2, default_generation_settings: { n_ctx: 4096 } });
    req.on('end', () => {
      posts++;
      res.writeHead(503, { 'content-type': 'application/json; charset=utf-8', 'content-length': '200' });
      res.write('{"error":{"message":"');
      // …and nothing more: the body never ends.
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
  });
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, posts: () => posts };
}

t.test('a client that leaves while a 502/503 body is read for failover leaks no slot on the next server', async (t) => {
  const bad = await hangingErrorServer(t, 'gpt-oss-20b');
  const good = await fake(t);
  const gw = await startGateway(t, { upstreams: [bad.url, good.url], maxInflight: null });
  const set = gw.app.upstreams;
  await until(
    'both servers serve the model',
    () => set.resolve('gpt-oss-20b')?.nodes.length === 2 && set.nodes.every((n) => n.state === 'ready'),
  );
  // Non-streamed chat: placed on the first server (both idle), which answers 503 headers and hangs.
  const req = http.request({
    host: '127.0.0.1',
    port: gw.port,
    method: 'POST',
    path: '/v1/chat/completions',
    headers: AUTH_A,
    agent: false,
  });
  req.on('error', () => {});
  req.end(chatBody());
  await until('the first server got it', () => bad.posts() === 1);
  t.equal(gw.app.queue.running, 1);
  req.destroy(); // the client leaves while the gateway reads the 503's body
  // Its slot comes back (after the abandoned-slot hold), and nothing is left running anywhere.
  await until('every slot given back', () => gw.app.queue.running === 0 && gw.app.queue.waiting === 0, 10_000);
  t.equal(gw.app.queue.runningOn(set.nodes[1]!), 0, 'no slot taken on the second server for a client that is gone');
  t.equal(good.requests.filter((r) => r.method === 'POST').length, 0, 'nothing sent to the second server');
});

t.test('the same while the only server says it is loading: no waiter is left for a client that is gone', async (t) => {
  const gw = await startGateway(t, { maxInflight: 2 }, { loading: true, headersDelayMs: 0 });
  // The fake's 503 "Loading model" ends at once; the race is the client leaving before the
  // gateway reads it. Make it deterministic: leave as soon as llama-server has the request.
  const req = http.request({
    host: '127.0.0.1',
    port: gw.port,
    method: 'POST',
    path: '/v1/chat/completions',
    headers: AUTH_A,
    agent: false,
  });
  req.on('error', () => {});
  req.end(chatBody({ stream: true }));
  await gw.fake.waitForRequests(1);
  req.destroy();
  await until('nothing running or waiting', () => gw.app.queue.running === 0 && gw.app.queue.waiting === 0, 10_000);
  gw.fake.behavior.loading = false; // the server turns ready: nothing may start for the gone client
  await until('the server is ready', async () => (await request(gw.port, { path: '/health' })).status === 200);
  t.equal(gw.app.queue.running, 0);
});

// --- the multipart reader against the parsers behind the gateway -----------------------------------
// llama-swap (Go: mime.ParseMediaType, quote-aware, `name*=` wins over `name=`) and llama-server's
// cpp-httplib (splits the Content-Disposition on every ';' and '=', quotes or not) read the form's
// `model` field themselves to pick the model. Wherever they could read a different part as `model`
// than the gateway does, the key policy checks one model and another one runs: such forms are refused.
const B = 'xYz-123';
const TYPE = `multipart/form-data; boundary=${B}`;
const part = (disposition: string, value: string): string => `--${B}\r\nContent-Disposition: ${disposition}\r\n\r\n${value}\r\n`;
const FILE = part('form-data; name="file"; filename="a.wav"', 'RIFF....');
const END = `--${B}--`;
const read = (body: string): unknown => readForm(Buffer.from(body, 'latin1'), TYPE);

t.test('form parts whose name other parsers read differently are refused', async (t) => {
  // Go reads the quoted filename whole (name "junk"); a naive reader, and the gateway before, found
  // `name=allowed` inside it.
  t.same(
    read(part('form-data; filename="x;name=model;"; name="junk"', 'allowed') + FILE + END),
    { problem: 'malformed' },
    '";" inside a quoted value',
  );
  // RFC 2231: Go takes name*= over name= ("model"); the gateway read "junk".
  t.same(read(part(`form-data; name="junk"; name*=UTF-8''model`, 'forbidden') + FILE + END), { problem: 'malformed' }, 'name*=');
  // cpp-httplib splits on '=': `name="zz="model"` is "model" to it, "zz=" to the gateway before.
  t.same(read(part('form-data; name="zz="model"', 'forbidden') + FILE + END), { problem: 'malformed' }, 'junk after a quoted value');
  t.same(read(part('form-data; name="zz=model"', 'forbidden') + FILE + END), { problem: 'malformed' }, '"=" inside a name');
  t.same(read(part('form-data; name="a"; name="model"', 'forbidden') + FILE + END), { problem: 'malformed' }, 'two names');
  // What clients send still reads as before.
  t.same(read(part('form-data; name="model"', 'whisper-1') + FILE + END), { json: { model: 'whisper-1' } });
  t.same(read(part('form-data; name=model', 'whisper-1') + FILE + END), { json: { model: 'whisper-1' } }, 'unquoted');
  t.same(read(part('form-data; filename="a=b.wav"; name="file"', 'x') + END), { json: {} }, '"=" in a filename is fine');
  t.same(read(part('form-data; name="file"; filename="a.wav";', 'x') + END), { json: {} }, 'a trailing ";"');
});

// --- the public /health ------------------------------------------------------------------------

t.test('the public /health tells no model ids (llama-server names a model by its file path when run without -a)', async (t) => {
  const f = await fake(t, { modelId: '/home/alice/models/secret-finetune-Q4_K_M.gguf' });
  const gw = await startGateway(t, { upstreams: [f.url, f.url], maxInflight: null });
  await until('discovered', () => gw.app.upstreams.nodes.every((n) => n.models.length > 0));
  const res = await request(gw.port, { path: '/health' });
  t.notMatch(res.text, '/home/alice', 'no file path to someone without a key');
});

// --- the real llama-server ------------------------------------------------------------------------

t.test('one request cannot take down every server of a model (a grammar llama-server crashes on, then failover)', async (t) => {
  if (skipTier(t)) return;
  const one = await startLlama(t, { alias: 'tiny', embeddings: false });
  const two = await startLlama(t, { alias: 'tiny', embeddings: false });
  const gw = await startRealGateway(t, { upstreams: [one.url, two.url] }, { llama: one, discovery: true });
  await until('both servers serve tiny', () => gw.app.upstreams.resolve('tiny')?.nodes.length === 2, 10_000);
  const depth = 40_000;
  const grammar = `root ::= ${'('.repeat(depth)}"a"${')'.repeat(depth)}`;
  const res = await request(gw.port, {
    path: '/v1/completions',
    headers: { authorization: `Bearer ${KEY_A}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'tiny', prompt: 'x', max_tokens: 2, grammar }),
  });
  t.equal(res.status, 400, 'refused before it reaches llama-server');
  const alive = async (url: string): Promise<boolean> =>
    fetch(`${url}/health`).then(
      (r) => r.status === 200,
      () => false,
    );
  t.ok((await alive(one.url)) || (await alive(two.url)), 'at least one server of the model is still up');
});
