// Bad input never costs the gateway more than a 4xx (issue #12, items 1, 3 and 4): invalid UTF-8,
// deep nesting and oversized or mistyped `model`s get the gateway's own 400 before anything is
// forwarded or kept; what a client controls is capped wherever it is kept (records, labels,
// logs); no query string reaches a log; malformed HTTP gets an OpenAI-shaped answer; keys that
// can never match (non-ASCII) are refused at start or skipped with a warning.
import type { FastifyRequest } from 'fastify';
import { EventEmitter } from 'node:events';
import type net from 'node:net';
import t from 'tap';
import { buildApp } from '../../src/app.js';
import { configWith } from '../../src/config.js';
import { GatewayError } from '../../src/errors.js';
import { MAX_JSON_DEPTH, MAX_MODEL_LENGTH, loggablePath, nestedDeeperThan } from '../../src/http/client-input.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { withIncludeUsage } from '../../src/proxy/json-body.js';
import type { UsageRecord } from '../../src/usage/exchange.js';
import { clientErrorHandler } from '../../src/http/malformed-http.js';
import { serializeRequest } from '../../src/plugins/request-log.js';
import { AUTH_A, KEY_A, KEY_B, chatBody, rawExchange, request, sleep, startGateway, tempStore, until, type Gateway } from '../helpers.js';

const JSON_CT = { 'content-type': 'application/json' };
const ADMIN_KEY = 'sk-admin-0123456789abcdef0123456789abcdef';

interface OpenAIError {
  error: { message: string; type: string; param: string | null; code: string | null };
}

function records(gw: Gateway): UsageRecord[] {
  const out: UsageRecord[] = [];
  gw.app.usage!.onRecord((r) => out.push(r));
  return out;
}

/** A chat body whose user content carries `bytes` raw (not escaped) inside its JSON string. */
function chatWithBytes(bytes: number[]): Buffer {
  return Buffer.concat([
    Buffer.from('{"model":"gpt-oss-20b","max_tokens":4,"messages":[{"role":"user","content":"hi '),
    Buffer.from(bytes),
    Buffer.from('"}]}'),
  ]);
}

function nested(depth: number): string {
  return '['.repeat(depth) + ']'.repeat(depth);
}

/** A chat body nesting `depth` levels in all (the body's own object is level 1). */
function chatNested(depth: number, extra: Record<string, unknown> = {}): string {
  const body = chatBody(extra);
  return `${body.slice(0, -1)},"x":${nested(depth - 1)}}`;
}

export const INVALID_UTF8: [string, number[]][] = [
  ['a 0xFF byte', [0xff]],
  ['a lone continuation byte 0x80', [0x80]],
  ['an overlong "/" (0xC0 0xAF)', [0xc0, 0xaf]],
  ['a truncated 3-byte sequence', [0xe2, 0x82]],
];

t.test('invalid UTF-8 inside a JSON string: the gateway 400, never forwarded', async (t) => {
  const gw = await startGateway(t);
  for (const [what, bytes] of INVALID_UTF8) {
    const res = await request(gw.port, { path: '/v1/chat/completions', headers: { ...AUTH_A, ...JSON_CT }, body: chatWithBytes(bytes) });
    t.equal(res.status, 400, what);
    t.equal(res.headers['content-type'], 'application/json; charset=utf-8');
    t.match(
      JSON.parse(res.text),
      { error: { message: /UTF-8/, type: 'invalid_request_error', param: null, code: 'invalid_json' } },
      `${what}: OpenAI-shaped`,
    );
    t.match(JSON.parse(res.text), { error: { message: /not valid UTF-8/ } });
  }
  // The same body truncated at its very end (a multi-byte character cut in half).
  const cut = Buffer.from(chatBody({ user: 'é' }));
  const res = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, ...JSON_CT },
    body: Buffer.concat([cut, Buffer.from([0xc3])]),
  });
  t.equal(res.status, 400, 'a truncated sequence at the end of the body');
  const ok = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, ...JSON_CT },
    body: chatBody({ user: 'héllo wörld ✓ 🙂' }),
  });
  t.equal(ok.status, 200, 'valid multi-byte UTF-8 passes');
  t.equal(gw.fake.requests.length, 1, 'only the valid body reached llama-server');
});

