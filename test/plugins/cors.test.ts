// CORS is answered by the gateway alone: preflights need no key and never reach llama-server,
// allowed origins get exactly our headers on every response (errors included), disallowed origins
// and an unset CORS_ALLOW_ORIGIN get none, and llama-server's reflect-any-origin-with-credentials
// headers never reach a browser.
import http from 'node:http';
import { once } from 'node:events';
import type net from 'node:net';
import type { IncomingHttpHeaders } from 'node:http';
import t from 'tap';
import { recordings } from '../fixtures/fake-llama.js';
import { AUTH_A, chatBody, freePort, recordedBody, request, startGateway, type RawResponse } from '../helpers.js';

const ALLOWED = 'https://chat.example.com';
const OTHER = 'https://evil.example';
const JSON_TYPE = 'application/json; charset=utf-8';

const REQUESTED_HEADERS = 'authorization, content-type, x-stainless-os, x-stainless-retry-count, x-my-llm-key, x-evil';
const ALLOWED_REQUESTED = ['authorization', 'content-type', 'x-my-llm-key', 'x-stainless-os', 'x-stainless-retry-count'];

/** Every access-control-* response header, by name. */
function corsHeaders(headers: IncomingHttpHeaders): Record<string, string | string[] | undefined> {
  return Object.fromEntries(Object.entries(headers).filter(([name]) => name.startsWith('access-control-')));
}

/** How many times a header appears on the wire (any case). */
function count(res: RawResponse, name: string): number {
  return res.rawHeaders.filter((h, i) => i % 2 === 0 && h.toLowerCase() === name).length;
}

/** A comma list header as a sorted list of lowercased tokens. */
function tokens(value: string | string[] | undefined): string[] {
  return String(value ?? '')
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== '')
    .sort();
}

function preflight(port: number, origin: string, path = '/v1/chat/completions'): Promise<RawResponse> {
  return request(port, {
    method: 'OPTIONS',
    path,
    headers: { origin, 'access-control-request-method': 'POST', 'access-control-request-headers': REQUESTED_HEADERS },
  });
}

function post(
  port: number,
  origin: string | undefined,
  headers: Record<string, string> = AUTH_A,
  path = '/v1/chat/completions',
): Promise<RawResponse> {
  return request(port, {
    method: 'POST',
    path,
    headers: { 'content-type': 'application/json', ...(origin === undefined ? {} : { origin }), ...headers },
    body: chatBody(),
  });
}

const ORIGINAL_401 = { error: { message: 'Incorrect API key provided.', type: 'invalid_api_key', param: null, code: 'invalid_api_key' } };

