// The error table (src/errors.ts): every entry complete, one meaning per code and status, no
// internal detail on a 5xx; a few of the bodies clients see, through app.inject (no sockets: the
// upstream is a port nothing listens on, and these requests never reach it).
import t from 'tap';
import type { FastifyInstance } from 'fastify';
import { buildApp } from '../src/app.js';
import { configWith } from '../src/config.js';
import * as errors from '../src/errors.js';
import { ERROR_TABLE, GatewayError, fromFastifyError, type ErrorEntry } from '../src/errors.js';
import { KeyRegistry } from '../src/keys/key-registry.js';
import { sseErrorEvent } from '../src/proxy/sse-tap.js';
import { AUTH_A, KEY_A, freePort, tempStore, type Teardown } from './helpers.js';

const TYPES = new Set([
  'invalid_request_error',
  'invalid_api_key',
  'rate_limit_exceeded',
  'insufficient_quota',
  'server_error',
  'upstream_error',
]);
const ADMIN = 'adm-0123456789abcdefghijklmnopqrstuvwxyz';
const JSON_TYPE = 'application/json; charset=utf-8';

type AnyWording = string | ((...args: unknown[]) => string);

/** An entry's wordings, by cause ('' when it has one). */
function wordings(e: ErrorEntry): [string, AnyWording][] {
  const m = e.message as AnyWording | Record<string, AnyWording>;
  return typeof m === 'string' || typeof m === 'function' ? [['', m]] : Object.entries(m);
}

t.test('every entry has a name, status, type, code and message', async (t) => {
  t.ok(ERROR_TABLE.length >= 40, `${ERROR_TABLE.length} entries`);
  for (const e of ERROR_TABLE) {
    t.match(e.name, /^[A-Z][A-Z0-9_]*$/, `${e.name}: a name`);
    t.ok(Number.isInteger(e.status) && e.status >= 400 && e.status <= 599, `${e.name}: an error status (${e.status})`);
    t.ok(TYPES.has(e.type), `${e.name}: one of OpenAI's error types (${e.type})`);
    t.match(e.code, /^[a-z][a-z0-9_]*$|^FST_ERR_[A-Z_]+$/, `${e.name}: a code`);
    for (const [cause, w] of wordings(e)) {
      t.ok(
        typeof w === 'string' ? w.length > 0 : typeof w === 'function',
        `${e.name}${cause === '' ? '' : `.${cause}`}: a message or its wording`,
      );
    }
  }
  t.equal(new Set(ERROR_TABLE.map((e) => e.name)).size, ERROR_TABLE.length, 'names are unique');
});

t.test('a code means one thing per status', async (t) => {
  const seen = new Map<string, string>();
  for (const e of ERROR_TABLE) {
    const key = `${e.status} ${e.code}`;
    t.notOk(seen.has(key), `${key}: only ${e.name}${seen.has(key) ? ` (also ${seen.get(key)!})` : ''}`);
    seen.set(key, e.name);
  }
});

