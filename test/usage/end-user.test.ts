// End users inside a key: GATEWAY_END_USER's places (first found wins), a value cleaned and capped
// but never refused, each usage row and audit line naming its end user, and the reports that split
// a key by them (`llm-gateway usage --by user`, --user, GET /admin/usage?by=user, /admin/requests).
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ConfigError, loadConfig } from '../../src/config.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { KeyStore } from '../../src/keys/key-store.js';
import { MAX_END_USER_LENGTH, cleanEndUser, endUserReader, parseEndUserSources } from '../../src/usage/end-user.js';
import { AUTH_A, KEY_A, KEY_B, chatBody, request, startGateway, until, usageRecord, type Gateway } from '../helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const ADMIN = 'admin-secret-0123456789abcdef0123456789';
const AUTH_ADMIN = { authorization: `Bearer ${ADMIN}` };

interface Setup {
  gw: Gateway;
  dir: string;
  dbPath: string;
  rows(): { end_user: string | null; route: string; status: number }[];
  audit(): Record<string, unknown>[];
}

async function setup(t: Parameters<typeof startGateway>[0], overrides: Parameters<typeof startGateway>[1] = {}): Promise<Setup> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-end-user-'));
  const dbPath = join(dir, 'gateway.db');
  const store = KeyStore.open(dbPath);
  const registry = new KeyRegistry([KEY_A, KEY_B], store);
  const gw = await startGateway(
    t,
    { auditLog: join(dir, 'audit.jsonl'), adminKey: ADMIN, ...overrides },
    {},
    { registry, usageFlushMs: 20 },
  );
  t.teardown(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return {
    gw,
    dir,
    dbPath,
    rows: () => store.db.prepare('SELECT end_user, route, status FROM usage ORDER BY id').all() as ReturnType<Setup['rows']>,
    audit: () => {
      const file = readdirSync(dir).find((f) => f.startsWith('audit-'));
      if (file === undefined) return [];
      return readFileSync(join(dir, file), 'utf8')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as Record<string, unknown>);
    },
  };
}

