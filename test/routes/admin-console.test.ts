// The admin console's files at /admin/ (only with GATEWAY_ADMIN_KEY set, each with the strict CSP
// and the other security headers, no path reaching any other file) and the admin API routes the
// console reads (/admin/usage/series, /admin/requests, /admin/live): guarded by the admin key like
// the rest of /admin, with their whole bodies.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { gunzipSync } from 'node:zlib';
import t from 'tap';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { CONSOLE_CSP, loadConsole } from '../../src/routes/admin-console.js';
import { queueState } from '../../src/routes/admin-usage.js';
import type { UsageRecord } from '../../src/usage/exchange.js';
import {
  AUTH_A,
  KEY_A,
  KEY_B,
  bearer,
  chatBody,
  request,
  startGateway,
  tempStore,
  until,
  usageRecord,
  type Gateway,
  type Teardown,
} from '../helpers.js';
import { CONSOLE_DIR, ensureConsoleBuilt } from '../console/build.js';

const ADMIN = 'adm-0123456789abcdefghijklmnopqrstuvwxyz';
const ADMIN_AUTH = bearer(ADMIN);
const JSON_TYPE = 'application/json; charset=utf-8';
const SECURITY_HEADERS = {
  'content-security-policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'x-content-type-options': 'nosniff',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-cache',
};
const UNAUTHORIZED = { error: { message: 'Incorrect API key provided.', type: 'invalid_api_key', param: null, code: 'invalid_api_key' } };

ensureConsoleBuilt();

async function gateway(t: Teardown, adminKey = ADMIN, behavior = {}): Promise<Gateway> {
  const registry = new KeyRegistry([KEY_A, KEY_B], tempStore(t));
  return startGateway(t, { adminKey }, behavior, { registry, usageFlushMs: 20 });
}

function notFound(path: string): unknown {
  return {
    error: {
      message: `No route GET ${path}. This gateway serves the OpenAI-compatible /v1 API.`,
      type: 'invalid_request_error',
      param: null,
      code: 'route_not_found',
    },
  };
}

t.test('the CSP sent is the one the console is written for', async (t) => {
  t.equal(CONSOLE_CSP, SECURITY_HEADERS['content-security-policy']);
});

t.test('every console file is served at /admin/ with the security headers, an ETag and its type', async (t) => {
  const gw = await gateway(t);
  const files = loadConsole(CONSOLE_DIR);
  t.ok(files.size >= 10, `${files.size} files`);
  t.ok(files.has('') && files.has('assets/main.js') && files.has('assets/vendor/uPlot.iife.min.js') && files.has('assets/console.css'));
  let bytes = 0;
  for (const [url, file] of files) {
    const res = await gw.app.inject({ url: `/admin/${url}` });
    t.equal(res.statusCode, 200, `/admin/${url}`);
    t.match(res.headers, { ...SECURITY_HEADERS, 'content-type': file.type, etag: file.etag }, `/admin/${url}: headers`);
    t.equal(res.headers['content-encoding'], undefined, 'not compressed when not asked');
    t.same(res.rawPayload, readFileSync(join(CONSOLE_DIR, url === '' ? 'index.html' : url)), `/admin/${url}: the file`);
    bytes += res.rawPayload.length;
  }
  t.ok(bytes < 300 * 1024, `the whole console is ${Math.round(bytes / 1024)} KB`);

  const index = await gw.app.inject({ url: '/admin/' });
  t.equal(index.headers['content-type'], 'text/html; charset=utf-8');
  t.match(index.body, /<script type="module" src="assets\/main.js"><\/script>/);
  t.notMatch(index.body, /<script>|\sstyle=|\son[a-z]+=/, 'no inline script, style or handler in the page');

  const redirect = await gw.app.inject({ url: '/admin' });
  t.equal(redirect.statusCode, 308);
  t.equal(redirect.headers.location, '/admin/');
  t.match(redirect.headers, SECURITY_HEADERS);
});