t.test('nesting deeper than the limit: 400 before anything is forwarded; at the limit it passes', async (t) => {
  const gw = await startGateway(t);
  const at = await request(gw.port, { path: '/v1/chat/completions', headers: { ...AUTH_A, ...JSON_CT }, body: chatNested(MAX_JSON_DEPTH) });
  t.equal(at.status, 200, `${MAX_JSON_DEPTH} levels pass`);
  for (const [what, body] of [
    ['one level too deep', chatNested(MAX_JSON_DEPTH + 1)],
    ['10,000 levels', chatNested(10_000)],
    ['10,000 levels of objects', `${chatBody().slice(0, -1)},"x":${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}}`],
    ['10,000 levels in a stream with stream_options', chatNested(10_000, { stream: true, stream_options: { include_usage: false } })],
    ['10,000 levels inside stream_options', chatBody({ stream: true }).slice(0, -1) + `,"stream_options":{"x":${nested(10_000)}}}`],
  ] as const) {
    const res = await request(gw.port, { path: '/v1/chat/completions', headers: { ...AUTH_A, ...JSON_CT }, body });
    t.equal(res.status, 400, what);
    t.match(
      JSON.parse(res.text),
      {
        error: {
          message: new RegExp(`nested more than ${MAX_JSON_DEPTH} levels`),
          type: 'invalid_request_error',
          param: null,
          code: 'json_too_deep',
        },
      },
      `${what}: OpenAI-shaped`,
    );
  }
  const brackets = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, ...JSON_CT },
    body: chatBody({ user: `\\"${'[{'.repeat(5000)}` }),
  });
  t.equal(brackets.status, 200, 'brackets inside strings (and escaped quotes) do not count');
  t.equal(gw.fake.requests.length, 2, 'only the two acceptable bodies were forwarded');
});

t.test('nestedDeeperThan: string-aware, exact at the limit', async (t) => {
  const deep = (n: number): Buffer => Buffer.from(nested(n));
  t.equal(nestedDeeperThan(deep(5), 5), false);
  t.equal(nestedDeeperThan(deep(6), 5), true);
  t.equal(nestedDeeperThan(Buffer.from('[[],[],[],[],[],[],[],[]]'), 2), false, 'many brackets, shallow');
  t.equal(nestedDeeperThan(Buffer.from('[[],[],[],[],[],[[[]]]]'), 3), true);
  t.equal(
    nestedDeeperThan(Buffer.from(`{"a":"${'['.repeat(50)}","b":"\\\\"}`), 2),
    false,
    'brackets in strings; an escaped backslash before the closing quote',
  );
  t.equal(nestedDeeperThan(Buffer.from(`{"a":"\\"[[[[[[","b":[[[]]]}`), 3), true, 'an escaped quote does not end the string');
  t.equal(nestedDeeperThan(Buffer.from(`{"a":"[[[[[[[[`), 2), false, 'an unterminated string (JSON.parse refuses it)');
});

t.test('withIncludeUsage cannot throw a RangeError out as a 500', async (t) => {
  const json = JSON.parse(`{"stream":true,"stream_options":{},"x":${nested(20_000)}}`) as Record<string, unknown>;
  let caught: unknown;
  try {
    withIncludeUsage(Buffer.from('{}'), json);
  } catch (err) {
    caught = err;
  }
  t.ok(caught instanceof GatewayError, 'a GatewayError, not a RangeError');
  t.equal((caught as GatewayError).statusCode, 400);
});

