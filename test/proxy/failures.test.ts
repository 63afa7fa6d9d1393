// When llama-server is down, slow or wrong: a clear OpenAI-shaped 502/504 from the gateway, its own
// errors passed through with their status and body, and never a 500 for an upstream condition.
import net from 'node:net';
import { once } from 'node:events';
import t from 'tap';
import { recordings } from '../fixtures/fake-llama.js';
import { AUTH_A, chatBody, freePort, recordedBody, request, startGateway, until, within } from '../helpers.js';

const UNREACHABLE = {
  error: {
    message: 'The gateway could not reach the model server (llama-server). It may be stopped or starting up; try again shortly.',
    type: 'upstream_error',
    param: null,
    code: 'upstream_unreachable',
  },
};

t.test('llama-server down → 502 upstream_error on every route', async (t) => {
  const gw = await startGateway(t, { upstreams: [`http://127.0.0.1:${await freePort()}`] });
  for (const [path, body] of [
    ['/v1/chat/completions', chatBody()],
    ['/v1/chat/completions', chatBody({ stream: true })],
    ['/v1/embeddings', '{"input":"x"}'],
    ['/v1/models', undefined],
    ['/v1/models/gpt-oss-20b', undefined],
  ] as const) {
    const res = await request(gw.port, { path, headers: AUTH_A, body });
    t.equal(res.status, 502, path);
    t.equal(res.headers['content-type'], 'application/json; charset=utf-8');
    t.same(JSON.parse(res.text), UNREACHABLE);
  }
});

t.test('no upstream headers within GATEWAY_HEADERS_TIMEOUT_MS → 504, upstream request closed', async (t) => {
  const gw = await startGateway(t, { headersTimeoutMs: 300 }, { headersDelayMs: Infinity });
  const res = await within(request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() }), 5000, 'an answer');
  t.equal(res.status, 504);
  t.same(JSON.parse(res.text), {
    error: {
      message: 'The model server (llama-server) did not answer within 0 s (GATEWAY_HEADERS_TIMEOUT_MS).',
      type: 'upstream_error',
      param: null,
      code: 'upstream_timeout',
    },
  });
  await within(gw.fake.requests[0]!.closed, 2000, 'the upstream request is closed');
});

t.test("llama-server's own errors pass through with status and body", async (t) => {
  const gw = await startGateway(t);
  // 400 from llama-server (its validation), byte for byte.
  const missing = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: '{"model":"x"}' });
  t.equal(missing.status, 400);
  t.equal(missing.text, recordedBody(recordings['error-missing-messages']!.chunks));
  const exceeded = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: AUTH_A,
    body: chatBody({ x_fake_context_exceeded: true }),
  });
  t.equal(exceeded.status, 400);
  t.equal(exceeded.text, recordedBody(recordings['error-context-exceeded']!.chunks));

  // llama-server loading its model: the request waits for it (issue 14), and goes on once it is ready.
  gw.fake.behavior.loading = true;
  const held = request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await until('the request waits for the loading server', () => gw.app.queue.waiting === 1, 5000);
  t.equal(gw.app.upstreams.nodes[0]!.state, 'loading', 'the server is marked loading');
  gw.fake.behavior.loading = false;
  const after = await held;
  t.equal(after.status, 200, 'answered once llama-server was ready');
  t.equal(after.text, recordedBody(recordings['chat-nonstream']!.chunks));

  for (const status of [404, 500, 501]) {
    const body = JSON.stringify({ error: { code: status, message: `fake ${status}`, type: 'server_error' } });
    gw.fake.behavior.failWith = { status, body };
    const res = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
    t.equal(res.status, status, `upstream ${status} passes through`);
    t.equal(res.text, body);
  }
});

t.test('llama-server still loading when the queue deadline passes: 503', async (t) => {
  const gw = await startGateway(t, { queueTimeoutMs: 300 }, { loading: true });
  // The first request learns it (llama-server's own 503), waits for the server, and gets that answer.
  const first = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(first.status, 503, 'loading model → 503 passed through');
  t.equal(first.text, recordedBody(recordings['loading-503']!.chunks));
  // Later ones wait for the server the gateway knows is loading, and are never sent.
  for (const stream of [false, true]) {
    const res = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream }) });
    t.equal(res.status, 503);
    t.same(JSON.parse(res.text), {
      error: {
        message:
          'The model server was still loading its model after this request waited 0 s (GATEWAY_QUEUE_TIMEOUT_MS); try again shortly.',
        type: 'server_error',
        param: null,
        code: 'model_loading',
      },
    });
  }
  t.equal(gw.fake.requests.filter((r) => r.url === '/v1/chat/completions').length, 1, 'only the first reached llama-server');
});