t.test('compressed when the browser accepts gzip; 304 for a file it has', async (t) => {
  const gw = await gateway(t);
  const plain = readFileSync(join(CONSOLE_DIR, 'assets/vendor/uPlot.iife.min.js'));
  const res = await gw.app.inject({ url: '/admin/assets/vendor/uPlot.iife.min.js', headers: { 'accept-encoding': 'gzip, deflate, br' } });
  t.equal(res.statusCode, 200);
  t.equal(res.headers['content-encoding'], 'gzip');
  t.equal(res.headers.vary, 'accept-encoding');
  t.match(res.headers, SECURITY_HEADERS);
  t.ok(res.rawPayload.length < plain.length / 2, `${res.rawPayload.length} bytes for ${plain.length}`);
  t.same(gunzipSync(res.rawPayload), plain);

  const again = await gw.app.inject({
    url: '/admin/assets/vendor/uPlot.iife.min.js',
    headers: { 'accept-encoding': 'gzip', 'if-none-match': String(res.headers.etag) },
  });
  t.equal(again.statusCode, 304);
  t.equal(again.body, '');
  t.match(again.headers, SECURITY_HEADERS);
  const stale = await gw.app.inject({ url: '/admin/', headers: { 'if-none-match': '"something-else"' } });
  t.equal(stale.statusCode, 200);
});

t.test('without GATEWAY_ADMIN_KEY nothing is served at /admin/', async (t) => {
  const gw = await gateway(t, '');
  for (const path of ['/admin/', '/admin', '/admin/assets/main.js', '/admin/assets/console.css']) {
    const res = await gw.app.inject({ url: path });
    t.equal(res.statusCode, 404, path);
    t.equal(res.headers['content-type'], JSON_TYPE);
    t.same(res.json(), notFound(path));
    t.equal(res.headers['content-security-policy'], undefined);
  }
});

t.test('no path reaches a file that is not a console file', async (t) => {
  const gw = await gateway(t);
  const pkg = readFileSync(new URL('../../package.json', import.meta.url), 'utf8');
  for (const path of [
    '/admin/../package.json',
    '/admin/assets/../../package.json',
    '/admin/assets/..%2f..%2fpackage.json',
    '/admin/assets/%2e%2e/%2e%2e/package.json',
    '/admin/assets/..%5c..%5cpackage.json',
    '/admin/assets/vendor/../../../../src/app.ts',
    '/admin//etc/passwd',
    '/admin/index.html',
    '/admin/assets/',
    '/admin/assets/main.ts',
    '/admin/assets/main.js.map',
    '/admin/tsconfig.json',
  ]) {
    // A raw socket: the path is sent byte for byte, not normalised by a client.
    const res = await request(gw.port, { path });
    t.equal(res.status, 404, path);
    t.notOk(res.text.includes('"name": "llm-gateway"') || res.text.includes(pkg.slice(0, 40)), `${path}: no file content`);
    t.equal(res.headers['content-type'], JSON_TYPE);
  }
});

const CONSOLE_API = ['/admin/usage/series', '/admin/requests', '/admin/live'];

t.test("the console's API routes are guarded like the rest of /admin", async (t) => {
  const gw = await gateway(t);
  for (const path of CONSOLE_API) {
    for (const [what, headers] of [
      ['no key', {}],
      ['a client key', AUTH_A],
      ['a wrong admin key', bearer(`${ADMIN}x`)],
    ] as const) {
      const res = await request(gw.port, { path, headers });
      t.equal(res.status, 401, `${path}, ${what}`);
      t.equal(res.headers['www-authenticate'], 'Bearer');
      t.same(JSON.parse(res.text), UNAUTHORIZED);
    }
    const ok = await request(gw.port, { path, headers: ADMIN_AUTH });
    t.equal(ok.status, 200, `${path}, the admin key`);
    t.equal(ok.headers['content-type'], JSON_TYPE);
  }
  const off = await gateway(t, '');
  for (const path of CONSOLE_API) {
    const res = await request(off.port, { path, headers: ADMIN_AUTH });
    t.equal(res.status, 404, `${path} without GATEWAY_ADMIN_KEY`);
  }
  t.equal(gw.fake.requests.filter((r) => !['/health', '/props', '/slots'].includes(r.url)).length, 0, 'nothing else went upstream');
});

const DAY1 = Date.parse('2026-03-01T10:00:00Z');
const DAY2 = Date.parse('2026-03-02T23:59:00Z');

function rec(i: number, ts: number, over: Partial<UsageRecord>): UsageRecord {
  return { ...usageRecord(i), ts, ...over };
}