t.test('no 5xx carries internal detail: fixed words, or words and numbers', async (t) => {
  const fives = ERROR_TABLE.filter((e) => e.status >= 500);
  t.ok(fives.length >= 9);
  for (const e of fives) {
    for (const [cause, w] of wordings(e)) {
      // The type allows numbers only (Wording in src/errors.ts); called with numbers, the text
      // must be whole, and must name no file, stack frame or error class.
      const text = typeof w === 'string' ? w : w(1500, 1500);
      t.notMatch(text, /undefined|NaN|\[object|Error\b|\bat \S+:\d+|\/[a-z]+\//, `${e.name}${cause === '' ? '' : `.${cause}`}: ${text}`);
    }
  }
  const secret = 'SQLITE_CANTOPEN: /home/me/gateway.db at Database.open (db.js:12)';
  t.same(
    JSON.parse(fromFastifyError({ statusCode: 500, message: secret }, 1).body),
    JSON.parse(errors.INTERNAL.body),
    'an unexpected 500 says nothing of what happened',
  );
  t.notMatch(errors.KEY_DB_UNUSABLE.body, /\//, 'a key database the admin API cannot use: no path');
});

t.test('every error the modules export is an entry of the table', async (t) => {
  const entries = new Set(ERROR_TABLE.map((e) => `${e.status} ${e.type} ${e.code}`));
  const samples: [string, GatewayError][] = [
    ['KEY_EXPIRED', errors.KEY_EXPIRED(0)],
    ['MODEL_NOT_ALLOWED', errors.MODEL_NOT_ALLOWED('m')],
    ['RATE_LIMITED', errors.RATE_LIMITED('requests per minute', 1, 1)],
    ['RATE_LIMITED', errors.RATE_LIMITED('tokens per minute', 1, 1)],
    ['RATE_LIMITED', errors.RATE_LIMITED('tokens per day', 1, 1)],
    ['RATE_LIMITED', errors.RATE_LIMITED('concurrent requests', 1, 1)],
    ['KEY_QUEUE_FULL', errors.KEY_QUEUE_FULL(1)],
    ['AUTH_BRAKE', errors.AUTH_BRAKE(1)],
    ['ROUTE_NOT_FOUND', errors.ROUTE_NOT_FOUND('GET', '/x')],
    ['MODEL_NOT_FOUND', errors.MODEL_NOT_FOUND('m')],
    ['INVALID_JSON', errors.INVALID_JSON('x')],
    ['BODY_TOO_DEEP', errors.BODY_TOO_DEEP(1)],
    ['INVALID_TYPE', errors.INVALID_TYPE('p', 'a string', 1)],
    ['STRING_TOO_LONG', errors.STRING_TOO_LONG('p', 1, 2)],
    ['BODY_TOO_LARGE', errors.BODY_TOO_LARGE(1)],
    ['KEY_NOT_FOUND', errors.KEY_NOT_FOUND('x')],
    ['KEY_NAME_TAKEN', errors.KEY_NAME_TAKEN('x')],
    ['INVALID_KEY_FIELD', errors.INVALID_KEY_FIELD('x', 'name')],
    ['INVALID_PERIOD', errors.INVALID_PERIOD('x')],
    ['QUEUE_TIMEOUT', errors.QUEUE_TIMEOUT(1)],
    ['UPSTREAM_STATUS_IN_STREAM', errors.UPSTREAM_STATUS_IN_STREAM(500)],
    ...(['call', 'headers', 'idle', 'stream'] as const).map((w): [string, GatewayError] => [
      `UPSTREAM_TIMEOUT ${w}`,
      errors.UPSTREAM_TIMEOUT(1000, w),
    ]),
    ...[
      'FST_ERR_CTP_BODY_TOO_LARGE',
      'FST_ERR_CTP_EMPTY_JSON_BODY',
      'FST_ERR_BAD_URL',
      'FST_ERR_MAX_PARAM_LENGTH',
      'FST_ERR_VALIDATION',
      'FST_ERR_CTP_INVALID_CONTENT_LENGTH',
      'FST_ERR_CTP_INVALID_MEDIA_TYPE',
      'FST_ERR_SOMETHING_NEW',
    ].map((code): [string, GatewayError] => [code, fromFastifyError({ code, statusCode: 400, message: 'x' }, 1)]),
  ];
  for (const [name, value] of Object.entries(errors)) if (value instanceof GatewayError) samples.push([name, value]);
  for (const [name, err] of samples)
    t.ok(entries.has(`${err.statusCode} ${err.type} ${err.code}`), `${name}: ${err.statusCode} ${err.code}`);
  t.same(
    (JSON.parse(errors.INVALID_KEY_FIELD('x', 'limits.rpm').body) as { error: { param: string } }).error.param,
    'limits.rpm',
    'a field at fault is the param',
  );
});

t.test('a stream error event carries the error’s own type and code', async (t) => {
  const event = (err: GatewayError): unknown => JSON.parse(sseErrorEvent('openai', err).replace(/^data: /, ''));
  t.same(event(errors.QUEUE_TIMEOUT(0)), {
    error: {
      message: 'The model server stayed busy for 0 s while this request waited (GATEWAY_QUEUE_TIMEOUT_MS); try again shortly.',
      type: 'server_error',
      param: null,
      code: 'queue_timeout',
    },
  });
  t.same(event(errors.SHUTTING_DOWN), {
    error: { message: 'The gateway is restarting; retry in a few seconds.', type: 'server_error', param: null, code: 'shutting_down' },
  });
  t.same(event(errors.UPSTREAM_STREAM_BROKEN), {
    error: {
      message: 'The model server (llama-server) closed the stream before it was complete.',
      type: 'upstream_error',
      param: null,
      code: 'upstream_stream_broken',
    },
  });
  t.equal(sseErrorEvent('openai', errors.SHUTTING_DOWN), `data: ${errors.SHUTTING_DOWN.body}\n\n`, 'the event is the 503’s body');
  t.equal(
    sseErrorEvent('anthropic', errors.SHUTTING_DOWN),
    'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"The gateway is restarting; retry in a few seconds."}}\n\n',
    'Anthropic’s dialect keeps its own error type',
  );
});

/** The gateway without a socket, with a key database and the admin API; llama-server is not running. */
async function injectable(t: Teardown): Promise<FastifyInstance> {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A], store);
  const config = configWith({ apiKeys: [KEY_A], upstreams: [`http://127.0.0.1:${await freePort()}`], maxInflight: 4, adminKey: ADMIN });
  const app = await buildApp(config, { logger: false, registry });
  t.teardown(() => app.close());
  return app;
}

t.test('bodies through app.inject', async (t) => {
  const app = await injectable(t);
  const admin = { authorization: `Bearer ${ADMIN}` };
  const body = (res: { body: string }): unknown => JSON.parse(res.body);
  const expect = async (
    what: string,
    res: Promise<{ statusCode: number; headers: Record<string, unknown>; body: string }>,
    status: number,
    err: GatewayError | object,
  ): Promise<void> => {
    const r = await res;
    t.equal(r.statusCode, status, `${what}: status`);
    t.equal(r.headers['content-type'], JSON_TYPE, `${what}: JSON`);
    t.same(body(r), err instanceof GatewayError ? JSON.parse(err.body) : err, `${what}: body`);
  };

  await expect(
    'a wrong key',
    app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { authorization: 'Bearer sk-wrong' }, payload: '{}' }),
    401,
    {
      error: { message: 'Incorrect API key provided.', type: 'invalid_api_key', param: null, code: 'invalid_api_key' },
    },
  );
  await expect('an unknown route (query cut)', app.inject({ method: 'GET', url: '/v2/nothing?api_key=sk-secret', headers: AUTH_A }), 404, {
    error: {
      message: 'No route GET /v2/nothing. This gateway serves the OpenAI-compatible /v1 API.',
      type: 'invalid_request_error',
      param: null,
      code: 'route_not_found',
    },
  });
  await expect(
    'a JSON array',
    app.inject({
      method: 'POST',
      url: '/v1/chat/completions',
      headers: { ...AUTH_A, 'content-type': 'application/json' },
      payload: '[1,2]',
    }),
    400,
    errors.BODY_NOT_OBJECT,
  );
  await expect(
    'an admin key on /v1 is not a client key',
    app.inject({ method: 'GET', url: '/v1/models', headers: admin }),
    401,
    errors.INVALID_API_KEY,
  );

  // The admin API: the store's refusals, mapped to entries.
  await expect('admin: no such key', app.inject({ method: 'GET', url: '/admin/keys/nobody', headers: admin }), 404, {
    error: { message: 'no key named or with id "nobody"', type: 'invalid_request_error', param: null, code: 'key_not_found' },
  });
  t.equal((await app.inject({ method: 'POST', url: '/admin/keys', headers: admin, payload: { name: 'ivan' } })).statusCode, 201);
  await expect('admin: a taken name', app.inject({ method: 'POST', url: '/admin/keys', headers: admin, payload: { name: 'ivan' } }), 409, {
    error: { message: 'a key named "ivan" already exists', type: 'invalid_request_error', param: 'name', code: 'key_name_taken' },
  });
  await expect(
    'admin: a bad origin',
    app.inject({ method: 'PATCH', url: '/admin/keys/ivan', headers: admin, payload: { origins: ['https://a.example/'] } }),
    400,
    {
      error: {
        message: 'origin "https://a.example/" is not an exact origin like https://chat.example.com (no path, no trailing slash)',
        type: 'invalid_request_error',
        param: 'origins',
        code: 'invalid_key_field',
      },
    },
  );
  const period = await app.inject({ method: 'GET', url: '/admin/usage?since=yesterday-ish', headers: admin });
  t.equal(period.statusCode, 400);
  t.match(
    body(period),
    { error: { type: 'invalid_request_error', param: null, code: 'invalid_period', message: /yesterday-ish|since/ } },
    'admin: a bad period',
  );
  await expect(
    'admin: no JSON type',
    app.inject({ method: 'POST', url: '/admin/keys', headers: { ...admin, 'content-type': 'text/csv' }, payload: 'a,b' }),
    415,
    {
      error: { message: 'Unsupported Media Type', type: 'invalid_request_error', param: null, code: 'FST_ERR_CTP_INVALID_MEDIA_TYPE' },
    },
  );
  await expect('admin: a client key', app.inject({ method: 'GET', url: '/admin/keys', headers: AUTH_A }), 401, errors.INVALID_API_KEY);
});
