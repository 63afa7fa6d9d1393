// Streaming, exactly: every SSE body reaches the client byte for byte as llama-server wrote it,
// chunk by chunk as it arrives, with back-pressure all the way to the upstream socket; a broken
// upstream stream ends the client's stream with an error event instead of a hang.
import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { recordings } from '../fixtures/fake-llama.js';
import { AUTH_A, chatBody, recordedBody, request, sleep, startGateway, withoutUsageChunk, within } from '../helpers.js';

// A chat stream whose client did not ask for usage is answered, for accounting, as one that did
// (the gateway adds stream_options.include_usage upstream) minus the usage-only chunk.
const USAGE_HIDDEN = withoutUsageChunk(recordedBody(recordings['chat-stream-include-usage']!.chunks));

const STREAMS: [string, string, string][] = [
  ['chat-stream', '/v1/chat/completions', chatBody({ stream: true })],
  ['chat-stream-include-usage', '/v1/chat/completions', chatBody({ stream: true, stream_options: { include_usage: true } })],
  ['completions-stream', '/v1/completions', JSON.stringify({ prompt: 'Hi', max_tokens: 4, stream: true })],
  [
    'messages-anthropic-stream',
    '/v1/messages',
    JSON.stringify({ model: 'm', max_tokens: 4, stream: true, messages: [{ role: 'user', content: 'Hi' }] }),
  ],
  ['responses-stream', '/v1/responses', JSON.stringify({ input: 'Hi', stream: true })],
];

t.test('each recorded stream reaches the client byte for byte, with SSE headers', async (t) => {
  const gw = await startGateway(t);
  for (const [name, path, body] of STREAMS) {
    const res = await request(gw.port, { path, headers: AUTH_A, body });
    t.equal(res.status, 200, name);
    const expected = name === 'chat-stream' ? USAGE_HIDDEN : recordedBody(recordings[name]!.chunks);
    t.equal(res.text, expected, `${name}: body identical ([DONE], event: lines and all)`);
    t.equal(res.headers['content-type'], 'text/event-stream');
    t.equal(res.headers['cache-control'], 'no-cache');
    t.equal(res.headers['x-accel-buffering'], 'no');
    t.equal(res.headers['transfer-encoding'], 'chunked');
    t.equal(res.headers.server, undefined, 'no Server header from llama-server');
    t.notOk(
      Object.keys(res.headers).some((h) => h.startsWith('access-control-')),
      'no upstream CORS headers',
    );
    t.not(res.headers['keep-alive'], 'timeout=5, max=100', "llama-server's Keep-Alive is not passed on");
  }
});

/** Opens a streamed chat request and yields each chunk the client receives. */
function openStream(port: number, body = chatBody({ stream: true })): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, method: 'POST', path: '/v1/chat/completions', headers: AUTH_A, agent: false },
      resolve,
    );
    req.on('error', reject);
    req.end(body);
  });
}

t.test('chunks are passed on as they arrive, not when the stream is done', async (t) => {
  const gw = await startGateway(t, {}, { chunkDelayMs: 150, extraContentChunks: 5 });
  const res = await openStream(gw.port);
  const chunks: string[] = [];
  const upstreamDoneAt: (number | undefined)[] = [];
  res.setEncoding('utf8');
  for await (const chunk of res) {
    chunks.push(chunk as string);
    upstreamDoneAt.push(gw.fake.requests[0]?.finishedAt);
  }
  t.ok(chunks.length >= 8, `the client saw ${chunks.length} separate chunks`);
  t.equal(upstreamDoneAt[0], undefined, 'the first chunk arrived while llama-server was still generating');
  t.equal(
    upstreamDoneAt.filter((d) => d === undefined).length >= chunks.length - 2,
    true,
    'every chunk but the last ones arrived before upstream finished',
  );
  t.match(chunks.join(''), /data: \[DONE\]\n\n$/);
});