/** A usage table of six requests on two days: two keys, two models, one error. */
function seed(gw: Gateway): void {
  gw.app.usageStore!.insert([
    rec(1, DAY1, { keyId: 'key_aaaaaaaaaaaa', keyName: 'alice', model: 'chat', promptTokens: 10, completionTokens: 5 }),
    rec(2, DAY1 + 1000, { keyId: 'key_aaaaaaaaaaaa', keyName: 'alice', model: 'embed', promptTokens: 7, completionTokens: 0 }),
    rec(3, DAY1 + 2000, { keyId: 'key_bbbbbbbbbbbb', keyName: 'bob', model: 'chat', promptTokens: 1, completionTokens: 1 }),
    rec(4, DAY2, { keyId: 'key_bbbbbbbbbbbb', keyName: 'bob', model: 'chat', promptTokens: 100, completionTokens: 50 }),
    rec(5, DAY2 + 10, {
      keyId: 'key_bbbbbbbbbbbb',
      keyName: 'bob',
      model: 'chat',
      status: 429,
      outcome: 'rejected_limit',
      promptTokens: null,
      completionTokens: null,
    }),
    rec(6, DAY2 + 20, {
      keyId: 'key_aaaaaaaaaaaa',
      keyName: 'alice',
      model: null,
      status: 404,
      outcome: 'upstream_error',
      promptTokens: null,
      completionTokens: null,
    }),
  ]);
}

/**
 * How /admin/live names the model server and counts slots: one llama-server and the fair queue's
 * slot count, or (with the set of llama-servers of issue 14) the set's first node and its slots.
 */
/** A gateway that follows its llama-server (discovery, slots from /props), for the live view. */
async function liveGateway(t: Teardown, behavior = {}): Promise<Gateway> {
  const registry = new KeyRegistry([KEY_A, KEY_B], tempStore(t));
  const gw = await startGateway(t, { adminKey: ADMIN, maxInflight: null }, behavior, { registry, usageFlushMs: 20, discovery: true });
  await until('the server probed', () => gw.app.upstreams.nodes[0]!.state !== 'unknown');
  return gw;
}

async function get(gw: Gateway, url: string): Promise<{ status: number; body: unknown }> {
  const res = await gw.app.inject({ url, headers: ADMIN_AUTH });
  return { status: res.statusCode, body: res.json() };
}

t.test('GET /admin/usage/series: tokens and requests per day, by key or model', async (t) => {
  const gw = await gateway(t);
  seed(gw);
  t.same(await get(gw, '/admin/usage/series?since=2026-03-01&until=2026-03-02'), {
    status: 200,
    body: {
      object: 'usage_series',
      by: 'key',
      since: '2026-03-01T00:00:00.000Z',
      until: '2026-03-03T00:00:00.000Z',
      days: ['2026-03-01', '2026-03-02'],
      data: [
        { key: 'alice', requests: [2, 1], tokens: [22, 0] },
        { key: 'bob', requests: [1, 2], tokens: [2, 150] },
      ],
    },
  });
  t.same(await get(gw, '/admin/usage/series?since=2026-03-01&until=2026-03-02&by=model&key=bob'), {
    status: 200,
    body: {
      object: 'usage_series',
      by: 'model',
      since: '2026-03-01T00:00:00.000Z',
      until: '2026-03-03T00:00:00.000Z',
      days: ['2026-03-01', '2026-03-02'],
      data: [{ model: 'chat', requests: [1, 2], tokens: [2, 150] }],
    },
  });
  t.same(await get(gw, '/admin/usage/series?since=2026-03-02&until=2026-03-02&by=model'), {
    status: 200,
    body: {
      object: 'usage_series',
      by: 'model',
      since: '2026-03-02T00:00:00.000Z',
      until: '2026-03-03T00:00:00.000Z',
      days: ['2026-03-02'],
      data: [
        { model: '(none)', requests: [1], tokens: [0] },
        { model: 'chat', requests: [2], tokens: [150] },
      ],
    },
  });
  t.same(await get(gw, '/admin/usage/series?since=2020-01-01&until=2020-01-02'), {
    status: 200,
    body: { object: 'usage_series', by: 'key', since: '2020-01-01T00:00:00.000Z', until: '2020-01-03T00:00:00.000Z', days: [], data: [] },
  });
  t.same(await get(gw, '/admin/usage/series?since=yesterday'), {
    status: 400,
    body: {
      error: {
        message: 'since "yesterday" is not a time: use 7d, 24h, 90m, a date YYYY-MM-DD or an ISO time',
        type: 'invalid_request_error',
        param: null,
        code: 'invalid_period',
      },
    },
  });
  const day = await get(gw, '/admin/usage/series?by=day');
  t.equal(day.status, 400);
  t.match(day.body, { error: { code: 'invalid_body', message: /querystring\/by must be equal to one of the allowed values/ } });
});

