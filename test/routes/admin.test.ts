// The admin API (/admin/keys…): there only when GATEWAY_ADMIN_KEY is set, its own key (never a
// client key, and never accepted as one), the whole key life cycle taking effect on /v1 at once,
// strict JSON-schema bodies, OpenAI-shaped errors, and no secret ever in a body it should not be in
// or in the log.
import t from 'tap';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import {
  AUTH_A,
  KEY_A,
  KEY_B,
  bearer,
  chatBody,
  request,
  sleep,
  startGateway,
  tempStore,
  type Gateway,
  type RawResponse,
  type Teardown,
} from '../helpers.js';

const ADMIN = 'adm-0123456789abcdefghijklmnopqrstuvwxyz';
const JSON_TYPE = 'application/json; charset=utf-8';
const DAY_MS = 86_400_000;
const ORIGINAL_401 = { error: { message: 'Incorrect API key provided.', type: 'invalid_api_key', param: null, code: 'invalid_api_key' } };
const KEY_DISABLED_401 = {
  error: {
    message: 'This API key has been disabled. Ask the gateway owner to enable it.',
    type: 'invalid_api_key',
    param: null,
    code: 'key_disabled',
  },
};
const ORIGIN_403 = {
  error: {
    message: 'This API key may not be used from this website (Origin).',
    type: 'invalid_request_error',
    param: null,
    code: 'origin_not_allowed',
  },
};
const NO_LIMITS = { rpm: null, tpm: null, tpd: null, concurrency: null };

/** A subtest's `t`. */
type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

interface KeyJson {
  id: string;
  name: string;
  note: string;
  prefix: string;
  enabled: boolean;
  created_at: string;
  expires_at: string | null;
  last_used_at: string | null;
  models: string[] | null;
  origins: string[] | null;
  limits: { rpm: number | null; tpm: number | null; tpd: number | null; concurrency: number | null };
}

interface CreatedKey extends KeyJson {
  key: string;
}

interface ErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null };
}

function errorBody(message: string, code: string | null, param: string | null = null, type = 'invalid_request_error'): ErrorBody {
  return { error: { message, type, param, code } };
}

function notFound(idOrName: string): ErrorBody {
  return errorBody(`no key named or with id "${idOrName}"`, 'key_not_found');
}

/** A gateway with LLM_API_KEYS = KEY_A, KEY_B, a key database, and the admin API on. */
async function adminGateway(t: Teardown): Promise<{ gw: Gateway; registry: KeyRegistry }> {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A, KEY_B], store);
  const gw = await startGateway(t, { adminKey: ADMIN }, {}, { registry });
  return { gw, registry };
}

/** One admin call with the admin key; a body is sent as JSON (a string as is, for broken JSON). */
function admin(
  gw: Gateway,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = bearer(ADMIN),
): Promise<RawResponse> {
  const payload = body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body);
  return request(gw.port, {
    method,
    path,
    headers: { ...(payload === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
    body: payload,
  });
}

function json<T>(res: RawResponse): T {
  return JSON.parse(res.text) as T;
}

async function create(t: Tap, gw: Gateway, body: Record<string, unknown>): Promise<CreatedKey> {
  const res = await admin(gw, 'POST', '/admin/keys', body);
  t.equal(res.status, 201, `created ${String(body.name)}`);
  return json<CreatedKey>(res);
}

function chat(gw: Gateway, key: string, headers: Record<string, string> = {}, extra: Record<string, unknown> = {}): Promise<RawResponse> {
  return request(gw.port, {
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json', ...bearer(key), ...headers },
    body: chatBody(extra),
  });
}

/** The record as GET shows it: the create/rotate answer without `key`. */
function withoutKey(k: CreatedKey): KeyJson {
  const { key: _key, ...record } = k;
  return record;
}

const ADMIN_ROUTES: readonly (readonly [string, string, unknown])[] = [
  ['GET', '/admin/keys', undefined],
  ['POST', '/admin/keys', { name: 'mallory' }],
  ['GET', '/admin/keys/key_000000000000', undefined],
  ['PATCH', '/admin/keys/key_000000000000', { enabled: true }],
  ['DELETE', '/admin/keys/key_000000000000', undefined],
  ['POST', '/admin/keys/key_000000000000/rotate', undefined],
];

t.test('the admin key used in these tests is a 40-character secret', async (t) => {
  t.equal(ADMIN.length, 40);
});

t.test('without GATEWAY_ADMIN_KEY there is no /admin: every route is an OpenAI-shaped 404', async (t) => {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A, KEY_B], store);
  const gw = await startGateway(t, {}, {}, { registry });
  for (const [method, path, body] of ADMIN_ROUTES) {
    for (const [what, headers] of [
      ['no key', {}],
      ['a client key', AUTH_A],
      ['what would be the admin key', bearer(ADMIN)],
    ] as const) {
      const res = await admin(gw, method, path, body, headers);
      t.equal(res.status, 404, `${method} ${path}, ${what}`);
      t.equal(res.headers['content-type'], JSON_TYPE);
      t.same(json(res), errorBody(`No route ${method} ${path}. This gateway serves the OpenAI-compatible /v1 API.`, 'route_not_found'));
    }
  }
  t.equal(store.count(), 0, 'nothing was created');
  t.equal(gw.fake.requests.length, 0);
});

