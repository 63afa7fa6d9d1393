// The `llm-gateway keys` CLI as a user runs it: `node dist/cli/main.js …` in its own process, in a
// fresh working directory, against a key database chosen by GATEWAY_DB, --db, .env or the default.
// What it prints (the key exactly once, never again), what it stores (a digest, never the key), its
// exit codes and error lines, and that a running gateway (in-process, and the real dist/server.js
// process) applies every change within a bounded wait, without a restart.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import t from 'tap';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { KeyStore } from '../../src/keys/key-store.js';
import { recordings, startFakeLlama } from '../fixtures/fake-llama.js';
import {
  KEY_A,
  chatBody,
  freePort,
  recordedBody,
  request,
  sleep,
  startGateway,
  tempDir,
  within,
  type RawResponse,
  type Teardown,
} from '../helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const SERVER = join(ROOT, 'dist', 'server.js');

const KEY_PATTERN = /^sk-[A-Za-z0-9_-]{32}$/;
const ANY_KEY = /sk-[A-Za-z0-9_-]{32}/g;
const DAY_MS = 86_400_000;
const KEYS_HINT = 'Try: llm-gateway keys --help';

const ORIGINAL_401 = { error: { message: 'Incorrect API key provided.', type: 'invalid_api_key', param: null, code: 'invalid_api_key' } };
const DISABLED_401 = {
  error: {
    message: 'This API key has been disabled. Ask the gateway owner to enable it.',
    type: 'invalid_api_key',
    param: null,
    code: 'key_disabled',
  },
};

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

interface KeyJsonWithSecret extends KeyJson {
  key: string;
}

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

if (!existsSync(CLI) || !existsSync(SERVER)) {
  throw new Error(`${CLI} or ${SERVER} is missing: build first (npx tsc -p tsconfig.json; npm test does it)`);
}

