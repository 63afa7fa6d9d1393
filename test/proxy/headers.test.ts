// Header scrubbing, both ways: the client's credentials and llama-server's control headers never
// reach upstream; llama-server's Server, Keep-Alive and (credentialed, reflected) CORS headers
// never reach the client.
import t from 'tap';
import { AUTH_A, KEY_A, chatBody, rawExchange, request, startGateway } from '../helpers.js';

const NEVER_UPSTREAM = [
  'x-api-key',
  'cookie',
  'proxy-authorization',
  'te',
  'upgrade',
  'x-conversation-id',
  'x-llama-server-proxy-header-authorization',
  'x-tool-token',
  'x-my-llm-key',
  'x-hop-by-name',
  'forwarded',
  'x-forwarded-host',
];

t.test('request headers: credentials and control headers dropped, forwarding headers added', async (t) => {
  const gw = await startGateway(t);
  // A raw request, so hop-by-hop headers arrive exactly as a hostile client would send them.
  const head = [
    'POST /v1/chat/completions HTTP/1.1',
    'Host: api.example.com',
    `Authorization: Bearer ${KEY_A}`,
    `X-Api-Key: ${KEY_A}`,
    'Cookie: session=abc',
    'Proxy-Authorization: Basic Zm9vOmJhcg==',
    'TE: trailers',
    'Connection: keep-alive, X-Hop-By-Name',
    'X-Hop-By-Name: secret',
    'Upgrade: websocket',
    'X-Conversation-Id: conv-1',
    'X-Llama-Server-Proxy-Header-Authorization: Bearer other',
    'X-Tool-Token: t',
    'X-My-LLM-Key: waf-secret',
    'Forwarded: for=1.1.1.1',
    'X-Forwarded-Host: evil.example',
    'X-Forwarded-For: 203.0.113.9',
    'X-Forwarded-Proto: https',
    'User-Agent: OpenAI/JS 6.0.0',
    'X-Stainless-Os: Linux',
    'Accept: text/event-stream',
    'Content-Type: text/plain',
    `Content-Length: ${Buffer.byteLength(chatBody())}`,
    '',
    chatBody(),
  ].join('\r\n');
  const answer = await rawExchange(gw.port, head, 1500);
  t.match(answer, /^HTTP\/1\.1 200 OK/);
  const seen = gw.fake.requests[0]!.headers;
  for (const name of NEVER_UPSTREAM) t.equal(seen[name], undefined, `${name} not forwarded`);
  t.equal(seen.authorization, undefined, "the client's key never reaches llama-server");
  t.equal(seen['x-forwarded-for'], '203.0.113.9, 127.0.0.1', 'client address appended to the chain');
  t.equal(seen['x-forwarded-proto'], 'https');
  t.equal(seen['user-agent'], 'OpenAI/JS 6.0.0');
  t.equal(seen['x-stainless-os'], 'Linux');
  t.equal(seen.accept, 'text/event-stream');
  t.equal(seen['content-type'], 'application/json');
  t.equal(seen.host, `127.0.0.1:${gw.fake.port}`, 'Host is the upstream, not the public name');
  t.notMatch(JSON.stringify(gw.fake.requests[0]!.rawHeaders), KEY_A);
});

t.test('LLM_UPSTREAM_API_KEY is sent upstream instead of the client key', async (t) => {
  const upstreamKey = 'llama-own-key-0123456789';
  const gw = await startGateway(t, { upstreamApiKey: upstreamKey }, { apiKey: upstreamKey });
  const res = await request(gw.port, { path: '/v1/chat/completions', headers: { ...AUTH_A, 'x-api-key': KEY_A }, body: chatBody() });
  t.equal(res.status, 200);
  t.equal(gw.fake.requests[0]!.headers.authorization, `Bearer ${upstreamKey}`);
  t.equal(gw.fake.requests[0]!.headers['x-api-key'], undefined);
});

t.test('response headers: no Server, Keep-Alive or CORS from llama-server', async (t) => {
  const gw = await startGateway(t);
  for (const [path, body] of [
    ['/v1/chat/completions', chatBody()],
    ['/v1/chat/completions', chatBody({ stream: true })],
    ['/v1/models', undefined],
  ] as const) {
    const res = await request(gw.port, { path, headers: { ...AUTH_A, origin: 'http://evil.example' }, body });
    t.equal(res.status, 200);
    const names = res.rawHeaders.filter((_, i) => i % 2 === 0).map((h) => h.toLowerCase());
    t.notOk(names.includes('server'), `${path}: no Server`);
    t.notOk(
      names.some((n) => n.startsWith('access-control-')),
      `${path}: no reflected CORS`,
    );
    t.equal(names.filter((n) => n === 'keep-alive').length <= 1, true);
    t.not(res.headers['keep-alive'], 'timeout=5, max=100');
    t.ok(names.includes('content-type'));
  }
});