t.test('model: too long or not a string is a 400 (param model); records and labels never hold a huge one', async (t) => {
  const gw = await startGateway(t);
  const seen = records(gw);
  const cases: [string, unknown, number, string | null][] = [
    [`${MAX_MODEL_LENGTH} characters`, 'm'.repeat(MAX_MODEL_LENGTH), 200, null],
    [`${MAX_MODEL_LENGTH + 1} characters`, 'm'.repeat(MAX_MODEL_LENGTH + 1), 400, 'string_above_max_length'],
    ['2 MB', 'm'.repeat(2 << 20), 400, 'string_above_max_length'],
    ['a number', 5, 400, 'invalid_type'],
    ['an object', { id: 'x' }, 400, 'invalid_type'],
    ['null (treated as absent, like llama-server does)', null, 200, null],
  ];
  for (const [what, model, status, code] of cases) {
    const res = await request(gw.port, { path: '/v1/chat/completions', headers: { ...AUTH_A, ...JSON_CT }, body: chatBody({ model }) });
    t.equal(res.status, status, what);
    if (code !== null)
      t.match(
        JSON.parse(res.text),
        { error: { type: 'invalid_request_error', param: 'model', code, message: /'model'/ } },
        `${what}: OpenAI-shaped`,
      );
    if (code !== null) t.ok(res.text.length < 400, `${what}: the answer does not echo the model`);
  }
  t.equal(gw.fake.requests.length, 2, 'only the acceptable ones were forwarded');
  await until('records', () => seen.length === cases.length, 2000);
  for (const r of seen) t.ok(r.model === null || r.model.length <= MAX_MODEL_LENGTH, `recorded model ≤ ${MAX_MODEL_LENGTH} characters`);
  t.equal(seen[2]!.outcome, 'rejected_policy');
  // A record that somehow carries a long model (the recorder takes any record) is cut in /metrics.
  gw.app.usage!.record({ ...seen[0]!, model: 'z'.repeat(100_000), promptTokens: 1 });
  await sleep(50);
  const metrics = await request(gw.port, { path: '/metrics' });
  t.equal(metrics.status, 200);
  t.notMatch(metrics.text, 'z'.repeat(MAX_MODEL_LENGTH + 1), 'no metrics label longer than the cap');
  t.match(metrics.text, 'z'.repeat(MAX_MODEL_LENGTH));
});

t.test('a key in a query string reaches no log line and no record (API, admin, unknown routes)', async (t) => {
  const registry = new KeyRegistry([KEY_A, KEY_B], tempStore(t));
  const gw = await startGateway(t, { adminKey: ADMIN_KEY }, {}, { registry });
  const seen = records(gw);
  const secret = KEY_B; // a real key, sent only in the query
  const targets: [string, Record<string, string>, number][] = [
    [`/v1/models?api_key=${secret}`, AUTH_A, 200],
    [`/v1/models?api_key=${secret}`, {}, 401],
    [`/v1/models?${secret}`, AUTH_A, 200],
    [`/v1/models#${secret}`, AUTH_A, 200],
    [`/admin/keys?api_key=${secret}`, { authorization: `Bearer ${ADMIN_KEY}` }, 200],
    [`/admin/keys?api_key=${secret}`, {}, 401],
    [`/nope?api_key=${secret}`, AUTH_A, 404],
    [`/v1/chat/completions?api_key=${secret}`, AUTH_A, 404],
    [`/metrics?api_key=${secret}`, {}, 200],
  ];
  for (const [path, headers, status] of targets) {
    const answer = await rawExchange(
      gw.port,
      `GET ${path} HTTP/1.1\r\nHost: x\r\n${Object.entries(headers)
        .map(([k, v]) => `${k}: ${v}\r\n`)
        .join('')}Connection: close\r\n\r\n`,
    );
    t.match(answer, new RegExp(`^HTTP/1.1 ${status} `), `${path.replace(secret, 'KEY')}: ${status}`);
    t.equal(answer.indexOf(secret), -1, 'the answer does not echo it either');
  }
  await until('records', () => seen.length >= 3, 2000);
  await sleep(50);
  t.equal(gw.logText().indexOf(secret), -1, 'no log line holds the key');
  t.equal(JSON.stringify(seen).indexOf(secret), -1, 'no usage record holds the key');
  const urls = gw.logs.filter((l) => l.msg === 'request').map((l) => l.url);
  t.ok(urls.includes('/v1/models?[query removed]'), 'the log shows that a query was there');
  t.ok(urls.includes('/nope?[query removed]'));
});

