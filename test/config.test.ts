// Settings: defaults, every kind of bad value, and what a person sees when starting the real
// process (dist/server.js, built by `npm test`'s pretest step).
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { ConfigError, SETTINGS, loadConfig } from '../src/config.js';
import { KeyStore } from '../src/keys/key-store.js';
import { startFakeLlama } from './fixtures/fake-llama.js';
import { KEY_A, KEY_B } from './helpers.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SERVER = join(ROOT, 'dist', 'server.js');

t.test('defaults', async (t) => {
  const c = loadConfig({ LLM_API_KEYS: `${KEY_A}, ${KEY_B}` });
  t.same(c.apiKeys, [KEY_A, KEY_B]);
  t.same(c.upstreams, ['http://127.0.0.1:5857']);
  t.equal(c.upstreamApiKey, '');
  t.equal(c.port, 8787);
  t.equal(c.host, '127.0.0.1');
  t.equal(c.corsAllowOrigin, null);
  t.equal(c.bodyLimit, 50 * 1024 * 1024);
  t.equal(c.headersTimeoutMs, 600_000);
  t.equal(c.idleTimeoutMs, 300_000);
  t.equal(c.shutdownGraceMs, 30_000);
  t.equal(c.logLevel, 'info');
  t.equal(c.db, './data/gateway.db');
  t.equal(c.adminKey, '', 'admin API off');
  t.same(loadConfig({}).apiKeys, [], 'LLM_API_KEYS may be empty when the key database holds keys');
  t.same(loadConfig({ LLM_API_KEYS: ' , ' }).apiKeys, []);
});

t.test('values are parsed', async (t) => {
  const c = loadConfig({
    LLM_API_KEYS: `${KEY_A},`,
    LLM_UPSTREAM: 'https://llm.internal:8443/prefix/',
    GATEWAY_PORT: '9000',
    CORS_ALLOW_ORIGIN: 'https://chat.example.com, http://localhost:5173',
    GATEWAY_BODY_LIMIT: '512kb',
    LOG_LEVEL: 'WARN',
  });
  t.same(c.apiKeys, [KEY_A], 'a trailing comma is not a key');
  t.same(c.upstreams, ['https://llm.internal:8443/prefix'], 'path prefix kept, trailing slash dropped');
  t.equal(c.port, 9000);
  t.same(c.corsAllowOrigin, ['https://chat.example.com', 'http://localhost:5173']);
  t.equal(c.bodyLimit, 512 * 1024);
  t.equal(c.logLevel, 'warn');
  t.equal(loadConfig({ LLM_API_KEYS: KEY_A, CORS_ALLOW_ORIGIN: '*' }).corsAllowOrigin, '*');
  t.equal(loadConfig({ LLM_API_KEYS: KEY_A, GATEWAY_BODY_LIMIT: '1048576' }).bodyLimit, 1048576);
});

