// Cancellation in every phase: when the client goes away, the upstream request is aborted at once,
// so llama-server (which notices a closed socket) frees its slot. @fastify/reply-from alone does
// not do this before upstream headers or for stream:false; these tests name what broke there.
import http from 'node:http';
import t from 'tap';
import type { FakeLlama, RecordedRequest } from '../fixtures/fake-llama.js';
import { AUTH_A, chatBody, sleep, startGateway, within } from '../helpers.js';

/** Sends a request and returns the ClientRequest, so the test can destroy it at will. */
function send(port: number, path: string, body: string): { req: http.ClientRequest; response: Promise<http.IncomingMessage> } {
  const req = http.request({ host: '127.0.0.1', port, method: 'POST', path, headers: AUTH_A, agent: false });
  const response = new Promise<http.IncomingMessage>((resolve, reject) => {
    req.on('response', resolve);
    req.on('error', reject);
  });
  response.catch(() => {}); // the test destroys the request on purpose
  req.end(body);
  return { req, response };
}

/** The next request to `path` that reaches llama-server (not the gateway's own token counts). */
async function generation(fake: FakeLlama, path: string): Promise<RecordedRequest> {
  const end = Date.now() + 5000;
  for (;;) {
    const found = fake.requests.find((r) => r.url === path && r.closedAt === undefined);
    if (found !== undefined) return found;
    if (Date.now() > end) throw new Error(`${path} never reached llama-server`);
    await sleep(5);
  }
}

// "Well under a second": the upstream socket must close within this bound after the client leaves.
const PROMPT_CANCEL_BOUND_MS = 1000;

t.test('client leaves while llama-server processes the prompt (no headers yet), streamed', async (t) => {
  const gw = await startGateway(t, {}, { headersDelayMs: Infinity, countDelayMs: 0 });
  const { req } = send(gw.port, '/v1/chat/completions', chatBody({ stream: true }));
  const [upstream] = await gw.fake.waitForRequests(1);
  await sleep(100);
  t.equal(upstream!.closedAt, undefined, 'upstream is still working before the client leaves');
  const leftAt = performance.now();
  req.destroy();
  await within(upstream!.closed, PROMPT_CANCEL_BOUND_MS, 'upstream request closed after the client left');
  t.ok(upstream!.abortedByClient, 'llama-server saw its client (the gateway) go away');
  t.ok(upstream!.closedAt! >= leftAt);
  t.ok(gw.logs.some((l) => typeof l.msg === 'string' && l.msg.startsWith('client closed the connection before the model server answered')));
});

t.test('client leaves during a stream:false generation', async (t) => {
  const gw = await startGateway(t, {}, { headersDelayMs: Infinity, countDelayMs: 0 });
  const { req } = send(gw.port, '/v1/chat/completions', chatBody({ stream: false }));
  const [upstream] = await gw.fake.waitForRequests(1);
  req.destroy();
  await within(upstream!.closed, PROMPT_CANCEL_BOUND_MS, 'upstream request closed after the client left');
  t.ok(upstream!.abortedByClient);
});

t.test('client leaves in the middle of a stream', async (t) => {
  const gw = await startGateway(t, {}, { chunkDelayMs: 100, extraContentChunks: 100 });
  const { req, response } = send(gw.port, '/v1/chat/completions', chatBody({ stream: true }));
  const res = await response;
  await new Promise<void>((resolve) => res.once('data', () => resolve()));
  const [upstream] = await gw.fake.waitForRequests(1);
  req.destroy();
  await within(upstream!.closed, PROMPT_CANCEL_BOUND_MS, 'upstream request closed after the client left');
  t.ok(upstream!.abortedByClient);
  t.ok(upstream!.bytesWritten < 20_000, 'llama-server stopped generating early');
});

t.test('every other route cancels too (embeddings, completions, messages, responses)', async (t) => {
  const gw = await startGateway(t, {}, { headersDelayMs: Infinity, countDelayMs: 0 });
  const routes: [string, string][] = [
    ['/v1/embeddings', '{"input":"a"}'],
    ['/v1/completions', '{"prompt":"a"}'],
    ['/v1/messages', '{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"a"}]}'],
    ['/v1/responses', '{"input":"a","stream":true}'],
  ];
  for (const [path, body] of routes) {
    const { req } = send(gw.port, path, body);
    const upstream = await generation(gw.fake, path);
    req.destroy();
    await within(upstream.closed, PROMPT_CANCEL_BOUND_MS, `${path}: upstream closed`);
  }
});

t.test('after cancellations the gateway holds no upstream connection and still serves', async (t) => {
  // Usage off: a cancelled request's prompt is counted afterwards over the light pool, whose
  // keep-alive connection would stay open (usage.test.ts covers that counting).
  const gw = await startGateway(t, { usage: false }, { headersDelayMs: Infinity });
  for (let i = 0; i < 5; i++) {
    const { req } = send(gw.port, '/v1/chat/completions', chatBody({ stream: i % 2 === 0 }));
    const all = await gw.fake.waitForRequests(i + 1);
    req.destroy();
    await within(all[i]!.closed, PROMPT_CANCEL_BOUND_MS, 'closed');
  }
  for (let i = 0; i < 20 && gw.fake.openSockets() > 0; i++) await sleep(50);
  t.equal(gw.fake.openSockets(), 0, 'no upstream socket left open');
  gw.fake.behavior.headersDelayMs = 0;
  const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: gw.port, method: 'POST', path: '/v1/chat/completions', headers: AUTH_A, agent: false },
      resolve,
    );
    req.on('error', reject);
    req.end(chatBody());
  });
  t.equal(res.statusCode, 200);
  res.resume();
});