interface Page {
  data: { request_id: string; ts: string; outcome: string; status: number; total_tokens: number }[];
  has_more: boolean;
  next: string | null;
}

t.test('GET /admin/requests: single requests, newest first, filtered and paged; never a body', async (t) => {
  const gw = await gateway(t);
  seed(gw);
  const all = await get(gw, '/admin/requests?since=2026-03-01&until=2026-03-02&limit=500');
  t.equal(all.status, 200);
  const ids = (b: unknown): string[] => (b as Page).data.map((r) => r.request_id);
  t.same(ids(all.body), ['req-6', 'req-5', 'req-4', 'req-3', 'req-2', 'req-1']);
  t.same((all.body as Page).data[2], {
    id: 4,
    ts: '2026-03-02T23:59:00.000Z',
    request_id: 'req-4',
    key_id: 'key_bbbbbbbbbbbb',
    key_name: 'bob',
    route: '/v1/chat/completions',
    model: 'chat',
    status: 200,
    outcome: 'ok',
    streamed: false,
    prompt_tokens: 100,
    cached_tokens: null,
    completion_tokens: 50,
    total_tokens: 150,
    estimated: false,
    ttft_ms: null,
    duration_ms: 1,
    client_ip: '127.0.0.1',
    user_agent: null,
    end_user: null,
    cost: null,
  });
  t.same(Object.keys(all.body as object), ['object', 'data', 'has_more', 'next', 'bodies_in_audit_log']);
  t.match(all.body, { object: 'list', has_more: false, next: null, bodies_in_audit_log: false });

  // Paged: two at a time, on from the last row.
  const p1 = await get(gw, '/admin/requests?day=2026-03-01&limit=2');
  t.same(ids(p1.body), ['req-3', 'req-2']);
  t.match(p1.body, { has_more: true, next: `${DAY1 + 1000}.2` });
  const p2 = await get(gw, `/admin/requests?day=2026-03-01&limit=2&after=${(p1.body as Page).next}`);
  t.same(ids(p2.body), ['req-1']);
  t.match(p2.body, { has_more: false, next: null });

  // Filters.
  t.same(ids((await get(gw, '/admin/requests?day=2026-03-02&status=error')).body), ['req-6', 'req-5']);
  t.same(ids((await get(gw, '/admin/requests?day=2026-03-02&status=ok')).body), ['req-4']);
  t.same(ids((await get(gw, '/admin/requests?day=2026-03-02&status=429')).body), ['req-5']);
  t.same(ids((await get(gw, '/admin/requests?since=2026-03-01&key=alice')).body), ['req-6', 'req-2', 'req-1']);
  t.same(ids((await get(gw, '/admin/requests?since=2026-03-01&key=key_bbbbbbbbbbbb&model=chat')).body), ['req-5', 'req-4', 'req-3']);
  t.same(ids((await get(gw, '/admin/requests?since=2026-03-01&model=(none)')).body), ['req-6']);
  t.same(ids((await get(gw, '/admin/requests?day=2026-02-28')).body), []);

  for (const [query, message] of [
    ['limit=0', /querystring\/limit must match pattern/],
    ['limit=501', /querystring\/limit must match pattern/],
    ['status=teapot', /querystring\/status must match pattern/],
    ['day=2026-3-1', /querystring\/day must match pattern/],
    ['after=12', /querystring\/after must match pattern/],
    ['prompt=1', /querystring must NOT have additional properties/],
  ] as const) {
    const res = await get(gw, `/admin/requests?${query}`);
    t.equal(res.status, 400, query);
    t.match(res.body, { error: { code: 'invalid_body', message } }, query);
  }
  t.same(await get(gw, '/admin/requests?day=2026-02-30'), {
    status: 400,
    body: { error: { message: 'day "2026-02-30" is not a date', type: 'invalid_request_error', param: null, code: 'invalid_period' } },
  });
});