t.test('admin auth: only the admin key, compared exactly; 401 like /v1 otherwise', async (t) => {
  const { gw } = await adminGateway(t);
  const changed = (i: number): string => ADMIN.slice(0, i) + (ADMIN[i] === 'x' ? 'y' : 'x') + ADMIN.slice(i + 1);
  const refused: [string, Record<string, string>][] = [
    ['no key', {}],
    ['a wrong key', bearer('adm-wrong-wrong-wrong-wrong-wrong-wrong-wr')],
    ['client key A as Bearer', AUTH_A],
    ['client key A as x-api-key', { 'x-api-key': KEY_A }],
    ['client key B as Bearer', bearer(KEY_B)],
    ['the admin key with its first character changed', bearer(changed(0))],
    ['the admin key with a middle character changed', bearer(changed(20))],
    ['the admin key with its last character changed', bearer(changed(39))],
    ['a prefix of the admin key', bearer(ADMIN.slice(0, -1))],
    ['the admin key with a suffix', bearer(`${ADMIN}x`)],
    ['the admin key in upper case', bearer(ADMIN.toUpperCase())],
    ['the admin key without the Bearer word', { authorization: ADMIN }],
    ['the admin key as Basic auth', { authorization: `Basic ${Buffer.from(`admin:${ADMIN}`).toString('base64')}` }],
    ['a client key as Bearer wins over the admin key as x-api-key', { ...AUTH_A, 'x-api-key': ADMIN }],
  ];
  for (const [what, headers] of refused) {
    for (const [method, path, body] of ADMIN_ROUTES) {
      const res = await admin(gw, method, path, body, headers);
      t.equal(res.status, 401, `${what}: ${method} ${path}`);
      t.equal(res.headers['www-authenticate'], 'Bearer');
      t.equal(res.headers['content-type'], JSON_TYPE);
      t.same(json(res), ORIGINAL_401);
    }
  }

  const accepted: [string, Record<string, string>][] = [
    ['Bearer', bearer(ADMIN)],
    ['bearer in lower case', { authorization: `bearer ${ADMIN}` }],
    ['x-api-key', { 'x-api-key': ADMIN }],
  ];
  for (const [what, headers] of accepted) {
    const res = await admin(gw, 'GET', '/admin/keys', undefined, headers);
    t.equal(res.status, 200, what);
    t.equal(res.headers['content-type'], JSON_TYPE);
    t.same(json(res), { object: 'list', data: [] }, 'no refused POST created a key');
  }

  // The admin key is never a client key.
  for (const headers of [bearer(ADMIN), { 'x-api-key': ADMIN }]) {
    const models = await request(gw.port, { path: '/v1/models', headers });
    t.equal(models.status, 401, 'admin key on GET /v1/models');
    t.equal(models.headers['www-authenticate'], 'Bearer');
    t.same(json(models), ORIGINAL_401);
    const completion = await request(gw.port, {
      path: '/v1/chat/completions',
      headers: { 'content-type': 'application/json', ...headers },
      body: chatBody(),
    });
    t.equal(completion.status, 401, 'admin key on POST /v1/chat/completions');
    t.same(json(completion), ORIGINAL_401);
  }
  t.equal(gw.fake.requests.length, 0, 'llama-server never saw a request');
});