function runCli(args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd,
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('GATEWAY_END_USER: header and body places, in order; off; a bad place stops the start', async (t) => {
  const env = { LLM_API_KEYS: KEY_A };
  t.same(loadConfig(env).endUser, [{ header: 'x-openwebui-user-id' }, { body: ['user'] }], 'default: Open WebUI header, then OpenAI user');
  t.same(loadConfig({ ...env, GATEWAY_END_USER: 'off' }).endUser, []);
  t.same(loadConfig({ ...env, GATEWAY_END_USER: ' OFF ' }).endUser, []);
  t.same(loadConfig({ ...env, GATEWAY_END_USER: 'header:X-OpenWebUI-User-Email, body:metadata.user_id,' }).endUser, [
    { header: 'x-openwebui-user-email' },
    { body: ['metadata', 'user_id'] },
  ]);
  const bad: [string, RegExp][] = [
    ['user', /must be off, or a comma list of header:NAME and body:FIELD .*got "user"/],
    ['query:user', /got "query:user"/],
    ['header:x user', /names "header:x user": a header name is letters, digits and -/],
    ['header:', /names "header:"/],
    ['body:a..b', /names "body:a..b": a body field is a name, or up to 4 names joined by dots/],
    ['body:a.b.c.d.e', /up to 4 names/],
    [' , ', /must be off, or a comma list/],
  ];
  for (const [value, message] of bad) {
    t.throws(() => loadConfig({ ...env, GATEWAY_END_USER: value }), ConfigError, value);
    t.throws(() => loadConfig({ ...env, GATEWAY_END_USER: value }), { message: new RegExp(`^GATEWAY_END_USER .*${message.source}`) });
  }
  t.same(parseEndUserSources('body:user'), [{ body: ['user'] }]);
});

t.test('a value is cleaned and capped, never refused', async (t) => {
  t.equal(cleanEndUser('user-42@example.com', true), 'user-42@example.com', 'plain ASCII kept as it is');
  t.equal(cleanEndUser('  bob  ', false), 'bob', 'trimmed');
  t.equal(cleanEndUser('a\tb\r\nc\u0000d\u007fe\u0085f', false), 'abcdef', 'control characters (C0, DEL, C1) removed');
  t.equal(cleanEndUser('adm\u202ein\u200b', false), 'admin', 'bidi overrides and zero-width characters removed');
  t.equal(cleanEndUser('\u0000\t ', false), null, 'nothing left: absent');
  t.equal(cleanEndUser('', false), null);
  t.equal(cleanEndUser('Zoë 张', false), 'Zoë 张', 'letters of any script kept');
  t.equal(cleanEndUser(Buffer.from('zoë@example.com', 'utf8').toString('latin1'), true), 'zoë@example.com', 'a UTF-8 header re-read');
  t.equal(cleanEndUser('caf\u00e9', true), 'caf\u00e9', 'latin1 that is not UTF-8 stays as Node read it');
  t.equal(cleanEndUser('x'.repeat(500), false), 'x'.repeat(MAX_END_USER_LENGTH), `capped at ${MAX_END_USER_LENGTH}`);
  t.equal(cleanEndUser('x'.repeat(MAX_END_USER_LENGTH), false), 'x'.repeat(MAX_END_USER_LENGTH), 'exactly the cap: kept');
  const pair = `${'x'.repeat(MAX_END_USER_LENGTH - 1)}😀tail`;
  t.equal(cleanEndUser(pair, false), 'x'.repeat(MAX_END_USER_LENGTH - 1), 'a surrogate pair at the cap is not cut in two');
});

t.test('the reader: first place found wins; strings and numbers only', async (t) => {
  const read = endUserReader(
    parseEndUserSources('header:x-openwebui-user-id,header:x-openwebui-user-email,body:user,body:metadata.user_id'),
  );
  t.equal(read({ 'x-openwebui-user-id': 'id-1', 'x-openwebui-user-email': 'e@x' }, { user: 'u' }), 'id-1');
  t.equal(read({ 'x-openwebui-user-email': 'e@x' }, { user: 'u' }), 'e@x');
  t.equal(read({ 'x-openwebui-user-id': ' \t ' }, { user: 'u' }), 'u', 'an empty value counts as absent');
  t.equal(read({}, { user: 42 }), '42', 'a numeric id');
  t.equal(read({}, { user: { id: 'x' }, metadata: { user_id: 'm-1' } }), 'm-1', 'an object is not an end user');
  t.equal(read({}, { user: Number.NaN, metadata: 'not an object' }), null);
  t.equal(read({}, { user: ['a'] }), null);
  t.equal(read({}, { __proto__: 'p', constructor: 'c' }), null, 'inherited properties are not read as fields');
  t.equal(read({ 'x-openwebui-user-id': ['first', 'second'] }, undefined), 'first');
  t.equal(read({}, undefined), null, 'no body (GET)');
  t.equal(endUserReader([])({ 'x-openwebui-user-id': 'id' }, { user: 'u' }), null, 'off');
});

t.test('each usage row and audit line names its end user; the body goes upstream untouched', async (t) => {
  const s = await setup(t);
  const send = (headers: Record<string, string>, body?: string, path = '/v1/chat/completions'): Promise<number> =>
    request(s.gw.port, { path, headers: { ...AUTH_A, ...headers }, ...(body === undefined ? {} : { body }) }).then((r) => r.status);
  const withUser = chatBody({ user: 'body-user' });
  t.equal(await send({ 'x-openwebui-user-id': 'u-1' }, withUser), 200, 'header and body: the header (first place) wins');
  t.equal(await send({}, withUser), 200, 'the body field');
  t.equal(await send({}, chatBody()), 200, 'neither');
  t.equal(await send({ 'x-openwebui-user-id': 'a\tb' }, chatBody({ user: '   ' })), 200, 'a tab removed');
  t.equal(await send({}, chatBody({ user: 'y'.repeat(300) })), 200, 'capped, not refused');
  t.equal(await send({}, chatBody({ user: ' ', stream: true })), 200, 'blank: none');
  t.equal(await send({ 'x-openwebui-user-id': 'lister' }, undefined, '/v1/models'), 200, 'a GET has a header too');
  t.equal(await send({ 'x-openwebui-user-id': 'u-1' }, chatBody({ model: 42 })), 400, 'a body refused before it is read: no end user');
  await until('8 rows', () => s.rows().length === 8 || undefined);
  t.same(
    s.rows().map((r) => r.end_user),
    ['u-1', 'body-user', null, 'ab', 'y'.repeat(128), null, 'lister', null],
  );
  const forwarded = s.gw.fake.requests.filter((r) => r.url === '/v1/chat/completions');
  t.equal(forwarded[0]!.body.toString(), withUser, 'forwarded byte for byte (the user field stays)');
  await s.gw.app.close();
  t.same(
    s.audit().map((l) => l.endUser),
    ['u-1', 'body-user', null, 'ab', 'y'.repeat(128), null, 'lister', null],
    'the audit log carries it',
  );
});

t.test('GATEWAY_END_USER=off: none recorded; another header and a nested body field when configured', async (t) => {
  const off = await setup(t, { endUser: [] });
  await request(off.gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, 'x-openwebui-user-id': 'u' },
    body: chatBody({ user: 'b' }),
  });
  await until('1 row', () => off.rows().length === 1 || undefined);
  t.equal(off.rows()[0]!.end_user, null);

  const custom = await setup(t, { endUser: parseEndUserSources('header:x-openwebui-user-email,body:metadata.user_id') });
  const send = (headers: Record<string, string>, body: string, path = '/v1/chat/completions'): Promise<unknown> =>
    request(custom.gw.port, { path, headers: { ...AUTH_A, ...headers }, body });
  await send({ 'x-openwebui-user-id': 'ignored', 'x-openwebui-user-email': 'ann@example.com' }, chatBody({ user: 'ignored' }));
  await send(
    {},
    JSON.stringify({
      model: 'gpt-oss-20b',
      max_tokens: 8,
      messages: [{ role: 'user', content: 'Hi' }],
      metadata: { user_id: 'anthropic-1' },
    }),
    '/v1/messages',
  );
  await send({}, chatBody({ user: 'not-configured' }));
  await until('3 rows', () => custom.rows().length === 3 || undefined);
  t.same(
    custom.rows().map((r) => [r.route, r.end_user]),
    [
      ['/v1/chat/completions', 'ann@example.com'],
      ['/v1/messages', 'anthropic-1'],
      ['/v1/chat/completions', null],
    ],
  );
});