t.test('an origin list', async (t) => {
  const gw = await startGateway(t, { corsAllowOrigin: [ALLOWED] });

  t.test('preflight from an allowed origin: 204, our headers only, no key, upstream untouched', async (t) => {
    for (const path of ['/v1/chat/completions', '/v1/models', '/v1/embeddings']) {
      const res = await preflight(gw.port, ALLOWED, path);
      t.equal(res.status, 204, path);
      t.equal(res.text, '');
      t.strictSame(Object.keys(corsHeaders(res.headers)).sort(), [
        'access-control-allow-headers',
        'access-control-allow-methods',
        'access-control-allow-origin',
        'access-control-max-age',
      ]);
      t.equal(res.headers['access-control-allow-origin'], ALLOWED);
      t.equal(count(res, 'access-control-allow-origin'), 1);
      t.strictSame(tokens(res.headers['access-control-allow-methods']), ['get', 'options', 'post']);
      t.strictSame(tokens(res.headers['access-control-allow-headers']), ALLOWED_REQUESTED, 'the allowed requested headers, not x-evil');
      t.equal(res.headers['access-control-max-age'], '600');
      t.equal(res.headers.vary, 'Origin');
      t.equal(res.headers['access-control-allow-credentials'], undefined);
      t.equal(res.headers['www-authenticate'], undefined, 'no key asked for');
    }
    t.equal(gw.fake.requests.length, 0, 'llama-server never saw a preflight');
  });

  t.test('preflight from a disallowed origin: no Access-Control-* header at all', async (t) => {
    const res = await preflight(gw.port, OTHER);
    t.equal(res.status, 204);
    t.strictSame(corsHeaders(res.headers), {});
    t.equal(res.headers.vary, 'Origin');
    t.equal(gw.fake.requests.length, 0);
  });

  t.test('POST from an allowed origin: 200, our ACAO once, none of llama-server’s CORS headers', async (t) => {
    gw.fake.reset();
    const res = await post(gw.port, ALLOWED);
    t.equal(res.status, 200);
    t.equal(res.text, recordedBody(recordings['chat-nonstream']!.chunks));
    t.equal(gw.fake.requests[0]?.headers.origin, ALLOWED, 'the fake reflected this Origin in its own ACAO');
    t.strictSame(Object.keys(corsHeaders(res.headers)).sort(), ['access-control-allow-origin', 'access-control-expose-headers']);
    t.equal(res.headers['access-control-allow-origin'], ALLOWED);
    t.equal(count(res, 'access-control-allow-origin'), 1, 'one ACAO, ours (llama-server’s is dropped)');
    t.equal(res.headers['access-control-allow-credentials'], undefined);
    const exposed = tokens(res.headers['access-control-expose-headers']);
    t.ok(
      exposed.includes('x-request-id') && exposed.includes('retry-after'),
      `exposes x-request-id and retry-after (${exposed.join(', ')})`,
    );
    t.equal(res.headers.vary, 'Origin');
  });

  t.test('a streamed POST from an allowed origin carries ACAO too', async (t) => {
    const res = await request(gw.port, {
      path: '/v1/chat/completions',
      headers: { ...AUTH_A, origin: ALLOWED },
      body: chatBody({ stream: true }),
    });
    t.equal(res.status, 200);
    t.equal(res.headers['content-type'], 'text/event-stream');
    t.equal(res.headers['access-control-allow-origin'], ALLOWED);
    t.equal(count(res, 'access-control-allow-origin'), 1);
    t.equal(res.headers['access-control-allow-credentials'], undefined);
  });

  t.test('a 401 and a 404 to an allowed origin carry ACAO, so the app can read them', async (t) => {
    gw.fake.reset();
    const wrongKey = await post(gw.port, ALLOWED, { authorization: 'Bearer sk-wrong-0123456789abcdef' });
    t.equal(wrongKey.status, 401);
    t.equal(wrongKey.headers['content-type'], JSON_TYPE);
    t.strictSame(JSON.parse(wrongKey.text), ORIGINAL_401);
    t.equal(wrongKey.headers['access-control-allow-origin'], ALLOWED);
    t.equal(wrongKey.headers['access-control-allow-credentials'], undefined);
    t.equal(wrongKey.headers.vary, 'Origin');

    const noKey = await post(gw.port, ALLOWED, {});
    t.equal(noKey.status, 401);
    t.equal(noKey.headers['access-control-allow-origin'], ALLOWED);

    for (const [method, path] of [
      ['GET', '/v1/nope'],
      ['POST', '/slots/0?action=erase'],
    ] as const) {
      const notFound = await request(gw.port, {
        method,
        path,
        headers: { ...AUTH_A, origin: ALLOWED },
        body: method === 'POST' ? '{}' : undefined,
      });
      t.equal(notFound.status, 404, `${method} ${path}`);
      t.equal(notFound.headers['content-type'], JSON_TYPE);
      t.equal((JSON.parse(notFound.text) as { error: { code: string } }).error.code, 'route_not_found');
      t.equal(notFound.headers['access-control-allow-origin'], ALLOWED);
      t.equal(notFound.headers.vary, 'Origin');
    }
    t.equal(gw.fake.requests.length, 0);
  });

  t.test('an upstream error passed through to an allowed origin: ours only', async (t) => {
    gw.fake.reset();
    gw.fake.behavior.failWith = { status: 400, body: recordedBody(recordings['error-context-exceeded']!.chunks) };
    t.teardown(() => gw.fake.reset());
    const res = await post(gw.port, ALLOWED);
    t.equal(res.status, 400);
    t.equal(res.text, recordedBody(recordings['error-context-exceeded']!.chunks));
    t.strictSame(Object.keys(corsHeaders(res.headers)).sort(), ['access-control-allow-origin', 'access-control-expose-headers']);
    t.equal(res.headers['access-control-allow-origin'], ALLOWED);
    t.equal(count(res, 'access-control-allow-origin'), 1);
  });

  t.test('POST from a disallowed origin works server side but carries no CORS header', async (t) => {
    gw.fake.reset();
    const res = await post(gw.port, OTHER);
    t.equal(res.status, 200);
    t.equal(res.text, recordedBody(recordings['chat-nonstream']!.chunks));
    t.equal(gw.fake.requests[0]?.headers.origin, OTHER, 'the fake reflected this Origin in its own ACAO');
    t.strictSame(corsHeaders(res.headers), {}, 'llama-server’s reflected ACAO is not passed on');
    t.equal(res.headers.vary, 'Origin');
    const wrongKey = await post(gw.port, OTHER, { authorization: 'Bearer sk-wrong-0123456789abcdef' });
    t.equal(wrongKey.status, 401);
    t.strictSame(corsHeaders(wrongKey.headers), {});
  });

  t.test('origins match exactly', async (t) => {
    for (const near of [
      'https://chat.example.com/',
      'http://chat.example.com',
      'https://CHAT.example.com',
      'https://chat.example.com:443',
      'https://chat.example.com.evil.example',
      'null',
    ]) {
      const res = await preflight(gw.port, near);
      t.strictSame(corsHeaders(res.headers), {}, `Origin: ${near}`);
    }
  });

  t.test('a request without Origin gets no CORS header', async (t) => {
    const res = await post(gw.port, undefined);
    t.equal(res.status, 200);
    t.strictSame(corsHeaders(res.headers), {});
  });

  t.test('x-my-llm-key never reaches upstream', async (t) => {
    gw.fake.reset();
    const res = await post(gw.port, ALLOWED, { ...AUTH_A, 'x-my-llm-key': 'waf-secret-0123456789' });
    t.equal(res.status, 200);
    const upstream = gw.fake.requests[0]!.headers;
    t.equal(upstream['x-my-llm-key'], undefined);
    t.notMatch(JSON.stringify(upstream), 'waf-secret-0123456789');
    t.equal(upstream.authorization, undefined);
  });
});