const BAD: [Record<string, string>, string, RegExp][] = [
  [{ LLM_API_KEYS: `${KEY_A},short-key` }, 'LLM_API_KEYS', /key 2 is 9 characters long; each key needs at least 16/],
  [{ LLM_API_KEYS: `${KEY_A},${KEY_A}` }, 'LLM_API_KEYS', /key 2 repeats key 1/],
  [{ LLM_UPSTREAM: 'ftp://127.0.0.1:21' }, 'LLM_UPSTREAM', /http\(s\) URL/],
  [{ LLM_UPSTREAM: '127.0.0.1:5857' }, 'LLM_UPSTREAM', /http\(s\) URL/],
  [{ LLM_UPSTREAM: 'not a url' }, 'LLM_UPSTREAM', /http\(s\) URL/],
  [{ GATEWAY_PORT: 'eighty' }, 'GATEWAY_PORT', /port number from 1 to 65535, got "eighty"/],
  [{ GATEWAY_PORT: '70000' }, 'GATEWAY_PORT', /port number/],
  [{ GATEWAY_PORT: '80.5' }, 'GATEWAY_PORT', /port number/],
  [{ GATEWAY_HOST: 'http://0.0.0.0' }, 'GATEWAY_HOST', /listen address/],
  [{ CORS_ALLOW_ORIGIN: 'https://chat.example.com/' }, 'CORS_ALLOW_ORIGIN', /exact origins/],
  [{ CORS_ALLOW_ORIGIN: 'chat.example.com' }, 'CORS_ALLOW_ORIGIN', /exact origins/],
  [{ GATEWAY_BODY_LIMIT: 'lots' }, 'GATEWAY_BODY_LIMIT', /size such as 50mb/],
  [{ GATEWAY_HEADERS_TIMEOUT_MS: '10s' }, 'GATEWAY_HEADERS_TIMEOUT_MS', /milliseconds/],
  [{ GATEWAY_IDLE_TIMEOUT_MS: '-1' }, 'GATEWAY_IDLE_TIMEOUT_MS', /milliseconds/],
  [{ GATEWAY_SHUTDOWN_GRACE_MS: 'soon' }, 'GATEWAY_SHUTDOWN_GRACE_MS', /milliseconds/],
  [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL', /must be one of fatal, error, warn, info, debug, trace, silent/],
  [{ LLM_UPSTREAM_API_KEY: 'two words' }, 'LLM_UPSTREAM_API_KEY', /whitespace/],
  [{ GATEWAY_ADMIN_KEY: 'too-short-admin-key' }, 'GATEWAY_ADMIN_KEY', /is 19 characters long; it needs at least 32/],
  [
    { LLM_API_KEYS: 'sk-admin-and-client-0123456789abcdef', GATEWAY_ADMIN_KEY: 'sk-admin-and-client-0123456789abcdef' },
    'GATEWAY_ADMIN_KEY',
    /must not be one of the client keys in LLM_API_KEYS/,
  ],
  [{ GATEWAY_DB: 'data/' }, 'GATEWAY_DB', /file path/],
];

t.test('bad values name the setting and never echo a key', async (t) => {
  for (const [env, setting, message] of BAD) {
    const full = { LLM_API_KEYS: KEY_A, ...env };
    let caught: unknown;
    try {
      loadConfig(full);
    } catch (err) {
      caught = err;
    }
    t.ok(caught instanceof ConfigError, `${JSON.stringify(env)} is refused`);
    t.equal((caught as ConfigError).setting, setting);
    t.match((caught as ConfigError).message, message);
    t.ok((caught as ConfigError).message.startsWith(setting), 'the message starts with the setting name');
  }
  const err = (() => {
    try {
      loadConfig({ LLM_API_KEYS: 'tooshort-secret' });
    } catch (e) {
      return e as Error;
    }
    return undefined;
  })();
  t.ok(err);
  t.notMatch(err?.message ?? '', 'tooshort-secret', 'the short key is not printed');
});

t.test('a key that could never match (non-ASCII) is refused at start, by position, never echoed', async (t) => {
  const secret = 'sk-café-0123456789abcdef';
  const cases: [Record<string, string>, string, RegExp][] = [
    [
      { LLM_API_KEYS: `${KEY_A},${secret}` },
      'LLM_API_KEYS',
      /^LLM_API_KEYS key 2 contains a character outside printable ASCII; keys must be printable ASCII .*could never match$/,
    ],
    [
      { LLM_API_KEYS: KEY_A, GATEWAY_ADMIN_KEY: `${secret}-admin-0123456789` },
      'GATEWAY_ADMIN_KEY',
      /^GATEWAY_ADMIN_KEY contains a character outside printable ASCII; .*could never match$/,
    ],
    [
      { LLM_API_KEYS: KEY_A, LLM_UPSTREAM_API_KEY: secret },
      'LLM_UPSTREAM_API_KEY',
      /^LLM_UPSTREAM_API_KEY contains a character outside printable ASCII/,
    ],
    [{ LLM_API_KEYS: `${KEY_A},sk-test-control-\u0001-0123456789` }, 'LLM_API_KEYS', /key 2 contains a character outside printable ASCII/],
  ];
  for (const [env, setting, message] of cases) {
    let caught: unknown;
    try {
      loadConfig(env);
    } catch (err) {
      caught = err;
    }
    t.ok(caught instanceof ConfigError, `${setting} is refused`);
    t.equal((caught as ConfigError).setting, setting);
    t.match((caught as ConfigError).message, message);
    t.notMatch((caught as ConfigError).message, 'café', 'the key is not echoed');
  }
});

t.test('.env.example documents every setting', async (t) => {
  const example = readFileSync(join(ROOT, '.env.example'), 'utf8');
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  for (const s of Object.values(SETTINGS)) {
    t.match(example, new RegExp(`^#.*\\n(#.*\\n)*#? ?${s.env}=`, 'm'), `${s.env} is in .env.example with a comment above it`);
    t.match(readme, s.env, `${s.env} is in README`);
  }
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function runServer(env: Record<string, string>, cwd: string, untilStdout?: RegExp): Promise<Run & { kill?: () => void }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [SERVER], {
      cwd,
      env: { PATH: process.env.PATH ?? '', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString('utf8');
      if (untilStdout?.test(stdout)) child.kill('SIGTERM');
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString('utf8')));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

t.test('the real process: a bad setting exits 1 with one line, no stack', async (t) => {
  const cwd = mkdtempSync(join(tmpdir(), 'gw-config-'));
  const cases: [Record<string, string>, RegExp][] = [
    [
      {},
      /no API keys: set LLM_API_KEYS in \.env \(run `npm run setup` to make one\), or create a key with `npx llm-gateway keys create --name alice`/,
    ],
    [{ LLM_API_KEYS: KEY_A, GATEWAY_PORT: 'abc' }, /GATEWAY_PORT must be a port number from 1 to 65535, got "abc"/],
    [{ LLM_API_KEYS: KEY_A, LLM_UPSTREAM: 'ftp://x' }, /LLM_UPSTREAM must be an http\(s\) URL/],
    [{ LLM_API_KEYS: 'sk-short' }, /LLM_API_KEYS key 1 is 8 characters long/],
  ];
  for (const [env, message] of cases) {
    const run = await runServer(env, cwd);
    t.equal(run.code, 1, `${JSON.stringify(env)}: exit code 1`);
    const lines = run.stderr.trim().split('\n');
    t.equal(lines.length, 1, 'one line on stderr');
    t.match(lines[0], message);
    t.notMatch(run.stderr, /\n\s+at /, 'no stack trace');
    t.notMatch(run.stderr + run.stdout, 'sk-short', 'no key printed');
    t.equal(run.stdout, '', 'nothing on stdout');
  }
});

t.test('the real process: banner, .env read, real environment wins, key never printed', async (t) => {
  const fake = await startFakeLlama();
  t.teardown(() => fake.close());
  const cwd = mkdtempSync(join(tmpdir(), 'gw-env-'));
  // .env holds the keys and a wrong port; the real environment's port wins.
  writeFileSync(join(cwd, '.env'), `# comment\nLLM_API_KEYS=${KEY_A},${KEY_B}\nGATEWAY_PORT=1\nLLM_UPSTREAM=${fake.url}\n`);
  const port = String(20000 + Math.floor(Math.random() * 20000));
  const run = await runServer({ GATEWAY_PORT: port }, cwd, /listening on/);
  t.equal(run.code, 0, 'SIGTERM → exit 0');
  t.equal(
    run.stdout
      .split('\n')
      .filter((l) => !l.startsWith('{'))
      .join('\n')
      .trim(),
    [
      '✅ LLM Gateway starting with config:',
      `  - Port: ${port}`,
      `  - Upstream: ${fake.url}`,
      '  - Valid API keys: 2',
      `🚀 LLM API Gateway listening on http://localhost:${port}`,
    ].join('\n'),
  );
  const jsonLines = run.stdout.split('\n').filter((l) => l.startsWith('{'));
  t.ok(jsonLines.length > 0, 'then JSON logs (stdout is not a TTY)');
  for (const l of jsonLines) t.doesNotThrow(() => JSON.parse(l) as unknown);
  t.notMatch(run.stdout + run.stderr, KEY_A);
  t.notMatch(run.stdout + run.stderr, KEY_B);
});

t.test('npm run setup: creates .env with one fresh key, shown once, private file; keeps an existing .env', async (t) => {
  const cwd = mkdtempSync(join(tmpdir(), 'gw-setup-'));
  const setup = (): Promise<string> =>
    new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [join(ROOT, 'scripts', 'setup.mjs')], { cwd, stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
      child.on('error', reject);
      child.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`exit ${code}`))));
    });
  const first = await setup();
  const env = readFileSync(join(cwd, '.env'), 'utf8');
  const key = /^LLM_API_KEYS=(sk-[A-Za-z0-9_-]{32})$/m.exec(env)?.[1];
  t.ok(key, 'a generated sk- key with 192 bits');
  t.match(first, key ?? 'missing', 'shown once');
  t.equal(statSync(join(cwd, '.env')).mode & 0o777, 0o600, 'only the owner can read .env');
  t.same(loadConfig({ LLM_API_KEYS: key }).apiKeys, [key], 'the gateway accepts it');
  const second = await setup();
  t.notMatch(second, key ?? 'missing', 'not shown again');
  t.equal(readFileSync(join(cwd, '.env'), 'utf8'), env, 'an existing .env is left alone');
});