t.test('loggablePath: the path only, capped', async (t) => {
  t.equal(loggablePath('/v1/models'), '/v1/models');
  t.equal(loggablePath('/v1/models?api_key=sk-x&b=2'), '/v1/models?[query removed]');
  t.equal(loggablePath('/v1/models#sk-x'), '/v1/models?[query removed]');
  t.equal(loggablePath(`/${'a'.repeat(5000)}`).length, 1025);
  t.same(
    serializeRequest({ method: 'GET', url: '/v1/models?api_key=sk-x' } as FastifyRequest),
    { method: 'GET', url: '/v1/models?[query removed]' },
    "the process logger's req serializer too",
  );
});

t.test('a forwarded client address is recorded only when it is an IP address', async (t) => {
  const gw = await startGateway(t, { trustProxy: true });
  const seen = records(gw);
  for (const [cf, expected] of [
    ['203.0.113.7', '203.0.113.7'],
    ['2001:db8::1', '2001:db8::1'],
    ['x'.repeat(10_000), '127.0.0.1'],
    ['203.0.113.7, 10.0.0.1', '127.0.0.1'],
  ] as const) {
    const before = seen.length;
    await request(gw.port, { path: '/v1/models', headers: { ...AUTH_A, 'cf-connecting-ip': cf } });
    await until('record', () => seen.length > before, 2000);
    t.equal(seen[before]!.clientIp, expected, `Cf-Connecting-Ip ${cf.slice(0, 20)}`);
  }
  const before = seen.length;
  await request(gw.port, { path: '/v1/models', headers: { ...AUTH_A, 'x-forwarded-for': `${'y'.repeat(5000)}, 10.0.0.1` } });
  await until('record', () => seen.length > before, 2000);
  t.equal(seen[before]!.clientIp, '10.0.0.1', 'X-Forwarded-For: the rightmost entry (the trusted proxy added it), not the junk left of it');
  const claimed = seen.length;
  await request(gw.port, { path: '/v1/models', headers: { ...AUTH_A, 'x-forwarded-for': '198.51.100.1, 203.0.113.50' } });
  await until('record', () => seen.length > claimed, 2000);
  t.equal(
    seen[claimed]!.clientIp,
    '203.0.113.50',
    'a leftmost X-Forwarded-For entry is only a claim (red team: rotating it dodged the brake)',
  );
  const junkRight = seen.length;
  await request(gw.port, { path: '/v1/models', headers: { ...AUTH_A, 'x-forwarded-for': `10.0.0.1, ${'y'.repeat(5000)}` } });
  await until('record', () => seen.length > junkRight, 2000);
  t.equal(seen[junkRight]!.clientIp, '127.0.0.1', 'X-Forwarded-For whose last entry is not an address: the peer');
  await request(gw.port, {
    path: '/v1/models',
    headers: { authorization: 'Bearer wrong-key-0123456789', 'cf-connecting-ip': 'z'.repeat(10_000) },
  });
  await sleep(50);
  t.equal(gw.logText().indexOf('z'.repeat(100)), -1, 'a junk address reaches no log line');
});