t.test('create: 201 with the full record and the secret once; list and get never show it; the key works at once', async (t) => {
  const { gw } = await adminGateway(t);
  const before = Date.now();
  const res = await admin(gw, 'POST', '/admin/keys', {
    name: 'carol',
    note: "Carol's laptop",
    expires: '30d',
    models: ['gpt-oss-20b', 'qwen3'],
    origins: ['https://chat.example.com'],
    limits: { rpm: 60, tpm: 10_000, tpd: 200_000, concurrency: 2 },
  });
  const after = Date.now();
  t.equal(res.status, 201);
  t.equal(res.headers['content-type'], JSON_TYPE);
  const created = json<CreatedKey>(res);
  t.match(created.id, /^key_[0-9a-f]{12}$/);
  t.match(created.key, /^sk-[A-Za-z0-9_-]{32}$/);
  t.same(created, {
    id: created.id,
    name: 'carol',
    note: "Carol's laptop",
    prefix: created.key.slice(0, 10),
    enabled: true,
    created_at: created.created_at,
    expires_at: created.expires_at,
    last_used_at: null,
    models: ['gpt-oss-20b', 'qwen3'],
    origins: ['https://chat.example.com'],
    limits: { rpm: 60, tpm: 10_000, tpd: 200_000, concurrency: 2 },
    policy: null,
    budgets: null,
    key: created.key,
  });
  t.same(Object.keys(created), [
    'id',
    'name',
    'note',
    'prefix',
    'enabled',
    'created_at',
    'expires_at',
    'last_used_at',
    'models',
    'origins',
    'limits',
    'policy',
    'budgets',
    'key',
  ]);
  const createdAt = Date.parse(created.created_at);
  t.equal(new Date(createdAt).toISOString(), created.created_at, 'created_at is an ISO string');
  t.ok(createdAt >= before && createdAt <= after, 'created_at is now');
  t.type(created.expires_at, 'string');
  const expiresAt = Date.parse(created.expires_at ?? '');
  t.equal(new Date(expiresAt).toISOString(), created.expires_at, 'expires_at is an ISO string');
  t.ok(expiresAt >= before + 30 * DAY_MS && expiresAt <= after + 30 * DAY_MS, 'expires_at is 30 days from now');

  // A key with only a name: every rule off.
  const plain = await create(t, gw, { name: 'dave' });
  t.same(withoutKey(plain), {
    id: plain.id,
    name: 'dave',
    note: '',
    prefix: plain.key.slice(0, 10),
    enabled: true,
    created_at: plain.created_at,
    expires_at: null,
    last_used_at: null,
    models: null,
    origins: null,
    limits: NO_LIMITS,
    policy: null,
    budgets: null,
  });
  t.not(plain.key, created.key);
  t.not(plain.id, created.id);

  const secrets = [created.key, created.key.slice(10), plain.key, plain.key.slice(10)];
  const list = await admin(gw, 'GET', '/admin/keys');
  t.equal(list.status, 200);
  t.equal(list.headers['content-type'], JSON_TYPE);
  t.same(json(list), { object: 'list', data: [withoutKey(created), withoutKey(plain)] });
  for (const secret of secrets) t.notMatch(list.text, secret, 'the list never holds a secret');
  t.notMatch(list.text, '"key"');
  for (const idOrName of [created.id, 'carol']) {
    const one = await admin(gw, 'GET', `/admin/keys/${idOrName}`);
    t.equal(one.status, 200, `GET by ${idOrName}`);
    t.same(json(one), withoutKey(created));
    for (const secret of secrets) t.notMatch(one.text, secret, 'GET never holds a secret');
    t.notMatch(one.text, '"key"');
  }

  // No wait: the admin write reloaded the key index.
  const ok = await chat(gw, created.key);
  t.equal(ok.status, 200, 'the new key works at once');
  t.equal((await chat(gw, plain.key, { 'x-api-key': 'ignored' })).status, 200);
  t.equal((await request(gw.port, { path: '/v1/models', headers: { 'x-api-key': plain.key } })).status, 200, 'as x-api-key too');
  t.equal(gw.fake.requests.length, 3);

  // last_used_at: written by the registry's timer (every 250 ms), shown by GET.
  let used: KeyJson | undefined;
  for (let i = 0; i < 40 && used?.last_used_at == null; i++) {
    await sleep(50);
    used = json<KeyJson>(await admin(gw, 'GET', '/admin/keys/carol'));
  }
  const lastUsed = Date.parse(used?.last_used_at ?? '');
  t.ok(lastUsed >= after && lastUsed <= Date.now(), 'last_used_at is set after the key was used');
  t.same(used, { ...withoutKey(created), last_used_at: used?.last_used_at }, 'and nothing else changed');
  const lines = gw.logs.filter((l) => l.msg === 'request' && l.url === '/v1/chat/completions');
  t.same(
    lines.map((l) => [l.key, l.status]),
    [
      [created.name, 200],
      [plain.name, 200],
    ],
    'the request log names the key by its name',
  );
});