t.test('the real process: a corrupt or read-only key database is a clear error at start', async (t) => {
  const cwd = mkdtempSync(join(tmpdir(), 'gw-baddb-'));
  writeFileSync(join(cwd, 'corrupt.db'), 'not a database '.repeat(100));
  const corrupt = await runServer({ LLM_API_KEYS: KEY_A, GATEWAY_DB: './corrupt.db' }, cwd);
  t.equal(corrupt.code, 1);
  t.equal(
    corrupt.stderr,
    '❌ LLM Gateway cannot start: GATEWAY_DB ./corrupt.db cannot be used: the file is not a SQLite database or is damaged\n',
  );
  t.equal(corrupt.stdout, '');

  // A read-only file: file modes for a normal user; root ignores those, so make it immutable.
  const path = join(cwd, 'ro.db');
  const store = KeyStore.open(path);
  store.close();
  const isRoot = process.getuid?.() === 0;
  const locked = isRoot ? spawnSync('chattr', ['+i', path]).status === 0 : (chmodSync(path, 0o444), true);
  t.test('read-only', { skip: locked ? false : 'chattr +i is not available here, and root ignores file modes' }, async (t) => {
    t.teardown(() => {
      if (isRoot) spawnSync('chattr', ['-i', path]);
    });
    const readonly = await runServer({ LLM_API_KEYS: KEY_A, GATEWAY_DB: './ro.db' }, cwd);
    t.equal(readonly.code, 1);
    t.equal(
      readonly.stderr,
      '❌ LLM Gateway cannot start: GATEWAY_DB ./ro.db cannot be used: the file or its folder is read-only; the gateway needs to write to it\n',
    );
  });
});