t.test('GET /admin/live: llama-server, the queue, tokens per second over the last minute', async (t) => {
  const gw = await liveGateway(t);
  const server = { name: 'upstream-1', url: gw.fake.url };
  const first = await get(gw, '/admin/live');
  const at = (first.body as { at: string }).at;
  t.ok(Math.abs(Date.parse(at) - Date.now()) < 60_000, 'at: now');
  t.same(first, {
    status: 200,
    body: {
      object: 'live',
      at,
      upstreams: [{ ...server, state: 'ready', model: 'gpt-oss-20b', models: ['gpt-oss-20b'], slots: { total: 2, busy: 0 } }],
      queue: { running: 0, waiting: 0, slots: 2, keys: [] },
      window_seconds: 60,
      tokens_per_second: 0,
      requests_last_minute: 0,
    },
  });
  const requestsBefore = gw.fake.requests.length;
  const chat = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json', ...AUTH_A },
    body: chatBody(),
  });
  t.equal(chat.status, 200);
  const live = await until('the request counted', async () => {
    const res = await get(gw, '/admin/live');
    return (res.body as { requests_last_minute: number }).requests_last_minute === 1 ? res.body : undefined;
  });
  t.match(live, {
    queue: {
      running: 0,
      waiting: 0,
      slots: 2,
      keys: [{ id: 'env-1', name: 'env-1', running: 0, waiting: 0, requests_last_minute: 1, tokens_last_minute: 39 }],
    },
    tokens_per_second: 0.7,
    requests_last_minute: 1,
  });
  t.equal(
    gw.fake.requests.slice(requestsBefore).filter((r) => r.url !== '/health').length,
    1,
    'the live view itself calls no llama-server route (its /slots, polled, would delay its cancellation checks)',
  );
});

t.test('GET /admin/live: a loading llama-server, and one that is down', async (t) => {
  const gw = await liveGateway(t, { loading: true });
  t.match((await get(gw, '/admin/live')).body, {
    upstreams: [{ name: 'upstream-1', url: gw.fake.url, state: 'loading', model: null, models: [], slots: { busy: 0 } }],
  });
  await gw.fake.close();
  await until(
    'the down state',
    async () => {
      const body = (await get(gw, '/admin/live')).body as { upstreams: { state: string }[] };
      return body.upstreams[0]?.state === 'down' ? true : undefined;
    },
    5000,
  );
  t.pass('down once llama-server stops answering');
});

t.test('queueState: keys waiting, running or seen in the last minute, by name', async (t) => {
  const identities = [
    { id: 'k1', name: 'zed' },
    { id: 'k2', name: 'amy' },
    { id: 'k3', name: 'idle' },
  ];
  const waiting: Record<string, number> = { k1: 2 };
  const running: Record<string, number> = { k2: 1 };
  const queue = { running: 1, waiting: 2, maxInflight: 2, waitingFor: (k: string) => waiting[k] ?? 0 };
  t.same(queueState(queue, identities, new Map(), 8), {
    running: 1,
    waiting: 2,
    slots: 2,
    keys: [{ id: 'k1', name: 'zed', running: null, waiting: 2, requests_last_minute: 0, tokens_last_minute: 0 }],
  });
  // A queue that tells running requests per key and has no slot count of its own (the scheduler):
  // the slots are the model servers'.
  t.same(
    queueState(
      { running: 1, waiting: 2, waitingFor: queue.waitingFor, runningFor: (k: string) => running[k] ?? 0 },
      identities,
      new Map([['k3', { name: 'idle', tokens: 5, requests: 1 }]]),
      8,
    ),
    {
      running: 1,
      waiting: 2,
      slots: 8,
      keys: [
        { id: 'k2', name: 'amy', running: 1, waiting: 0, requests_last_minute: 0, tokens_last_minute: 0 },
        { id: 'k3', name: 'idle', running: 0, waiting: 0, requests_last_minute: 1, tokens_last_minute: 5 },
        { id: 'k1', name: 'zed', running: 0, waiting: 2, requests_last_minute: 0, tokens_last_minute: 0 },
      ],
    },
  );
});