t.test('PATCH: each change takes effect on /v1 at once', async (t) => {
  const { gw } = await adminGateway(t);
  const created = await create(t, gw, { name: 'erin' });
  const key = created.key;
  let expected: KeyJson = withoutKey(created);

  /** PATCHes, checks the answer is the whole new record and GET agrees. */
  const patch = async (idOrName: string, body: Record<string, unknown>, changes: Partial<KeyJson>): Promise<void> => {
    const res = await admin(gw, 'PATCH', `/admin/keys/${idOrName}`, body);
    t.equal(res.status, 200, `PATCH ${JSON.stringify(body)}`);
    t.equal(res.headers['content-type'], JSON_TYPE);
    const answer = json<KeyJson>(res);
    // last_used_at is written by the registry's timer, a moment after a request: whatever it is now.
    expected = { ...expected, ...changes, last_used_at: answer.last_used_at };
    t.same(answer, expected);
    t.notMatch(res.text, key.slice(10), 'no secret in a PATCH answer');
    const got = json<KeyJson>(await admin(gw, 'GET', `/admin/keys/${expected.id}`));
    t.same({ ...got, last_used_at: answer.last_used_at }, expected, 'GET agrees');
  };

  // Rename (by id), then the old name is gone; note (by the new name).
  await patch(created.id, { name: 'erin.2' }, { name: 'erin.2' });
  t.same(json(await admin(gw, 'GET', '/admin/keys/erin')), notFound('erin'), 'the old name is gone');
  await patch('erin.2', { note: 'moved to the build box' }, { note: 'moved to the build box' });
  t.equal((await chat(gw, key)).status, 200, 'a rename keeps the secret');

  // enabled
  await patch(created.id, { enabled: false }, { enabled: false });
  const disabled = await chat(gw, key);
  t.equal(disabled.status, 401, 'disabled: refused at once');
  t.equal(disabled.headers['www-authenticate'], 'Bearer');
  t.same(json(disabled), KEY_DISABLED_401);
  await patch(created.id, { enabled: true }, { enabled: true });
  t.equal((await chat(gw, key)).status, 200, 'enabled again: works at once');

  // expires: a date is valid through that day (UTC); null: never
  await patch(created.id, { expires: '2099-01-01' }, { expires_at: '2099-01-02T00:00:00.000Z' });
  t.equal((await chat(gw, key)).status, 200);
  await patch(created.id, { expires: '2099-06-30T18:00:00Z' }, { expires_at: '2099-06-30T18:00:00.000Z' });
  await patch(created.id, { expires: null }, { expires_at: null });
  t.equal((await chat(gw, key)).status, 200);

  // models
  await patch(created.id, { models: ['x'] }, { models: ['x'] });
  const model = await chat(gw, key);
  t.equal(model.status, 403, 'a model not in the list');
  t.same(json(model), errorBody("This API key may not use the model 'gpt-oss-20b'.", 'model_not_allowed', 'model'));
  t.equal((await chat(gw, key, {}, { model: 'x' })).status, 200, 'the listed model');
  await patch(created.id, { models: null }, { models: null });
  t.equal((await chat(gw, key)).status, 200, 'models: null lifts the rule');

  // origins
  await patch(created.id, { origins: ['https://a.example'] }, { origins: ['https://a.example'] });
  const otherSite = await chat(gw, key, { origin: 'https://b.example' });
  t.equal(otherSite.status, 403, 'another site');
  t.same(json(otherSite), ORIGIN_403);
  t.equal((await chat(gw, key, { origin: 'https://a.example' })).status, 200, 'the listed site');
  t.equal((await chat(gw, key)).status, 200, 'no Origin: not a browser');
  await patch(created.id, { origins: null }, { origins: null });
  t.equal((await chat(gw, key, { origin: 'https://b.example' })).status, 200, 'origins: null lifts the rule');

  // limits: only the named ones change; null lifts one
  await patch(created.id, { limits: { rpm: 5 } }, { limits: { ...NO_LIMITS, rpm: 5 } });
  await patch(created.id, { limits: { tpm: 1000, concurrency: 3 } }, { limits: { rpm: 5, tpm: 1000, tpd: null, concurrency: 3 } });
  await patch(created.id, { limits: { rpm: null, tpd: 50_000 } }, { limits: { rpm: null, tpm: 1000, tpd: 50_000, concurrency: 3 } });

  // Several fields at once.
  await patch(
    'erin.2',
    { name: 'erin', note: '', enabled: false, models: ['gpt-oss-20b'] },
    { name: 'erin', note: '', enabled: false, models: ['gpt-oss-20b'] },
  );
  t.same(json(await chat(gw, key)), KEY_DISABLED_401);

  t.equal(expected.id, created.id, 'the id never changes');
  t.equal(expected.prefix, created.prefix, 'nor the prefix');
  t.equal(expected.created_at, created.created_at, 'nor created_at');
  // Refused requests never reached llama-server: 200s only.
  t.equal(gw.fake.requests.length, 9);
});