t.test('an allowed origin also gets ACAO on a gateway 502', async (t) => {
  const gw = await startGateway(t, { corsAllowOrigin: [ALLOWED], upstreams: [`http://127.0.0.1:${await freePort()}`] });
  const res = await post(gw.port, ALLOWED);
  t.equal(res.status, 502);
  t.equal((JSON.parse(res.text) as { error: { code: string } }).error.code, 'upstream_unreachable');
  t.equal(res.headers['access-control-allow-origin'], ALLOWED);
});

t.test("'*': any origin gets ACAO *, never credentials", async (t) => {
  const gw = await startGateway(t, { corsAllowOrigin: '*' });
  for (const origin of [ALLOWED, OTHER]) {
    const pre = await preflight(gw.port, origin);
    t.equal(pre.status, 204, origin);
    t.equal(pre.headers['access-control-allow-origin'], '*');
    t.strictSame(tokens(pre.headers['access-control-allow-methods']), ['get', 'options', 'post']);
    t.strictSame(tokens(pre.headers['access-control-allow-headers']), ALLOWED_REQUESTED);
    t.equal(pre.headers['access-control-max-age'], '600');
    t.equal(pre.headers['access-control-allow-credentials'], undefined);

    const res = await post(gw.port, origin);
    t.equal(res.status, 200);
    t.equal(res.headers['access-control-allow-origin'], '*', 'not the origin llama-server reflected');
    t.equal(count(res, 'access-control-allow-origin'), 1);
    t.equal(res.headers['access-control-allow-credentials'], undefined);

    const wrongKey = await post(gw.port, origin, { authorization: 'Bearer sk-wrong-0123456789abcdef' });
    t.equal(wrongKey.status, 401);
    t.equal(wrongKey.headers['access-control-allow-origin'], '*');
  }
  t.equal(gw.fake.requests.length, 2, 'only the two keyed POSTs reached upstream');
});