/** Seven requests: two end users under alice, the same id under bob (another person), and none. */
function seed(gw: Gateway, since: number): void {
  const rec = (i: number, keyName: string, endUser: string | null, tokens: number): ReturnType<typeof usageRecord> => ({
    ...usageRecord(i),
    ts: since + i * 1000,
    keyId: `key_${keyName}`,
    keyName,
    endUser,
    promptTokens: tokens,
    completionTokens: tokens,
  });
  gw.app.usageStore!.insert([
    rec(1, 'alice', 'ann', 10),
    rec(2, 'alice', 'ann', 20),
    rec(3, 'alice', 'ben', 5),
    rec(4, 'alice', null, 1),
    rec(5, 'bob', 'ann', 100),
    rec(6, 'bob', null, 2),
    { ...rec(7, 'bob', 'ann', 0), status: 429, outcome: 'rejected_limit', promptTokens: null, completionTokens: null },
  ]);
}

t.test('reports by end user: admin API and `llm-gateway usage --by user`', async (t) => {
  const s = await setup(t);
  const since = Date.now() - 3_600_000;
  seed(s.gw, since);
  const get = async (path: string): Promise<Record<string, unknown>> => {
    const r = await request(s.gw.port, { path, headers: AUTH_ADMIN });
    t.equal(r.status, 200, path);
    return JSON.parse(r.text) as Record<string, unknown>;
  };
  const row = (key: string, user: string, requests: number, tokens: number, errors = 0): Record<string, unknown> => ({
    key,
    user,
    requests,
    prompt_tokens: tokens,
    cached_tokens: 0,
    completion_tokens: tokens,
    total_tokens: 2 * tokens,
    estimated: 0,
    errors,
    cost: null,
  });
  const report = await get('/admin/usage?by=user&since=1d');
  t.same(report, {
    object: 'usage_report',
    by: 'user',
    currency: 'USD',
    since: report.since,
    until: null,
    data: [
      row('alice', '(none)', 1, 1),
      row('alice', 'ann', 2, 30),
      row('alice', 'ben', 1, 5),
      row('bob', '(none)', 1, 2),
      row('bob', 'ann', 2, 100, 1),
    ],
    total: { requests: 7, prompt_tokens: 138, cached_tokens: 0, completion_tokens: 138, total_tokens: 276, cost: null },
  });
  t.same((await get('/admin/usage?by=user&key=alice')).data, [
    row('alice', '(none)', 1, 1),
    row('alice', 'ann', 2, 30),
    row('alice', 'ben', 1, 5),
  ]);
  t.match(await get('/admin/usage?by=key&user=ann'), {
    data: [
      { key: 'alice', requests: 2, total_tokens: 60 },
      { key: 'bob', requests: 2, total_tokens: 200 },
    ],
  });
  t.match(await get('/admin/usage?by=key&user=(none)'), {
    data: [
      { key: 'alice', requests: 1 },
      { key: 'bob', requests: 1 },
    ],
  });
  const bad = await request(s.gw.port, { path: '/admin/usage?by=person', headers: AUTH_ADMIN });
  t.equal(bad.status, 400);
  const requests = (await get('/admin/requests?user=ben')) as { data: Record<string, unknown>[] };
  t.same(
    requests.data.map((r) => [r.request_id, r.key_name, r.end_user, r.cost]),
    [['req-3', 'alice', 'ben', null]],
  );

  await s.gw.app.close();
  const table = await runCli(['usage', '--db', s.dbPath, '--by', 'user'], s.dir);
  t.equal(table.code, 0, table.stderr);
  t.equal(
    table.stdout,
    [
      'KEY    USER    REQUESTS  PROMPT  CACHED  COMPLETION  TOTAL  EST.  ERRORS',
      'alice  (none)         1       1       0           1      2     0       0',
      'alice  ann            2      30       0          30     60     0       0',
      'alice  ben            1       5       0           5     10     0       0',
      'bob    (none)         1       2       0           2      4     0       0',
      'bob    ann            2     100       0         100    200     0       1',
      '-----  ------  --------  ------  ------  ----------  -----  ----  ------',
      '       TOTAL          7     138       0         138    276     0       1',
      '',
    ].join('\n'),
  );
  const csv = await runCli(['usage', '--db', s.dbPath, '--by', 'user', '--key', 'bob', '--csv'], s.dir);
  t.equal(
    csv.stdout,
    'key,user,requests,prompt_tokens,cached_tokens,completion_tokens,total_tokens,estimated,errors\nbob,(none),1,2,0,2,4,0,0\nbob,ann,2,100,0,100,200,0,1\n',
  );
  const json = await runCli(['usage', '--db', s.dbPath, '--by', 'user', '--user', 'ben', '--json'], s.dir);
  t.same(JSON.parse(json.stdout), {
    by: 'user',
    since: null,
    until: null,
    data: [
      {
        key: 'alice',
        user: 'ben',
        requests: 1,
        prompt_tokens: 5,
        cached_tokens: 0,
        completion_tokens: 5,
        total_tokens: 10,
        estimated: 0,
        errors: 0,
      },
    ],
    total: { requests: 1, prompt_tokens: 5, cached_tokens: 0, completion_tokens: 5, total_tokens: 10, estimated: 0, errors: 0 },
  });
  const byDay = await runCli(['usage', '--db', s.dbPath, '--user', 'ann', '--key', 'alice', '--csv'], s.dir);
  t.match(byDay.stdout, /^day,requests,.*\n\d{4}-\d{2}-\d{2},2,30,0,30,60,0,0\n$/, '--user narrows any grouping');
  const help = await runCli(['usage', '--help'], s.dir);
  t.match(help.stdout, /--by day\|key\|model\|user/);
});