t.test('rotate: a new secret for the same record; the old one stops at once', async (t) => {
  const { gw } = await adminGateway(t);
  const created = await create(t, gw, { name: 'frank', note: 'n', models: ['gpt-oss-20b'] });
  t.equal((await chat(gw, created.key)).status, 200);

  const res = await admin(gw, 'POST', `/admin/keys/${created.id}/rotate`);
  t.equal(res.status, 200);
  t.equal(res.headers['content-type'], JSON_TYPE);
  const rotated = json<CreatedKey>(res);
  t.match(rotated.key, /^sk-[A-Za-z0-9_-]{32}$/);
  t.not(rotated.key, created.key);
  t.same(
    rotated,
    { ...withoutKey(created), last_used_at: rotated.last_used_at, prefix: rotated.key.slice(0, 10), key: rotated.key },
    'same record, new secret and prefix',
  );

  const old = await chat(gw, created.key);
  t.equal(old.status, 401, 'the old secret is refused at once');
  t.equal(old.headers['www-authenticate'], 'Bearer');
  t.same(json(old), ORIGINAL_401);
  t.equal((await chat(gw, rotated.key)).status, 200, 'the new secret works at once');

  // By name too; GET shows neither secret.
  const again = json<CreatedKey>(await admin(gw, 'POST', '/admin/keys/frank/rotate'));
  t.not(again.key, rotated.key);
  t.equal((await chat(gw, rotated.key)).status, 401);
  t.equal((await chat(gw, again.key)).status, 200);
  const one = await admin(gw, 'GET', '/admin/keys/frank');
  t.equal(json<KeyJson>(one).prefix, again.key.slice(0, 10));
  for (const secret of [created.key, rotated.key, again.key]) t.notMatch(one.text, secret.slice(10));
});

t.test('DELETE: revoked at once, then 404', async (t) => {
  const { gw } = await adminGateway(t);
  const gone = await create(t, gw, { name: 'grace' });
  const kept = await create(t, gw, { name: 'heidi' });
  t.equal((await chat(gw, gone.key)).status, 200);

  const res = await admin(gw, 'DELETE', `/admin/keys/${gone.id}`);
  t.equal(res.status, 200);
  t.equal(res.headers['content-type'], JSON_TYPE);
  t.same(json(res), { id: gone.id, name: 'grace', deleted: true });
  const refused = await chat(gw, gone.key);
  t.equal(refused.status, 401, 'the revoked key is refused at once');
  t.same(json(refused), ORIGINAL_401);
  t.same(json(await admin(gw, 'GET', `/admin/keys/${gone.id}`)), notFound(gone.id));
  t.equal((await admin(gw, 'GET', '/admin/keys/grace')).status, 404);
  t.same(json(await admin(gw, 'GET', '/admin/keys')), { object: 'list', data: [withoutKey(kept)] });
  const twice = await admin(gw, 'DELETE', `/admin/keys/${gone.id}`);
  t.equal(twice.status, 404, 'deleting twice');
  t.same(json(twice), notFound(gone.id));

  // By name; the other keys are untouched.
  t.same(json(await admin(gw, 'DELETE', '/admin/keys/heidi')), { id: kept.id, name: 'heidi', deleted: true });
  t.equal((await chat(gw, kept.key)).status, 401);
  t.equal((await request(gw.port, { path: '/v1/models', headers: AUTH_A })).status, 200, 'LLM_API_KEYS keys are not in the database');
  t.same(json(await admin(gw, 'GET', '/admin/keys')), { object: 'list', data: [] });
  t.equal((await admin(gw, 'DELETE', '/admin/keys/env-1')).status, 404, 'an LLM_API_KEYS key cannot be deleted here');
});