t.test('unset (the default): no CORS at all; OPTIONS is a 404', async (t) => {
  const gw = await startGateway(t);
  const pre = await preflight(gw.port, ALLOWED);
  t.equal(pre.status, 404);
  t.equal(pre.headers['content-type'], JSON_TYPE);
  t.strictSame(JSON.parse(pre.text), {
    error: {
      message: 'No route OPTIONS /v1/chat/completions. This gateway serves the OpenAI-compatible /v1 API.',
      type: 'invalid_request_error',
      param: null,
      code: 'route_not_found',
    },
  });
  t.strictSame(corsHeaders(pre.headers), {});
  const keyed = await request(gw.port, {
    method: 'OPTIONS',
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, origin: ALLOWED, 'access-control-request-method': 'POST' },
  });
  t.equal(keyed.status, 404, 'with a key too');
  t.strictSame(corsHeaders(keyed.headers), {});

  const ok = await post(gw.port, ALLOWED);
  t.equal(ok.status, 200);
  t.strictSame(corsHeaders(ok.headers), {}, 'llama-server’s reflected ACAO is not passed on');
  t.equal(ok.headers.vary, undefined);
  const wrongKey = await post(gw.port, ALLOWED, { authorization: 'Bearer sk-wrong-0123456789abcdef' });
  t.equal(wrongKey.status, 401);
  t.strictSame(corsHeaders(wrongKey.headers), {});
  const notFound = await request(gw.port, { path: '/v1/nope', headers: { ...AUTH_A, origin: ALLOWED } });
  t.equal(notFound.status, 404);
  t.strictSame(corsHeaders(notFound.headers), {});
  const health = await request(gw.port, { path: '/healthz', headers: { origin: ALLOWED } });
  t.equal(health.status, 200);
  t.strictSame(corsHeaders(health.headers), {});

  t.equal(gw.fake.requests.length, 1, 'only the keyed POST reached upstream');
  t.equal(gw.fake.requests[0]?.method, 'POST');
});

t.test("Vary: Origin on every answer of an origin list, merged with llama-server's own Vary", async (t) => {
  const upstream = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/json', vary: 'Accept-Encoding' });
    res.end('{"object":"list","data":[]}');
  });
  upstream.listen(0, '127.0.0.1');
  await once(upstream, 'listening');
  t.teardown(() => upstream.close());
  const gw = await startGateway(t, {
    corsAllowOrigin: [ALLOWED],
    upstreams: [`http://127.0.0.1:${(upstream.address() as net.AddressInfo).port}`],
  });
  const withOrigin = await request(gw.port, { path: '/v1/models', headers: { ...AUTH_A, origin: ALLOWED } });
  t.equal(withOrigin.headers.vary, 'Origin, Accept-Encoding');
  t.equal(withOrigin.headers['access-control-allow-origin'], ALLOWED);
  const noOrigin = await request(gw.port, { path: '/v1/models', headers: AUTH_A });
  t.equal(noOrigin.headers.vary, 'Origin, Accept-Encoding', 'a no-Origin answer is not cached for browsers either');
  const healthz = await request(gw.port, { path: '/healthz' });
  t.equal(healthz.headers.vary, 'Origin');
});