t.test('a slow reader slows the upstream socket; memory for the stream stays bounded', async (t) => {
  const TOTAL = 64 * 1024 * 1024;
  const gw = await startGateway(t, {}, { bigStreamBytes: TOTAL });
  const res = await openStream(gw.port);
  res.pause();
  // Wait until llama-server's writes stall: back-pressure has reached it.
  let last = -1;
  for (let i = 0; i < 100; i++) {
    await sleep(100);
    const now = gw.fake.requests[0]?.bytesWritten ?? 0;
    if (now === last && now > 0) break;
    last = now;
  }
  const stalledAt = gw.fake.requests[0]?.bytesWritten ?? 0;
  t.ok(stalledAt > 0, 'upstream started');
  // What is in flight sits in kernel socket buffers (two loopback hops, a few MiB each) and small
  // stream buffers in the gateway; without back-pressure upstream would have written all of it.
  t.ok(stalledAt < 24 * 1024 * 1024, `upstream stalled after ${(stalledAt / 1048576).toFixed(1)} MiB of ${TOTAL / 1048576} MiB`);
  t.equal(gw.fake.requests[0]?.finishedAt, undefined, 'upstream is held, not finished');

  // Read slowly for a while, then at full speed: everything arrives, once, in order.
  let received = 0;
  let tail = '';
  res.on('data', (c: Buffer) => {
    received += c.length;
    tail = (tail + c.toString('latin1')).slice(-64);
  });
  res.resume();
  await once(res, 'end');
  const includeUsage = recordedBody(recordings['chat-stream-include-usage']!.chunks);
  const hidden = Buffer.byteLength(includeUsage) - Buffer.byteLength(withoutUsageChunk(includeUsage));
  t.equal(
    received,
    gw.fake.requests[0]!.bytesWritten - hidden,
    'every byte llama-server wrote reached the client (but the usage chunk it was asked for)',
  );
  t.ok(received >= TOTAL);
  t.match(tail, /data: \[DONE\]\n\n$/);
});

t.test('llama-server crashing mid-stream ends the client stream with an error event', async (t) => {
  const gw = await startGateway(t, {}, { cutAfterChunks: 2 });
  const res = await within(
    request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true }) }),
    5000,
    'the client stream ends',
  );
  t.equal(res.status, 200);
  const firstTwo = recordedBody(recordings['chat-stream-include-usage']!.chunks.slice(0, 2));
  t.ok(res.text.startsWith(firstTwo), 'what upstream sent arrives unchanged');
  const rest = res.text.slice(firstTwo.length);
  t.equal(
    rest,
    `data: ${JSON.stringify({ error: { message: 'The model server (llama-server) closed the stream before it was complete.', type: 'upstream_error', param: null, code: 'upstream_stream_broken' } })}\n\n`,
  );
  t.notMatch(res.text, '[DONE]');
  t.ok(
    gw.logs.some((l) => l.msg === 'upstream stream broke'),
    'logged',
  );
});

t.test('Anthropic streams end with an Anthropic error event', async (t) => {
  const gw = await startGateway(t, {}, { cutAfterChunks: 1 });
  const res = await request(gw.port, {
    path: '/v1/messages',
    headers: AUTH_A,
    body: JSON.stringify({ model: 'm', max_tokens: 4, stream: true, messages: [{ role: 'user', content: 'Hi' }] }),
  });
  t.match(
    res.text,
    /\nevent: error\ndata: \{"type":"error","error":\{"type":"api_error","message":"The model server \(llama-server\) closed the stream before it was complete\."\}\}\n\n$/,
  );
});

t.test("llama-server's own mid-stream error event passes through unchanged", async (t) => {
  const gw = await startGateway(t, {}, { midStreamError: true });
  const res = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true }) });
  const first = recordings['chat-stream-include-usage']!.chunks[0]!.toString('utf8');
  t.equal(
    res.text,
    `${first}data: {"error":{"code":500,"message":"fake-llama: simulated failure in the middle of the stream","type":"server_error"}}\n\n`,
  );
});

t.test('a stream silent for longer than GATEWAY_IDLE_TIMEOUT_MS is ended and upstream cancelled', async (t) => {
  const gw = await startGateway(t, { idleTimeoutMs: 300 }, { chunkDelayMs: 60_000 });
  const res = await within(
    request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true }) }),
    5000,
    'the stream ends',
  );
  t.match(res.text, /"code":"upstream_timeout"/);
  t.match(res.text, /sent nothing for 0 s \(GATEWAY_IDLE_TIMEOUT_MS\)/);
  await within(gw.fake.requests[0]!.closed, 2000, 'the upstream request is closed');
});

t.test('comments (:), event: lines and odd framing pass through untouched', async (t) => {
  // A hand-made upstream: keep-alive comments, multi-line data, CRLF, an event split across writes.
  const parts = [
    ': ping\n\n',
    'event: message_start\ndata: {"a":1}\n\n',
    ':\n\n',
    'data: line1\ndata: line2\r\n\r\n',
    'data: {"sp',
    'lit":true}\n\n',
    'data: [DONE]\n\n',
  ];
  const upstream = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    let i = 0;
    const next = (): void => {
      if (i === parts.length) {
        res.end();
        return;
      }
      res.write(parts[i++]);
      setTimeout(next, 20);
    };
    next();
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  t.teardown(() => upstream.close());
  const gw = await startGateway(t, { upstreams: [`http://127.0.0.1:${(upstream.address() as AddressInfo).port}`] });
  const res = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true }) });
  t.equal(res.text, parts.join(''));
});