t.test('errors: OpenAI-shaped, the right status, nothing changed', async (t) => {
  const { gw } = await adminGateway(t);
  const ivan = await create(t, gw, { name: 'ivan', note: 'first' });
  await create(t, gw, { name: 'judy' });

  const check = async (what: string, method: string, path: string, body: unknown, status: number, expected: ErrorBody): Promise<void> => {
    const res = await admin(gw, method, path, body);
    t.equal(res.status, status, what);
    t.equal(res.headers['content-type'], JSON_TYPE, `${what}: JSON`);
    t.same(json(res), expected, `${what}: body`);
  };

  // 409: names are unique
  await check(
    'duplicate name on create',
    'POST',
    '/admin/keys',
    { name: 'ivan' },
    409,
    errorBody('a key named "ivan" already exists', 'key_name_taken', 'name'),
  );
  await check(
    'rename to a taken name',
    'PATCH',
    '/admin/keys/judy',
    { name: 'ivan' },
    409,
    errorBody('a key named "ivan" already exists', 'key_name_taken', 'name'),
  );

  // 404: unknown id or name
  for (const [method, path, body] of [
    ['GET', '/admin/keys/key_000000000000', undefined],
    ['PATCH', '/admin/keys/key_000000000000', { note: 'x' }],
    ['DELETE', '/admin/keys/key_000000000000', undefined],
    ['POST', '/admin/keys/key_000000000000/rotate', undefined],
  ] as const) {
    await check(`${method} ${path}`, method, path, body, 404, notFound('key_000000000000'));
  }
  await check('GET an unknown name', 'GET', '/admin/keys/nobody', undefined, 404, notFound('nobody'));
  await check(
    'an unknown admin route',
    'GET',
    '/admin/users',
    undefined,
    404,
    errorBody('No route GET /admin/users. This gateway serves the OpenAI-compatible /v1 API.', 'route_not_found'),
  );

  // 400: the JSON schema
  const schema = (message: string): ErrorBody => errorBody(message, 'invalid_body');
  const schemaCases: [string, string, string, unknown, string][] = [
    ['missing name', 'POST', '/admin/keys', { note: 'x' }, "body must have required property 'name'"],
    [
      'unknown field',
      'POST',
      '/admin/keys',
      { name: 'kim', key: 'sk-chosen-by-client-0123456789ab' },
      'body must NOT have additional properties',
    ],
    ['unknown field in PATCH', 'PATCH', '/admin/keys/ivan', { nmae: 'kim' }, 'body must NOT have additional properties'],
    ['unknown limit', 'POST', '/admin/keys', { name: 'kim', limits: { rph: 5 } }, 'body/limits must NOT have additional properties'],
    ['name not a string', 'POST', '/admin/keys', { name: 42 }, 'body/name must be string'],
    ['empty name', 'POST', '/admin/keys', { name: '' }, 'body/name must NOT have fewer than 1 characters'],
    ['limits.rpm 0', 'POST', '/admin/keys', { name: 'kim', limits: { rpm: 0 } }, 'body/limits/rpm must be >= 1'],
    ['limits.rpm "5"', 'POST', '/admin/keys', { name: 'kim', limits: { rpm: '5' } }, 'body/limits/rpm must be integer,null'],
    ['limits.rpm 1.5', 'PATCH', '/admin/keys/ivan', { limits: { rpm: 1.5 } }, 'body/limits/rpm must be integer,null'],
    ['limits null', 'PATCH', '/admin/keys/ivan', { limits: null }, 'body/limits must be object'],
    ['models not an array', 'POST', '/admin/keys', { name: 'kim', models: 'gpt-oss-20b' }, 'body/models must be array,null'],
    ['models of numbers', 'PATCH', '/admin/keys/ivan', { models: [1] }, 'body/models/0 must be string'],
    ['enabled "false"', 'PATCH', '/admin/keys/ivan', { enabled: 'false' }, 'body/enabled must be boolean'],
    ['empty PATCH body', 'PATCH', '/admin/keys/ivan', {}, 'body must NOT have fewer than 1 properties'],
    ['a JSON array', 'POST', '/admin/keys', [{ name: 'kim' }], 'body must be object'],
  ];
  for (const [what, method, path, body, message] of schemaCases) await check(what, method, path, body, 400, schema(message));

  // 400: the values
  const expires = (message: string): ErrorBody => errorBody(`expires: ${message}`, 'invalid_key_field', 'expires');
  const notADate = (text: string): string =>
    `"${text}" is not a date: use YYYY-MM-DD (valid through that day, UTC), an ISO time like 2026-12-31T18:00:00Z, or a duration like 30d, 12h, 90m`;
  await check(
    'expires yesterday on create',
    'POST',
    '/admin/keys',
    { name: 'kim', expires: 'yesterday' },
    400,
    expires(notADate('yesterday')),
  );
  await check('expires yesterday on PATCH', 'PATCH', '/admin/keys/ivan', { expires: 'yesterday' }, 400, expires(notADate('yesterday')));
  await check(
    'expires a past date on create',
    'POST',
    '/admin/keys',
    { name: 'kim', expires: '2000-01-01' },
    400,
    expires('"2000-01-01" is in the past'),
  );
  await check(
    'expires a past date on PATCH',
    'PATCH',
    '/admin/keys/ivan',
    { expires: '2000-01-01' },
    400,
    expires('"2000-01-01" is in the past'),
  );
  await check('expires 0d', 'PATCH', '/admin/keys/ivan', { expires: '0d' }, 400, expires('"0d" is in the past'));
  const badOrigin = errorBody(
    'origin "https://a.example/" is not an exact origin like https://chat.example.com (no path, no trailing slash)',
    'invalid_key_field',
    'origins',
  );
  await check(
    'origin with a trailing slash on create',
    'POST',
    '/admin/keys',
    { name: 'kim', origins: ['https://a.example/'] },
    400,
    badOrigin,
  );
  await check('origin with a trailing slash on PATCH', 'PATCH', '/admin/keys/ivan', { origins: ['https://a.example/'] }, 400, badOrigin);
  await check(
    'empty models list',
    'PATCH',
    '/admin/keys/ivan',
    { models: [] },
    400,
    errorBody('models must name at least one entry (or be "all")', 'invalid_key_field', 'models'),
  );
  const badName = errorBody(
    `name "has space" is not valid: use 1-64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit`,
    'invalid_key_field',
    'name',
  );
  await check('name with a space on create', 'POST', '/admin/keys', { name: 'has space' }, 400, badName);
  await check('name with a space on PATCH', 'PATCH', '/admin/keys/ivan', { name: 'has space' }, 400, badName);
  const reserved = errorBody('names starting with "env-" are reserved for LLM_API_KEYS', 'invalid_key_field', 'name');
  await check('env- name on create', 'POST', '/admin/keys', { name: 'env-9' }, 400, reserved);
  await check('env- name on PATCH', 'PATCH', '/admin/keys/ivan', { name: 'env-9' }, 400, reserved);

  // 400: not JSON
  for (const [what, method, path, body] of [
    ['broken JSON on create', 'POST', '/admin/keys', '{"name":"kim",'],
    ['broken JSON on PATCH', 'PATCH', '/admin/keys/ivan', '{"note":'],
  ] as const) {
    const res = await admin(gw, method, path, body);
    t.equal(res.status, 400, what);
    t.match(
      json(res),
      {
        error: {
          type: 'invalid_request_error',
          param: null,
          code: 'invalid_json',
          message: /^We could not parse the JSON body of your request\./,
        },
      },
      `${what}: body`,
    );
  }
  await check('an empty JSON body', 'POST', '/admin/keys', '', 400, errorBody('body must be object', 'invalid_body'));
  const noType = await request(gw.port, { method: 'POST', path: '/admin/keys', headers: bearer(ADMIN), body: '{"name":"kim"}' });
  t.equal(noType.status, 415, 'a body without Content-Type');
  t.same(json(noType), errorBody('Unsupported Media Type', 'FST_ERR_CTP_INVALID_MEDIA_TYPE'));
  const textPlain = await request(gw.port, {
    method: 'POST',
    path: '/admin/keys',
    headers: { ...bearer(ADMIN), 'content-type': 'text/plain' },
    body: '{"name":"kim"}',
  });
  t.equal(textPlain.status, 400, 'JSON sent as text/plain is a string, not an object');
  t.same(json(textPlain), errorBody('body must be object', 'invalid_body'));

  // Every 4xx above is an invalid_request_error, and none of them changed anything.
  const list = json<{ data: KeyJson[] }>(await admin(gw, 'GET', '/admin/keys'));
  t.same(
    list.data.map((k) => [k.name, k.note, k.expires_at, k.models, k.origins, k.limits]),
    [
      ['ivan', 'first', null, null, null, NO_LIMITS],
      ['judy', '', null, null, null, NO_LIMITS],
    ],
    'nothing was created or changed',
  );
  t.equal(list.data[0]?.id, ivan.id);
  t.equal((await chat(gw, ivan.key)).status, 200, 'and the key still works');
});