t.test('malformed HTTP gets an OpenAI-shaped answer and the connection closes', async (t) => {
  const gw = await startGateway(t);
  const cases: [string, string, number, string][] = [
    ['a header line without a colon', 'GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n', 400, 'malformed_request'],
    [
      'a broken chunked body',
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH_A.authorization}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n`,
      400,
      'malformed_request',
    ],
    ['headers over the limit', `GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`, 431, 'headers_too_large'],
    ['not HTTP at all', 'HELLO\r\n\r\n', 400, 'malformed_request'],
    ['an HTTP/1.1 request without Host', `GET /v1/models HTTP/1.1\r\nAuthorization: ${AUTH_A.authorization}\r\n\r\n`, 400, 'missing_host'],
  ];
  for (const [what, bytes, status, code] of cases) {
    const answer = await rawExchange(gw.port, bytes);
    const [head, body] = answer.split('\r\n\r\n') as [string, string];
    t.match(head, new RegExp(`^HTTP/1.1 ${status} `), what);
    t.match(head.toLowerCase(), /\r\nconnection: close/, `${what}: Connection: close`);
    t.match(head.toLowerCase(), /\r\ncontent-type: application\/json; charset=utf-8/);
    t.match(
      JSON.parse(body) as OpenAIError,
      { error: { type: 'invalid_request_error', param: null, code } },
      `${what}: OpenAI-shaped body`,
    );
  }
  const http10 = await rawExchange(gw.port, `GET /v1/models HTTP/1.0\r\nAuthorization: ${AUTH_A.authorization}\r\n\r\n`);
  t.match(http10, /^HTTP\/1.1 200 /, 'HTTP/1.0 needs no Host');
  t.equal(gw.fake.requests.length, 1, 'nothing malformed reached llama-server');
});

t.test('clientErrorHandler: 408 for a request too slow to arrive; nothing written over a response in progress', async (t) => {
  const app = await buildApp(configWith({ apiKeys: [KEY_A] }));
  t.teardown(() => app.close());
  const fakeSocket = (httpMessage?: { headersSent: boolean }) => {
    const socket = Object.assign(new EventEmitter(), {
      writable: true,
      destroyed: false,
      written: '',
      _httpMessage: httpMessage,
      write(s: string) {
        this.written += s;
        return true;
      },
      destroy() {
        this.destroyed = true;
      },
    });
    return socket;
  };
  const slow = fakeSocket();
  clientErrorHandler.call(app, Object.assign(new Error('timeout'), { code: 'ERR_HTTP_REQUEST_TIMEOUT' }), slow as unknown as net.Socket);
  t.match(slow.written, /^HTTP\/1.1 408 Request Timeout\r\n/);
  t.match(JSON.parse(slow.written.split('\r\n\r\n')[1]!), { error: { code: 'request_timeout', type: 'invalid_request_error' } });
  t.equal(slow.destroyed, true);
  const busy = fakeSocket({ headersSent: true });
  clientErrorHandler.call(app, Object.assign(new Error('bad'), { code: 'HPE_INVALID_METHOD' }), busy as unknown as net.Socket);
  t.equal(busy.written, '', 'a response already started on this socket is not corrupted');
  t.equal(busy.destroyed, true);
  const reset = fakeSocket();
  clientErrorHandler.call(app, Object.assign(new Error('reset'), { code: 'ECONNRESET' }), reset as unknown as net.Socket);
  t.equal(reset.written, '');
});

t.test('a non-ASCII key in the key database is skipped with a warning, not silently never matched', async (t) => {
  const store = tempStore(t);
  const { record } = store.create({ name: 'fine' });
  store.create({ name: 'broken' });
  // Only an outside write can put such a key there: the gateway generates its keys (sk- + base64url).
  store.db.prepare("UPDATE keys SET prefix = 'sk-cafés' WHERE name = 'broken'").run();
  const registry = new KeyRegistry([KEY_A], store);
  const warnings: Record<string, unknown>[] = [];
  registry.start({ info: () => {}, error: () => {}, warn: (obj: object) => warnings.push(obj as Record<string, unknown>) });
  t.teardown(() => registry.stop());
  t.equal(registry.size, 2, 'LLM_API_KEYS and the good stored key');
  t.same([...registry.index.identities()].map((i) => i.name).sort(), ['env-1', record.name]);
  t.match(warnings, [{ keys: ['broken'] }], 'the skipped key is named (never its secret)');
});