/** Starts the CLI as a user would; only PATH and `env` are in its environment. */
function spawnCli(cwd: string, args: readonly string[], env: Record<string, string> = {}): { pid: number; result: Promise<CliResult> } {
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const result = new Promise<CliResult>((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
  return { pid: child.pid ?? -1, result };
}

function runCli(cwd: string, args: readonly string[], env: Record<string, string> = {}): Promise<CliResult> {
  return spawnCli(cwd, args, env).result;
}

interface Workspace {
  dir: string;
  db: string;
  /** `llm-gateway …` with GATEWAY_DB=db, cwd=dir. */
  cli(...args: string[]): Promise<CliResult>;
  /** `keys create --name NAME --json …`, asserted to succeed; the record and its key. */
  create(name: string, ...extra: string[]): Promise<KeyJsonWithSecret>;
  /** `keys show NAME --json`, asserted to succeed. */
  show(name: string): Promise<KeyJson>;
}

function workspace(t: Teardown): Workspace {
  const dir = tempDir(t);
  const db = join(dir, 'keys', 'gateway.db');
  const cli = (...args: string[]): Promise<CliResult> => runCli(dir, args, { GATEWAY_DB: db });
  const ok = async (args: string[]): Promise<string> => {
    const r = await cli(...args);
    if (r.code !== 0 || r.stderr !== '') throw new Error(`llm-gateway ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
    return r.stdout;
  };
  return {
    dir,
    db,
    cli,
    create: async (name, ...extra) => JSON.parse(await ok(['keys', 'create', '--name', name, '--json', ...extra])) as KeyJsonWithSecret,
    show: async (name) => JSON.parse(await ok(['keys', 'show', name, '--json'])) as KeyJson,
  };
}

/** Rows of the keys table, read straight from the file (read-only, not through the CLI). */
function dbRows(path: string): { name: string; digest: Buffer; prefix: string; enabled: number }[] {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    return db.prepare('SELECT name, digest, prefix, enabled FROM keys ORDER BY created_at, name').all() as {
      name: string;
      digest: Buffer;
      prefix: string;
      enabled: number;
    }[];
  } finally {
    db.close();
  }
}

/** Every file SQLite keeps for the database (the file, -wal, -shm, -journal), as bytes. */
function dbFiles(path: string): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  for (const f of readdirSync(dirname(path))) if (f.startsWith(basename(path))) files.set(f, readFileSync(join(dirname(path), f)));
  return files;
}

function sha256(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

/** How the CLI writes a time in its tables: 2026-12-31 18:00:00Z. */
function shown(iso: string | null, none: string): string {
  return iso === null ? none : iso.replace('T', ' ').replace(/\.\d{3}Z$/, 'Z');
}

function describeLines(k: KeyJson): string {
  const limits = (['rpm', 'tpm', 'tpd', 'concurrency'] as const).map((n) => `${n}=${k.limits[n] ?? '-'}`).join(' ');
  return [
    `name:       ${k.name}`,
    `id:         ${k.id}`,
    `prefix:     ${k.prefix}…`,
    `enabled:    ${k.enabled ? 'yes' : 'no'}`,
    `created:    ${shown(k.created_at, '-')}`,
    `expires:    ${shown(k.expires_at, 'never')}`,
    `last used:  ${shown(k.last_used_at, 'never')}`,
    `models:     ${k.models === null ? 'all' : k.models.join(', ')}`,
    `origins:    ${k.origins === null ? 'all' : k.origins.join(', ')}`,
    `limits:     ${limits}`,
    // These tests' keys have no policy of their own (test/policy/key-policy.test.ts covers the line).
    `policy:     defaults`,
    `note:       ${k.note}`,
  ].join('\n');
}

/** A text table read by its header: one object per row, cells by column name. */
function readTable(text: string): { headers: string[]; rows: Record<string, string>[] } {
  const lines = text.replace(/\n$/, '').split('\n');
  const head = lines[0] ?? '';
  const starts: number[] = [];
  const headers: string[] = [];
  for (const m of head.matchAll(/\S+(?: \S+)*/g)) {
    starts.push(m.index);
    headers.push(m[0]);
  }
  const rows = lines.slice(1).map((line) => Object.fromEntries(headers.map((h, i) => [h, line.slice(starts[i], starts[i + 1]).trim()])));
  return { headers, rows };
}

function chat(port: number, key: string): Promise<RawResponse> {
  return request(port, {
    path: '/v1/chat/completions',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: chatBody(),
  });
}

/** Polls every 50 ms until `done`; fails after `ms` with the last answer. */
async function until<T>(what: string, attempt: () => Promise<T>, done: (r: T) => boolean, ms = 2000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const r = await attempt();
    if (done(r)) return r;
    if (Date.now() >= deadline) {
      const last =
        typeof r === 'object' && r !== null && 'status' in r && 'text' in r ? `${String(r.status)} ${String(r.text)}` : String(r);
      throw new Error(`${what}: not within ${ms} ms (last answer ${last})`);
    }
    await sleep(50);
  }
}

const CHAT_OK = recordedBody(recordings['chat-nonstream']!.chunks);

// ---------------------------------------------------------------------------------------------
// create, and what is stored

t.test('keys create with every option: exit 0, the key printed once (192 bits), every field stored', async (t) => {
  const ws = workspace(t);
  const before = Date.now();
  const r = await ws.cli(
    ...['keys', 'create', '--name', 'alice', '--note', "Alice's laptop", '--expires', '30d', '--models', 'gpt-oss-20b'],
    ...['--origins', 'https://chat.example.com', '--rpm', '60', '--tpm', '1000', '--tpd', '100000', '--concurrency', '2'],
  );
  const after = Date.now();
  t.equal(r.code, 0, 'exit 0');
  t.equal(r.stderr, '', 'nothing on stderr');
  const m =
    /^✅ Created key "alice" \((key_[0-9a-f]{12})\)\. This is the only time it is shown:\n\n {4}(\S+)\n\nThe running gateway accepts it within a second\.\n$/.exec(
      r.stdout,
    );
  t.ok(m, `the whole output: ${r.stdout}`);
  const id = m?.[1] ?? '';
  const key = m?.[2] ?? '';
  t.match(key, KEY_PATTERN, 'sk- and 32 base64url characters');
  t.equal(Buffer.from(key.slice(3), 'base64url').length, 24, '192 random bits');
  t.equal(r.stdout.split(key).length - 1, 1, 'the key is printed exactly once');
  t.equal(r.stdout.match(ANY_KEY)?.length, 1, 'and no other key-like string');

  const shownJson = await ws.show('alice');
  const created = Date.parse(shownJson.created_at);
  const expires = Date.parse(shownJson.expires_at ?? '');
  t.ok(created >= before - 1000 && created <= after + 1000, 'created now');
  t.ok(expires >= before + 30 * DAY_MS && expires <= after + 30 * DAY_MS, 'expires 30 days from now');
  t.same(shownJson, {
    id,
    name: 'alice',
    note: "Alice's laptop",
    prefix: key.slice(0, 10),
    enabled: true,
    created_at: new Date(created).toISOString(),
    expires_at: new Date(expires).toISOString(),
    last_used_at: null,
    models: ['gpt-oss-20b'],
    origins: ['https://chat.example.com'],
    limits: { rpm: 60, tpm: 1000, tpd: 100000, concurrency: 2 },
    policy: null,
    budgets: null,
  });

  // The file holds a digest and a display prefix, never the key.
  const files = dbFiles(ws.db);
  t.ok(files.has('gateway.db'), 'the database file exists');
  for (const [name, bytes] of files) {
    t.equal(bytes.indexOf(key), -1, `${name} does not contain the key`);
    t.equal(bytes.indexOf(key.slice(3)), -1, `${name} does not contain the key's random part`);
  }
  const rows = dbRows(ws.db);
  t.equal(rows.length, 1);
  t.same(rows[0]!.digest, sha256(key), 'the stored digest is sha256(key)');
  t.not(rows[0]!.digest.toString('utf8'), key, 'the digest is not the key');
  t.equal(rows[0]!.digest.length, 32);
  t.equal(rows[0]!.prefix, key.slice(0, 10), 'the display prefix: sk- and 7 characters');
});

t.test('keys create --json: the record plus "key", the key once', async (t) => {
  const ws = workspace(t);
  const r = await ws.cli('keys', 'create', '--name', 'bob', '--json');
  t.equal(r.code, 0);
  t.equal(r.stderr, '');
  const out = JSON.parse(r.stdout) as KeyJsonWithSecret;
  t.match(out.key, KEY_PATTERN);
  t.match(out.id, /^key_[0-9a-f]{12}$/);
  t.match(out.created_at, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
  t.same(out, {
    id: out.id,
    name: 'bob',
    note: '',
    prefix: out.key.slice(0, 10),
    enabled: true,
    created_at: out.created_at,
    expires_at: null,
    last_used_at: null,
    models: null,
    origins: null,
    limits: { rpm: null, tpm: null, tpd: null, concurrency: null },
    policy: null,
    budgets: null,
    key: out.key,
  });
  t.equal(r.stdout.split(out.key).length - 1, 1, 'the key is printed exactly once');
  const { key: _key, ...record } = out;
  t.same(await ws.show('bob'), record, 'show has the same record, without the key');
  t.same(dbRows(ws.db)[0]?.digest, sha256(out.key));
  for (const [name, bytes] of dbFiles(ws.db)) t.equal(bytes.indexOf(out.key), -1, `${name} does not contain the key`);
});

// ---------------------------------------------------------------------------------------------
// list and show

t.test('keys list / show (by name and by id), text and --json; never the key', async (t) => {
  const ws = workspace(t);
  const empty = await ws.cli('keys', 'list');
  t.same(
    empty,
    { code: 0, stdout: `No keys in ${ws.db}. Create one: llm-gateway keys create --name alice\n`, stderr: '' },
    'an empty database says how to start',
  );

  const alice = await ws.create(
    'alice',
    '--note',
    "Alice's laptop",
    '--expires',
    '2099-12-31',
    '--models',
    'gpt-oss-20b,qwen3',
    '--rpm',
    '5',
  );
  const carol = await ws.create('carol');
  const { key: aliceKey, ...aliceRecord } = alice;
  const { key: carolKey, ...carolRecord } = carol;
  t.equal(alice.expires_at, '2100-01-01T00:00:00.000Z', 'a date: valid through that day (UTC)');
  const secrets = [aliceKey, carolKey];

  const [list, listJson, show, showById, showJson] = await Promise.all([
    ws.cli('keys', 'list'),
    ws.cli('keys', 'list', '--json'),
    ws.cli('keys', 'show', 'alice'),
    ws.cli('keys', 'show', alice.id),
    ws.cli('keys', 'show', carol.id, '--json'),
  ]);
  t.equal(list.code, 0);
  t.equal(list.stderr, '');
  t.match(list.stdout, /\n$/, 'ends with a newline');
  const table = readTable(list.stdout);
  const columns = ['NAME', 'PREFIX', 'ENABLED', 'EXPIRES', 'LAST USED', 'NOTE'];
  t.same(
    table.headers.filter((h) => columns.includes(h)),
    columns,
    `the columns, in this order: ${table.headers.join(' | ')}`,
  );
  t.equal(table.headers.at(-1), 'NOTE', 'the free-text note last');
  t.match(
    table.rows,
    [
      {
        NAME: 'alice',
        PREFIX: `${alice.prefix}…`,
        ENABLED: 'yes',
        EXPIRES: '2100-01-01 00:00:00Z',
        'LAST USED': 'never',
        NOTE: "Alice's laptop",
      },
      { NAME: 'carol', PREFIX: `${carol.prefix}…`, ENABLED: 'yes', EXPIRES: 'never', 'LAST USED': 'never', NOTE: '' },
    ],
    'one row per key, oldest first, columns aligned under their headers',
  );
  t.equal(table.rows.length, 2);
  if (table.headers.includes('ID'))
    t.same(
      table.rows.map((r) => r.ID),
      [alice.id, carol.id],
    );

  t.equal(listJson.code, 0);
  const listed = JSON.parse(listJson.stdout) as { object: string; data: KeyJson[] };
  t.equal(listed.object, 'list');
  t.equal(listed.data.length, 2);
  t.match(listed.data, [aliceRecord, carolRecord], 'every field of each record, oldest first');

  t.same(show, { code: 0, stdout: `${describeLines(aliceRecord)}\n`, stderr: '' });
  t.match(show.stdout, /^models: {5}gpt-oss-20b, qwen3$/m);
  t.match(show.stdout, /^limits: {5}rpm=5 tpm=- tpd=- concurrency=-$/m);
  t.same(showById, show, 'show <id> prints the same');
  t.same(showJson, { code: 0, stdout: `${JSON.stringify(carolRecord, null, 2)}\n`, stderr: '' });

  for (const r of [list, listJson, show, showJson]) {
    for (const secret of secrets) t.equal(r.stdout.indexOf(secret), -1, 'no key in the output');
    t.equal(r.stdout.match(ANY_KEY), null, 'nothing key-like in the output');
  }
});

// ---------------------------------------------------------------------------------------------
// disable, enable, rotate, set, revoke

t.test('disable / enable / rotate / set / revoke', async (t) => {
  const ws = workspace(t);
  const alice = await ws.create(
    'alice',
    '--note',
    'old laptop',
    '--expires',
    '30d',
    '--models',
    'gpt-oss-20b',
    '--origins',
    'https://chat.example.com',
    '--rpm',
    '60',
    '--tpm',
    '1000',
  );
  const { key: oldKey, ...record } = alice;

  t.same(await ws.cli('keys', 'disable', 'alice'), { code: 0, stdout: '✅ Key "alice" disabled.\n', stderr: '' });
  t.equal(dbRows(ws.db)[0]?.enabled, 0, 'stored as disabled');
  const enable = await ws.cli('keys', 'enable', alice.id, '--json');
  t.same(enable, { code: 0, stdout: `${JSON.stringify(record, null, 2)}\n`, stderr: '' }, 'enable by id, --json: the record');

  // rotate: a new secret for the same record.
  const rotate = await ws.cli('keys', 'rotate', 'alice');
  t.equal(rotate.code, 0);
  t.equal(rotate.stderr, '');
  const m =
    /^✅ Rotated key "alice" \((key_[0-9a-f]{12})\)\. This is the only time it is shown:\n\n {4}(\S+)\n\nThe running gateway accepts it within a second\.\n$/.exec(
      rotate.stdout,
    );
  t.ok(m, `the whole output: ${rotate.stdout}`);
  t.equal(m?.[1], alice.id, 'the same key record');
  const newKey = m?.[2] ?? '';
  t.match(newKey, KEY_PATTERN);
  t.not(newKey, oldKey, 'a different secret');
  t.equal(rotate.stdout.match(ANY_KEY)?.length, 1, 'only the new key is printed, once');
  t.same(
    dbRows(ws.db).map((r) => r.digest),
    [sha256(newKey)],
    'the old digest is gone',
  );

  // set: rename and lift rules.
  const set = await ws.cli(
    'keys',
    'set',
    'alice',
    '--name',
    'alice2',
    '--expires',
    'never',
    '--models',
    'all',
    '--rpm',
    'none',
    '--note',
    'new laptop',
  );
  const after = {
    ...record,
    name: 'alice2',
    note: 'new laptop',
    prefix: newKey.slice(0, 10),
    expires_at: null,
    models: null,
    limits: { rpm: null, tpm: 1000, tpd: null, concurrency: null },
  };
  t.same(set, { code: 0, stdout: `✅ Key "alice2" updated.\n${describeLines(after)}\n`, stderr: '' });
  const setJson = await ws.cli(
    'keys',
    'set',
    'alice2',
    '--origins',
    'all',
    '--tpm',
    'none',
    '--expires',
    '2099-12-31',
    '--models',
    'a,b',
    '--concurrency',
    '3',
    '--json',
  );
  const after2 = {
    ...after,
    origins: null,
    expires_at: '2100-01-01T00:00:00.000Z',
    models: ['a', 'b'],
    limits: { rpm: null, tpm: null, tpd: null, concurrency: 3 },
  };
  t.same(JSON.parse(setJson.stdout), after2, 'set by the new name, --json');

  // revoke: deleted for good.
  const bob = await ws.create('bob');
  t.same(await ws.cli('keys', 'revoke', 'alice2'), { code: 0, stdout: '✅ Key "alice2" revoked (deleted).\n', stderr: '' });
  t.same(await ws.cli('keys', 'revoke', bob.id, '--json'), {
    code: 0,
    stdout: `${JSON.stringify({ id: bob.id, name: 'bob', deleted: true }, null, 2)}\n`,
    stderr: '',
  });
  t.same(dbRows(ws.db), [], 'no rows left');
});

// ---------------------------------------------------------------------------------------------
// errors

t.test('errors: exit 1 or 2, one line on stderr (usage errors add the --help hint), nothing on stdout', async (t) => {
  const ws = workspace(t);
  await ws.create('alice');
  await ws.create('bob');
  const cases: [string[], 1 | 2, RegExp | string][] = [
    // failures: exit 1, no hint
    [['keys', 'show', 'nobody'], 1, 'no key named or with id "nobody"'],
    [['keys', 'set', 'nobody', '--note', 'x'], 1, 'no key named or with id "nobody"'],
    [['keys', 'create', '--name', 'alice'], 1, 'a key named "alice" already exists'],
    [['keys', 'set', 'bob', '--name', 'alice'], 1, 'a key named "alice" already exists'],
    // usage: exit 2, with the hint
    [['keys', 'create', '--name', 'carol', '--expires', 'yesterday'], 2, /^--expires: "yesterday" is not a date: use YYYY-MM-DD/],
    [['keys', 'create', '--name', 'carol', '--expires', '2020-01-01'], 2, '--expires: "2020-01-01" is in the past'],
    [['keys', 'set', 'alice', '--expires', '2020-01-01'], 2, '--expires: "2020-01-01" is in the past'],
    [['keys', 'frob'], 2, 'unknown action "frob"'],
    [['frob'], 2, 'unknown command "frob"'],
    [['keys', 'list', '--bogus'], 2, /^Unknown option '--bogus'/],
    [['keys', 'show', 'alice', '--rpm', '5'], 2, '--rpm does not apply to "keys show"'],
    [['keys', 'create'], 2, '"keys create" needs --name NAME'],
    [['keys', 'show'], 2, '"keys show" needs a key name or id'],
    [['keys', 'set', 'alice'], 2, '"keys set" needs at least one field to change (see --help)'],
    [['keys', 'show', 'alice', 'bob'], 2, 'unexpected argument "bob"'],
    [['keys', 'create', '--name', 'carol', '--rpm', '0'], 2, '--rpm must be a whole number ≥ 1, got "0"'],
    // field values the store refuses are usage errors too
    [
      ['keys', 'create', '--name', 'bad name'],
      2,
      `name "bad name" is not valid: use 1-64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit`,
    ],
    [
      ['keys', 'create', '--name', 'carol', '--origins', 'https://chat.example.com/'],
      2,
      'origin "https://chat.example.com/" is not an exact origin like https://chat.example.com (no path, no trailing slash)',
    ],
  ];
  for (let i = 0; i < cases.length; i += 4) {
    const batch = cases.slice(i, i + 4);
    const results = await Promise.all(batch.map(([args]) => ws.cli(...args)));
    batch.forEach(([args, code, message], j) => {
      const r = results[j]!;
      const what = `llm-gateway ${args.join(' ')}`;
      t.equal(r.code, code, `${what}: exit ${code}`);
      t.equal(r.stdout, '', `${what}: nothing on stdout`);
      const lines = r.stderr.split('\n');
      t.equal(lines.pop(), '', `${what}: stderr ends with a newline`);
      t.same(lines.length, code === 2 ? 2 : 1, `${what}: one line${code === 2 ? ' and the hint' : ''}: ${r.stderr}`);
      const [first = '', hint] = lines;
      t.ok(first.startsWith('llm-gateway: '), `${what}: says who speaks`);
      if (typeof message === 'string') t.equal(first, `llm-gateway: ${message}`, what);
      else t.match(first.slice('llm-gateway: '.length), message, what);
      if (code === 2) t.equal(hint, args[0] === 'keys' ? KEYS_HINT : 'Try: llm-gateway --help', `${what}: the hint`);
    });
  }
  t.same(
    dbRows(ws.db).map((r) => r.name),
    ['alice', 'bob'],
    'no failed command changed the database',
  );
});

t.test('no action / no command: exit 2, the error on stderr, nothing on stdout', async (t) => {
  const ws = workspace(t);
  const [keys, none] = await Promise.all([ws.cli('keys'), ws.cli()]);
  t.equal(keys.code, 2, 'keys without an action: exit 2');
  t.match(keys.stderr, /^llm-gateway: name an action[^\n]*\nTry: llm-gateway keys --help\n$/, 'one error line and the hint on stderr');
  t.equal(keys.stdout, '', 'nothing on stdout');
  t.equal(none.code, 2, 'llm-gateway without a command: exit 2');
  t.match(none.stderr, /^llm-gateway: name a command[^\n]*\nTry: llm-gateway --help\n$/, 'one error line and the hint on stderr');
  t.equal(none.stdout, '', 'nothing on stdout');
  t.notOk(existsSync(ws.db), 'no database was created');
});

t.test('--help at every level: exit 0, usage on stdout, nothing on stderr, no database touched', async (t) => {
  const ws = workspace(t);
  const variants = [
    ['keys', 'create', '--help'],
    ['keys', 'set', 'alice', '-h'],
  ];
  const [top, short, keys, ...others] = await Promise.all([
    ws.cli('--help'),
    ws.cli('-h'),
    ws.cli('keys', '--help'),
    ...variants.map((args) => ws.cli(...args)),
  ]);
  t.equal(top.code, 0);
  t.equal(top.stderr, '');
  t.match(top.stdout, /^Usage: llm-gateway <command> \[options\]\n\nCommands:\n/);
  t.match(top.stdout, /^ {2}keys +manage API keys in the key database \(llm-gateway keys --help\)$/m, 'lists the keys command');
  t.match(top.stdout, /\nOptions:\n {2}-h, --help +show help\n$/);
  t.same(short, top, '-h is the same');

  t.equal(keys.code, 0);
  t.equal(keys.stderr, '');
  t.match(keys.stdout, /^Usage: llm-gateway keys <action> \[options\]\n/);
  for (const action of [
    'create --name NAME',
    'list [--json]',
    'show NAME',
    'disable NAME',
    'enable NAME',
    'rotate NAME',
    'set NAME',
    'revoke NAME',
  ]) {
    t.match(keys.stdout, new RegExp(`^ {2}${action.replace(/[[\]]/g, '\\$&')} `, 'm'), `names "${action}"`);
  }
  for (const option of [
    '--name',
    '--note',
    '--expires',
    '--models',
    '--origins',
    '--rpm',
    '--tpm',
    '--tpd',
    '--concurrency',
    '--db',
    '--json',
    '--help',
  ]) {
    t.match(keys.stdout, new RegExp(`^ .*${option}\\b`, 'm'), `explains ${option}`);
  }
  variants.forEach((args, i) => t.same(others[i], keys, `llm-gateway ${args.join(' ')}: the keys usage, exit 0`));
  t.notOk(existsSync(ws.db), 'help never opens (or creates) the database');
});

// ---------------------------------------------------------------------------------------------
// which database

t.test('the database: GATEWAY_DB, --db PATH, .env in cwd, default ./data/gateway.db', async (t) => {
  // Default: ./data/gateway.db in the working directory.
  const plain = tempDir(t);
  const created = await runCli(plain, ['keys', 'create', '--name', 'dflt']);
  t.equal(created.code, 0, `default: ${created.stderr}`);
  t.same(
    dbRows(join(plain, 'data', 'gateway.db')).map((r) => r.name),
    ['dflt'],
    'created ./data/gateway.db (folder too)',
  );

  // --db PATH (relative to cwd), which wins over GATEWAY_DB.
  const dir = tempDir(t);
  const envDb = join(dir, 'env.db');
  const viaFlag = await runCli(dir, ['keys', 'create', '--name', 'flagged', '--db', 'sub/flag.db'], { GATEWAY_DB: envDb });
  t.equal(viaFlag.code, 0, `--db: ${viaFlag.stderr}`);
  t.same(
    dbRows(join(dir, 'sub', 'flag.db')).map((r) => r.name),
    ['flagged'],
    '--db names the file',
  );
  t.notOk(existsSync(envDb), 'GATEWAY_DB was not used');
  const viaEnv = await runCli(dir, ['keys', 'create', '--name', 'enved'], { GATEWAY_DB: envDb });
  t.equal(viaEnv.code, 0);
  t.same(
    dbRows(envDb).map((r) => r.name),
    ['enved'],
    'GATEWAY_DB names the file',
  );
  t.notOk(existsSync(join(dir, 'data')), 'no default database was made');

  // .env in the working directory; the real environment wins over it.
  const withDotEnv = tempDir(t);
  writeFileSync(join(withDotEnv, '.env'), '# settings\nGATEWAY_DB=./from-dotenv/keys.db\nLLM_API_KEYS=sk-not-used-here-0123456789\n');
  const viaDotEnv = await runCli(withDotEnv, ['keys', 'create', '--name', 'dotted']);
  t.equal(viaDotEnv.code, 0, `.env: ${viaDotEnv.stderr}`);
  t.same(
    dbRows(join(withDotEnv, 'from-dotenv', 'keys.db')).map((r) => r.name),
    ['dotted'],
    '.env GATEWAY_DB is read',
  );
  t.notOk(existsSync(join(withDotEnv, 'data')), 'the default was not used');
  const envWins = await runCli(withDotEnv, ['keys', 'create', '--name', 'winner'], { GATEWAY_DB: join(withDotEnv, 'real-env.db') });
  t.equal(envWins.code, 0);
  t.same(
    dbRows(join(withDotEnv, 'real-env.db')).map((r) => r.name),
    ['winner'],
    'the environment wins over .env',
  );
  t.same(
    dbRows(join(withDotEnv, 'from-dotenv', 'keys.db')).map((r) => r.name),
    ['dotted'],
    'the .env file was left alone',
  );

  // A path that is not a file: a usage error naming the setting.
  writeFileSync(join(dir, 'junk.db'), 'this is not sqlite, just text that is long enough to be read as a header........');
  const [bad, badFlag, junk] = await Promise.all([
    runCli(dir, ['keys', 'list'], { GATEWAY_DB: `${dir}/` }),
    runCli(dir, ['keys', 'list', '--db', 'folder/']),
    runCli(dir, ['keys', 'list', '--db', 'junk.db']),
  ]);
  t.same(bad, {
    code: 2,
    stdout: '',
    stderr: `llm-gateway: GATEWAY_DB must be a file path such as ./data/gateway.db, got "${dir}/"\n${KEYS_HINT}\n`,
  });
  t.same(badFlag, {
    code: 2,
    stdout: '',
    stderr: `llm-gateway: --db must be a file path such as ./data/gateway.db, got "folder/"\n${KEYS_HINT}\n`,
  });
  // Not a database: a failure (exit 1), one line.
  t.equal(junk.code, 1);
  t.equal(junk.stdout, '');
  t.match(junk.stderr, /^llm-gateway: .*junk\.db cannot be used: the file is not a SQLite database or is damaged\n$/);
});

/** The files a process has open (Linux /proc); empty once it is gone. */
function openFiles(pid: number): string[] {
  try {
    return readdirSync(`/proc/${pid}/fd`).map((fd) => {
      try {
        return readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        return '';
      }
    });
  } catch {
    return [];
  }
}

t.test(
  'a fresh database opened by two processes at once: both work',
  { skip: existsSync('/proc/self/fd') ? false : 'needs /proc to see when a process has opened the file' },
  async (t) => {
    // Two processes meeting a new file at once is ordinary: the gateway starting while the first
    // `keys create` runs, two instances starting together, a script creating keys in parallel.
    // Made deterministic: this process holds the write lock on the new (empty, WAL) file until
    // both CLIs have opened it and read its schema version, then lets go.
    const ws = workspace(t);
    mkdirSync(dirname(ws.db), { recursive: true });
    const holder = new Database(ws.db);
    t.teardown(() => {
      if (holder.inTransaction) holder.exec('ROLLBACK');
      holder.close();
    });
    holder.pragma('journal_mode = WAL');
    holder.exec('BEGIN IMMEDIATE');
    const clis = [
      spawnCli(ws.dir, ['keys', 'list', '--json'], { GATEWAY_DB: ws.db }),
      spawnCli(ws.dir, ['keys', 'list', '--json'], { GATEWAY_DB: ws.db }),
    ];
    // A process has read the file once it holds the WAL index (-shm) open.
    await until(
      'both CLIs open the database',
      async () => clis.every((c) => openFiles(c.pid).includes(`${ws.db}-shm`)),
      (opened) => opened,
      10_000,
    );
    await sleep(300); // each reads user_version right after opening, then waits for the write lock
    holder.exec('COMMIT');
    const results = await within(Promise.all(clis.map((c) => c.result)), 15_000, 'both CLIs finish');
    const empty = { code: 0, stdout: `${JSON.stringify({ object: 'list', data: [] }, null, 2)}\n`, stderr: '' };
    // Regression: migrations read user_version outside their transaction, so the second process
    // re-ran migration 1 and failed with "table keys already exists".
    t.same(results, [empty, empty], 'both see the new, empty database');
    t.same(dbRows(ws.db), [], 'the file is usable afterwards');
  },
);

// ---------------------------------------------------------------------------------------------
// a running gateway (in-process) picks up every change, no restart

async function gatewayOn(t: Teardown, dbPath: string) {
  const store = KeyStore.open(dbPath);
  t.teardown(() => store.close()); // teardowns run last-first: after the gateway's close
  const registry = new KeyRegistry([KEY_A], store);
  return startGateway(t, {}, {}, { registry });
}

t.test('live: create, disable, enable, rotate, revoke with the CLI; the gateway follows within 2 s', async (t) => {
  const ws = workspace(t);
  const gw = await gatewayOn(t, ws.db);
  // Every answer that was a 200 went to llama-server; count them to prove no refused one did.
  let served = 0;
  const send = async (key: string): Promise<RawResponse> => {
    const r = await chat(gw.port, key);
    if (r.status === 200) served++;
    return r;
  };
  const ok = (r: RawResponse): boolean => r.status === 200;
  const reloads = (): number => gw.logs.filter((l) => l.msg === 'keys reloaded: the key database changed').length;

  // Reading the keys changes nothing: no reload (waiting past two polls to be sure).
  t.equal((await ws.cli('keys', 'list')).code, 0);
  await sleep(600);
  // Regression: the writability probe on open was a committed write, so every CLI call made
  // every running gateway reload.
  t.equal(reloads(), 0, 'a read-only `keys list` does not make the gateway reload');

  const carol = await ws.create('carol');
  const first = await until('the new key works', () => send(carol.key), ok);
  t.equal(first.text, CHAT_OK, "the answer is llama-server's, untouched");
  const line = gw.logs.filter((l) => l.msg === 'request' && l.status === 200).at(-1);
  t.equal(line?.key, 'carol', 'the request log names the key by its name');

  t.equal((await ws.cli('keys', 'disable', 'carol')).code, 0);
  const disabled = await until(
    'the disabled key is refused',
    () => send(carol.key),
    (r) => r.status === 401,
  );
  t.equal(disabled.headers['www-authenticate'], 'Bearer');
  t.equal(disabled.headers['content-type'], 'application/json; charset=utf-8');
  t.same(JSON.parse(disabled.text), DISABLED_401);

  t.equal((await ws.cli('keys', 'enable', 'carol')).code, 0);
  await until('the enabled key works again', () => send(carol.key), ok);

  const rotate = await ws.cli('keys', 'rotate', 'carol', '--json');
  t.equal(rotate.code, 0);
  const newKey = (JSON.parse(rotate.stdout) as KeyJsonWithSecret).key;
  await until('the rotated key works', () => send(newKey), ok);
  const old = await send(carol.key);
  t.equal(old.status, 401, 'the old secret stopped working at the same reload');
  t.same(JSON.parse(old.text), ORIGINAL_401);

  t.equal((await ws.cli('keys', 'revoke', 'carol')).code, 0);
  const revoked = await until(
    'the revoked key is refused',
    () => send(newKey),
    (r) => r.status === 401,
  );
  t.equal(revoked.headers['www-authenticate'], 'Bearer');
  t.same(JSON.parse(revoked.text), ORIGINAL_401);

  t.equal((await send(KEY_A)).status, 200, 'the env key kept working throughout');
  t.equal(gw.fake.requests.filter((r) => r.url === '/v1/chat/completions').length, served, 'refused requests never reached llama-server');
  t.ok(reloads() >= 5, 'the gateway logged its reloads');
  for (const secret of [carol.key, newKey, KEY_A]) t.equal(gw.logText().indexOf(secret), -1, 'no key in the log');
  t.equal(gw.logText().match(ANY_KEY), null, 'nothing key-like in the log');
});

t.test('last used: written when the gateway closes, shown by keys show / list', async (t) => {
  const ws = workspace(t);
  const gw = await gatewayOn(t, ws.db);
  const dave = await ws.create('dave');
  t.equal(dave.last_used_at, null);
  const before = Date.now();
  await until(
    'the new key works',
    () => chat(gw.port, dave.key),
    (r) => r.status === 200,
  );
  const after = Date.now();
  gw.app.server.closeAllConnections();
  await gw.app.close();
  const shownJson = await ws.show('dave');
  t.not(shownJson.last_used_at, null, 'last_used_at is set');
  const at = Date.parse(shownJson.last_used_at ?? '');
  t.ok(at >= before - 1000 && at <= after + 1000, `the time of the request (${shownJson.last_used_at})`);
  const { key: _key, ...record } = dave;
  t.same(shownJson, { ...record, last_used_at: shownJson.last_used_at }, 'only last_used_at changed');
  const list = await ws.cli('keys', 'list');
  t.equal(readTable(list.stdout).rows[0]?.['LAST USED'], shown(shownJson.last_used_at, 'never'), 'the LAST USED column');
});

// ---------------------------------------------------------------------------------------------
// the real process (dist/server.js)

interface Process {
  child: ChildProcess;
  exit: Promise<number | null>;
  stdout: () => string;
  stderr: () => string;
}

function spawnServer(t: Teardown, cwd: string, env: Record<string, string>): Process {
  const child = spawn(process.execPath, [SERVER], {
    cwd,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exit;
  });
  return { child, exit, stdout: () => stdout, stderr: () => stderr };
}

t.test('real process: banner counts env and DB keys; keys created and revoked with the CLI apply within 2 s', async (t) => {
  const ws = workspace(t);
  const alice = await ws.create('alice');
  const bob = await ws.create('bob');
  t.equal((await ws.cli('keys', 'disable', 'bob')).code, 0);
  const fake = await startFakeLlama();
  t.teardown(() => fake.close());
  const port = await freePort();
  const server = spawnServer(t, ws.dir, { LLM_API_KEYS: KEY_A, LLM_UPSTREAM: fake.url, GATEWAY_PORT: String(port), GATEWAY_DB: ws.db });
  const ready = once(server.child, 'message').then(([m]: unknown[]) => (m === 'ready' ? undefined : Promise.reject(new Error(String(m)))));
  await within(
    Promise.race([ready, server.exit.then((code) => Promise.reject(new Error(`exited ${code}: ${server.stderr()}`)))]),
    10_000,
    'ready message',
  );

  const banner = server.stdout().split('\n').slice(0, 4);
  t.same(
    banner,
    ['✅ LLM Gateway starting with config:', `  - Port: ${port}`, `  - Upstream: ${fake.url}`, '  - Valid API keys: 2'],
    '1 env key + 1 enabled DB key (the disabled one is not counted)',
  );
  t.equal(server.stderr(), '');

  t.equal((await chat(port, alice.key)).status, 200, 'a DB key created before start works');
  t.same(JSON.parse((await chat(port, bob.key)).text), DISABLED_401, 'the disabled one gets key_disabled');
  t.equal((await chat(port, KEY_A)).status, 200, 'the env key works');

  const erin = await ws.create('erin');
  const okay = await until(
    'a key created with the CLI works in the running process',
    () => chat(port, erin.key),
    (r) => r.status === 200,
  );
  t.equal(okay.text, CHAT_OK);
  t.equal((await ws.cli('keys', 'revoke', 'erin')).code, 0);
  const gone = await until(
    'the revoked key is refused',
    () => chat(port, erin.key),
    (r) => r.status === 401,
  );
  t.same(JSON.parse(gone.text), ORIGINAL_401);
  t.equal(gone.headers['www-authenticate'], 'Bearer');

  server.child.kill('SIGTERM');
  t.equal(await within(server.exit, 5000, 'the process exits on SIGTERM'), 0);
  const log = server.stdout() + server.stderr();
  t.match(log, /"msg":"keys reloaded: the key database changed"/, 'the process logged its reloads');
  for (const secret of [alice.key, bob.key, erin.key, KEY_A]) t.equal(log.indexOf(secret), -1, 'no key in the output');
  t.equal(log.match(ANY_KEY), null, 'nothing key-like in the output');
  t.not((await ws.show('alice')).last_used_at, null, 'the process wrote last-used times on the way out');
});

t.test('real process: no key in LLM_API_KEYS nor the database → exit 1, one stderr line naming `llm-gateway keys create`', async (t) => {
  const dir = tempDir(t);
  const server = spawnServer(t, dir, { LLM_API_KEYS: '', GATEWAY_PORT: String(await freePort()), GATEWAY_DB: join(dir, 'empty.db') });
  t.equal(await within(server.exit, 10_000, 'the process exits'), 1, 'exit 1');
  t.equal(server.stdout(), '', 'no banner');
  const lines = server.stderr().split('\n');
  t.equal(lines.pop(), '');
  t.equal(lines.length, 1, `one line: ${server.stderr()}`);
  t.match(lines[0], /^❌ LLM Gateway cannot start: no API keys: .*`(npx )?llm-gateway keys create/);
});