t.test('the log: admin writes by key name, never a secret nor the admin key', async (t) => {
  const { gw } = await adminGateway(t);
  const created = await create(t, gw, { name: 'kate', origins: ['https://a.example'] });
  await admin(gw, 'PATCH', `/admin/keys/${created.id}`, { note: 'hi', enabled: false });
  const rotated = json<CreatedKey>(await admin(gw, 'POST', '/admin/keys/kate/rotate'));
  await admin(gw, 'PATCH', '/admin/keys/kate', { enabled: true });
  await chat(gw, rotated.key);
  await chat(gw, created.key);
  await admin(gw, 'DELETE', '/admin/keys/kate');
  // Attempts with near-miss admin keys and a key in a refused body.
  await admin(gw, 'GET', '/admin/keys', undefined, bearer(`${ADMIN.slice(0, -1)}Z`));
  await admin(gw, 'POST', '/admin/keys', { name: 'x', key: created.key });
  await request(gw.port, { path: '/v1/models', headers: bearer(ADMIN) });

  const text = gw.logText();
  for (const secret of [
    ADMIN,
    ADMIN.slice(4),
    `${ADMIN.slice(0, -1)}Z`,
    created.key,
    created.key.slice(10),
    rotated.key,
    rotated.key.slice(10),
    KEY_A,
  ]) {
    t.notMatch(text, secret, 'no secret in the log');
  }
  const admins = gw.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('admin:'));
  t.same(
    admins.map((l) => [l.msg, l.keyId, l.keyName, l.fields]),
    [
      ['admin: key created', created.id, 'kate', undefined],
      ['admin: key changed', created.id, 'kate', ['note', 'enabled']],
      ['admin: key rotated', created.id, 'kate', undefined],
      ['admin: key changed', created.id, 'kate', ['enabled']],
      ['admin: key revoked', created.id, 'kate', undefined],
    ],
  );
  const requests = gw.logs.filter((l) => l.msg === 'request' && typeof l.url === 'string' && l.url.startsWith('/admin'));
  t.same(
    requests.map((l) => [l.method, l.url, l.status, l.key]),
    [
      ['POST', '/admin/keys', 201, undefined],
      ['PATCH', `/admin/keys/${created.id}`, 200, undefined],
      ['POST', '/admin/keys/kate/rotate', 200, undefined],
      ['PATCH', '/admin/keys/kate', 200, undefined],
      ['DELETE', '/admin/keys/kate', 200, undefined],
      ['GET', '/admin/keys', 401, undefined],
      ['POST', '/admin/keys', 400, undefined],
    ],
    'one request line per admin call, without a client key id',
  );
});