/** A fake "llama-server" that misbehaves at the TCP/HTTP level. */
async function rawUpstream(t: { teardown(fn: () => unknown): void }, onConnection: (s: net.Socket) => void): Promise<string> {
  const server = net.createServer(onConnection).listen(0, '127.0.0.1');
  await once(server, 'listening');
  const sockets = new Set<net.Socket>();
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

t.test('upstream closes without answering → 502, not 500', async (t) => {
  const upstream = await rawUpstream(t, (s) => s.once('data', () => s.destroy()));
  const gw = await startGateway(t, { upstreams: [upstream] });
  const res = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(res.status, 502);
  t.same(JSON.parse(res.text), UNREACHABLE);
});

t.test('upstream answers garbage → 502 upstream_bad_response', async (t) => {
  const upstream = await rawUpstream(t, (s) => s.once('data', () => s.end('this is not HTTP\r\n\r\n')));
  const gw = await startGateway(t, { upstreams: [upstream] });
  const res = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(res.status, 502);
  t.equal((JSON.parse(res.text) as { error: { code: string } }).error.code, 'upstream_bad_response');
});

t.test('a JSON answer whose body never comes (upstream closes after its headers) → 502 upstream_bad_response', async (t) => {
  const upstream = await rawUpstream(t, (s) =>
    s.once('data', () => {
      s.write('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n');
      setTimeout(() => s.destroy(), 50);
    }),
  );
  const gw = await startGateway(t, { upstreams: [upstream] });
  const res = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  t.equal(res.status, 502, 'nothing was sent yet: the client still gets a proper error');
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8');
  t.same(JSON.parse(res.text), {
    error: {
      message: 'The model server (llama-server) sent a response the gateway could not use.',
      type: 'upstream_error',
      param: null,
      code: 'upstream_bad_response',
    },
  });
});

t.test('a non-streamed body cut short by upstream ends the client response (no hang)', async (t) => {
  const upstream = await rawUpstream(t, (s) =>
    s.once('data', () => {
      s.write('HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"choices":[');
      setTimeout(() => s.destroy(), 50);
    }),
  );
  const gw = await startGateway(t, { upstreams: [upstream] });
  const outcome = await within(
    request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() }).then(
      (r) => `completed ${r.status} with ${r.body.length} bytes`,
      (err: Error) => `client saw an error: ${err.message}`,
    ),
    5000,
    'the client response ends',
  );
  // The status line was already sent; the only honest signal left is a truncated response.
  t.match(outcome, /client saw an error|completed 200 with \d+ bytes/);
  t.notMatch(outcome, 'with 1000 bytes', 'the client is not told the body was complete');
  // The gateway cut the connection because upstream broke: counted as upstream's failure, not as
  // a client that left.
  const metrics = await waitForMetric(gw.port, 'llm_gateway_upstream_errors_total{');
  t.match(metrics, 'llm_gateway_upstream_errors_total{route="/v1/chat/completions",outcome="upstream_error"} 1');
  t.notMatch(metrics, 'llm_gateway_client_closed_total{');
});

/** The /metrics text once it shows `name` (a record arrives when the response has closed). */
async function waitForMetric(port: number, name: string): Promise<string> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const res = await request(port, { path: '/metrics' });
    if (res.text.includes(name) || Date.now() > deadline) return res.text;
    await new Promise((r) => setTimeout(r, 20));
  }
}

t.test('a request that arrives while the gateway shuts down gets an OpenAI-shaped 503 and Connection: close', async (t) => {
  const gw = await startGateway(t, {}, { headersDelayMs: 300 });
  const socket = net.connect(gw.port, '127.0.0.1');
  await once(socket, 'connect');
  let received = '';
  socket.setEncoding('utf8');
  socket.on('data', (d: string) => (received += d));
  const body = chatBody();
  socket.write(
    `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH_A.authorization}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  await gw.fake.waitForRequests(1);
  const closed = gw.app.close(); // the first request is still with llama-server
  // Pipelined on the same (busy) connection, so the server reads it after answering the first.
  socket.write(`GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH_A.authorization}\r\n\r\n`);
  await within(once(socket, 'close'), 5000, 'the connection is closed');
  await closed;
  const [first, second] = received.split(/(?=HTTP\/1\.1 )/);
  t.match(first, /^HTTP\/1\.1 200 /, 'the request in flight finished');
  t.match(second, /^HTTP\/1\.1 503 /);
  t.match(second, /\r\nconnection: close\r\n/i);
  t.same(JSON.parse(second!.slice(second!.indexOf('\r\n\r\n') + 4)), {
    error: { message: 'The gateway is restarting; retry in a few seconds.', type: 'server_error', param: null, code: 'shutting_down' },
  });
  t.equal(gw.fake.requests.length, 1, 'the second request never reached llama-server');
});