// Regressions: bugs found while writing these tests, each named after what broke.

t.test('an expiry beyond what a Date can hold is a 400, not a stored value that makes every list a 500', async (t) => {
  const { gw } = await adminGateway(t);
  await create(t, gw, { name: 'liam' });
  for (const [method, path, body] of [
    ['PATCH', '/admin/keys/liam', { expires: '99999999d' }],
    ['POST', '/admin/keys', { name: 'mia', expires: '99999999d' }],
  ] as const) {
    const res = await admin(gw, method, path, body);
    t.equal(res.status, 400, `${method} ${path} expires 99999999d`);
    t.match(json(res), { error: { type: 'invalid_request_error', param: 'expires', code: 'invalid_key_field' } });
  }
  const list = await admin(gw, 'GET', '/admin/keys');
  t.equal(list.status, 200, 'the list still works');
  t.same(
    (json<{ data?: KeyJson[] }>(list).data ?? []).map((k) => [k.name, k.expires_at]),
    [['liam', null]],
    'nothing was stored (no key "mia" whose secret the 500 lost)',
  );
});

t.test('a date that does not exist (2099-02-30) is refused, not rolled over into March', async (t) => {
  const { gw } = await adminGateway(t);
  await create(t, gw, { name: 'noah' });
  const res = await admin(gw, 'PATCH', '/admin/keys/noah', { expires: '2099-02-30' });
  t.equal(res.status, 400);
  t.match(json(res), { error: { type: 'invalid_request_error', param: 'expires', code: 'invalid_key_field' } });
  t.equal(json<KeyJson>(await admin(gw, 'GET', '/admin/keys/noah')).expires_at, null, 'expiry unchanged');
});

t.test("a name equal to another key's id is refused: /admin/keys/{id or name} could not tell them apart", async (t) => {
  const { gw } = await adminGateway(t);
  const olivia = await create(t, gw, { name: 'olivia' });
  const res = await admin(gw, 'POST', '/admin/keys', { name: olivia.id });
  t.equal(res.status, 400, 'create named like an existing id');
  t.match(json(res), { error: { type: 'invalid_request_error', code: 'invalid_key_field' } });
  if (res.status === 201) {
    // What goes wrong today: the operator deletes the new key by its name and revokes olivia.
    const impostor = json<CreatedKey>(res);
    const deleted = json<{ id: string }>(await admin(gw, 'DELETE', `/admin/keys/${impostor.name}`));
    t.equal(deleted.id, impostor.id, 'DELETE by name revoked the key with that name');
    t.equal((await chat(gw, olivia.key)).status, 200, 'olivia still works');
  }
  await create(t, gw, { name: 'peter' });
  const rename = await admin(gw, 'PATCH', '/admin/keys/peter', { name: olivia.id });
  t.equal(rename.status, 400, 'rename to an existing id');
});

t.test('rotate and DELETE take no body: a Content-Type: application/json header with an empty body is fine', async (t) => {
  const { gw } = await adminGateway(t);
  await create(t, gw, { name: 'quinn' });
  const headers = { ...bearer(ADMIN), 'content-type': 'application/json' };
  const rotated = await request(gw.port, { method: 'POST', path: '/admin/keys/quinn/rotate', headers });
  t.equal(rotated.status, 200, 'rotate');
  const deleted = await request(gw.port, { method: 'DELETE', path: '/admin/keys/quinn', headers });
  t.equal(deleted.status, 200, 'delete');
});

t.test('an over-long or malformed id is an OpenAI-shaped error, the same with or without a key', async (t) => {
  const { gw } = await adminGateway(t);
  for (const path of [`/admin/keys/${'k'.repeat(101)}`, '/admin/keys/%zz']) {
    const authed = await admin(gw, 'GET', path);
    t.ok(authed.status === 400 || authed.status === 404 || authed.status === 414, `${path.slice(0, 30)}: a 4xx`);
    t.match(json(authed), { error: { type: 'invalid_request_error', message: String } }, 'OpenAI-shaped');
    // The router refuses such a path before any hook runs, so before the admin-key check; the
    // answer reveals nothing about keys, and it is the same with or without a key.
    const anonymous = await admin(gw, 'GET', path, undefined, {});
    t.equal(anonymous.status, authed.status, 'no admin key: the same refusal');
    t.same(json(anonymous), json(authed));
  }
});
