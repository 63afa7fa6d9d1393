// `llm-gateway doctor`, the real command in its own process, against the fake llama-server: the
// whole checklist passing, and each way it fails saying what is wrong (upstream down, loading, its
// own --api-key, bad settings, no keys, a tunnel pointing elsewhere, PM2 not running); with two
// llama-servers a section each, and the running gateway's own view of them (its GET /health). It must
// start nothing, create nothing and never print a key. (With the PM2 stack up: test/menu.test.ts.)
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { SETTINGS } from '../../src/config.js';
import { KeyStore } from '../../src/keys/key-store.js';
import { defaultStackConfig } from '../../src/cli/stack/pm2-config.js';
import { tunnelTemplate } from '../../src/cli/stack/tunnel-file.js';
import { startFakeLlama, type FakeBehavior, type FakeLlama } from '../fixtures/fake-llama.js';
import { KEY_A, type Teardown } from '../helpers.js';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const GATEWAY_PORT = 8899;

if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx tsc -p tsconfig.json; npm test does it)`);

interface Run {
  code: number | null;
  out: string;
}

function doctor(cwd: string, env: Record<string, string> = {}, args: string[] = []): Promise<Run> {
  return new Promise((resolveRun, reject) => {
    const child = spawn(process.execPath, [CLI, 'doctor', ...args], {
      cwd,
      env: { PATH: process.env.PATH ?? '', HOME: cwd, PM2_HOME: join(cwd, 'pm2'), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
    child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolveRun({ code, out });
    });
  });
}

interface Setup {
  readonly dir: string;
  readonly fake: FakeLlama;
}

/** A folder with .env pointing at a fake llama-server, a key database, and a finished tunnel config. */
async function setup(t: Teardown, behavior: Partial<FakeBehavior> = {}, dotEnv = ''): Promise<Setup> {
  const fake = await startFakeLlama(behavior);
  const dir = mkdtempSync(join(tmpdir(), 'gw-doctor-'));
  t.teardown(async () => {
    await fake.close();
    rmSync(dir, { recursive: true, force: true });
  });
  writeFileSync(
    join(dir, '.env'),
    `LLM_API_KEYS=${KEY_A}\nLLM_UPSTREAM=${fake.url}\nGATEWAY_PORT=${GATEWAY_PORT}\nGATEWAY_DB=./data/gateway.db\n${dotEnv}`,
  );
  mkdirSync(join(dir, 'cf'));
  writeFileSync(join(dir, 'cf', 'tunnel-id.json'), '{}');
  writeFileSync(join(dir, 'cloudflared-config.yml'), tunnel(dir, GATEWAY_PORT));
  return { dir, fake };
}

function tunnel(dir: string, port: number): string {
  return tunnelTemplate(port, dir)
    .replace('tunnel: <tunnel-name>', 'tunnel: my-llm')
    .replace(/credentials-file: .*/, `credentials-file: ${join(dir, 'cf', 'tunnel-id.json')}`)
    .replace('- hostname: <hostname>', '- hostname: api.example.com');
}

function keyStore(dir: string): { keys: string[] } {
  const store = KeyStore.open(join(dir, 'data', 'gateway.db'));
  try {
    const alice = store.create({ name: 'alice' });
    const bob = store.create({ name: 'bob' });
    store.update('bob', { enabled: false });
    return { keys: [alice.key, bob.key] };
  } finally {
    store.close();
  }
}

t.test('against the fake llama-server: every check passes', async (t) => {
  const { dir, fake } = await setup(t);
  const { keys } = keyStore(dir);
  const run = await doctor(dir);
  t.equal(run.code, 0, run.out);
  t.equal(
    run.out,
    `LLM Gateway doctor

Settings (.env and environment)
  ✔ valid: GATEWAY_HOST 127.0.0.1, GATEWAY_PORT ${GATEWAY_PORT}, LLM_UPSTREAM ${fake.url}

Keys
  ✔ 2 keys accepted: 1 in LLM_API_KEYS, 1 of 2 in the key database (./data/gateway.db); 1 disabled or expired
  ✔ admin API off (GATEWAY_ADMIN_KEY empty)

llama-server (${fake.url}, called directly)
  ✔ reachable and ready (GET /health → 200)
  ✔ model: gpt-oss-20b (GET /v1/models)
  ✔ 2 slots: 2 requests at once, 2048 tokens of context each (GET /props total_slots, n_ctx; -np, -c), model file tiny.gguf

Gateway (http://127.0.0.1:${GATEWAY_PORT}/health, its view of the llama-servers)
  – not running here (ECONNREFUSED): its view of the llama-servers is skipped

Cloudflare Tunnel
  ✔ config present: ${dir}/cloudflared-config.yml
  ✔ credentials file ${dir}/cf/tunnel-id.json present
  ✔ ingress api.example.com → http://localhost:${GATEWAY_PORT} (the gateway)

PM2
  – no pm2-config.json: the stack is not run by PM2 here (llm-gateway menu writes one)

✔ All 9 checks passed.
`,
  );
  t.same(
    fake.requests.map((r) => `${r.method} ${r.url}`),
    ['GET /health', 'GET /v1/models', 'GET /props'],
    'llama-server is asked directly (the gateway never exposes /props)',
  );
  for (const key of [KEY_A, ...keys]) t.notMatch(run.out, key, 'no key is printed');
  t.notOk(existsSync(join(dir, 'pm2', 'pm2.pid')), 'no PM2 daemon was started');
});

t.test('llama-server down: fails and says so', async (t) => {
  const { dir, fake } = await setup(t);
  await fake.close();
  const run = await doctor(dir);
  t.equal(run.code, 1);
  t.match(
    run.out,
    `  ✘ not reachable at ${fake.url} (ECONNREFUSED): is llama-server running, and is LLM_UPSTREAM its address? (llm-gateway menu, key 1)\n  – model and slots: skipped, llama-server is not reachable\n`,
  );
  t.match(run.out, /\n✘ 1 of 7 checks failed\.\n$/);
});

t.test('llama-server still loading the model', async (t) => {
  const { dir } = await setup(t, { loading: true });
  const run = await doctor(dir);
  t.equal(run.code, 1);
  t.match(run.out, '  ✘ reachable but not ready: still loading the model (GET /health → 503); try again in a moment\n');
  t.match(run.out, /✘ \d+ of \d+ checks failed/);
});

t.test('llama-server with its own --api-key', async (t) => {
  const { dir } = await setup(t, { apiKey: 'upstream-secret-0123456789' });
  const without = await doctor(dir);
  t.equal(without.code, 1);
  t.match(without.out, '  ✘ llama-server wants an API key (GET /v1/models → 401): set LLM_UPSTREAM_API_KEY to its --api-key\n');
  const withKey = await doctor(dir, { LLM_UPSTREAM_API_KEY: 'upstream-secret-0123456789' });
  t.equal(withKey.code, 0, withKey.out);
  t.match(withKey.out, '  ✔ model: gpt-oss-20b (GET /v1/models)\n');
  t.notMatch(withKey.out, 'upstream-secret', 'the upstream key is not printed');
});

t.test('a bad setting, and no keys at all', async (t) => {
  const { dir } = await setup(t, {}, 'GATEWAY_PORT=eighty\n');
  const bad = await doctor(dir);
  t.equal(bad.code, 1);
  t.match(bad.out, 'Settings (.env and environment)\n  ✘ GATEWAY_PORT must be a port number from 1 to 65535, got "eighty"\n');
  t.match(bad.out, 'Keys\n  – skipped: the settings are not valid\n');

  const { dir: empty, fake } = await setup(t);
  writeFileSync(join(empty, '.env'), `LLM_UPSTREAM=${fake.url}\nGATEWAY_PORT=${GATEWAY_PORT}\nGATEWAY_DB=./data/gateway.db\n`);
  const none = await doctor(empty);
  t.equal(none.code, 1);
  t.match(
    none.out,
    '  ✘ 0 keys accepted: 0 in LLM_API_KEYS, no key database yet (./data/gateway.db). no API keys: set LLM_API_KEYS in .env',
  );
  t.notOk(existsSync(join(empty, 'data', 'gateway.db')), 'doctor does not create the key database');
});

t.test('a tunnel that does not point at the gateway', async (t) => {
  const { dir, fake } = await setup(t);
  writeFileSync(join(dir, 'cloudflared-config.yml'), tunnel(dir, fake.port));
  const run = await doctor(dir);
  t.equal(run.code, 1);
  t.match(
    run.out,
    `  ✘ ingress api.example.com → http://localhost:${fake.port} goes straight to llama-server (port ${fake.port}), around the gateway's keys: point it at http://localhost:${GATEWAY_PORT}\n`,
  );
  t.match(
    run.out,
    `  ✘ no ingress rule points at the gateway (GATEWAY_PORT ${GATEWAY_PORT}); found: http://localhost:${fake.port}, http_status:404. Use service: http://localhost:${GATEWAY_PORT}\n`,
  );

  writeFileSync(join(dir, 'cloudflared-config.yml'), tunnelTemplate(GATEWAY_PORT, dir));
  const unfinished = await doctor(dir);
  t.match(unfinished.out, `  ✘ ${dir}/cloudflared-config.yml still has placeholders: fill in <tunnel-name>, <tunnel-id>, <hostname>\n`);
});

t.test('with pm2-config.json but no PM2 daemon: says so, starts none', async (t) => {
  const { dir, fake } = await setup(t);
  const config = defaultStackConfig() as Record<string, Record<string, unknown>>;
  config.llama!.args = ['-m', 'model.gguf', '--port', '5857'];
  config.tunnel!.args = ['tunnel', '--config', './cloudflared-config.yml', 'run', 'my-llm'];
  config.tunnel!.command = process.execPath;
  config.llama!.command = process.execPath;
  writeFileSync(join(dir, 'pm2-config.json'), JSON.stringify(config));
  const run = await doctor(dir);
  t.equal(run.code, 1);
  t.match(run.out, `PM2 (${dir}/pm2-config.json, PM2_HOME ${dir}/pm2)\n`);
  t.match(
    run.out,
    `  ✘ port mismatch: LLM_UPSTREAM is ${fake.url} but llama-server is started with --port 5857 (pm2-config.json); make them the same\n`,
  );
  t.match(run.out, `  ✘ ${dir}/dist/server.js does not exist: run \`npm run build\`\n`);
  t.match(
    run.out,
    `  ✘ the PM2 daemon is not running (PM2_HOME ${dir}/pm2): start the stack with \`llm-gateway menu\` (key a) or \`pm2 start ecosystem.config.cjs\`\n`,
  );
  t.notOk(existsSync(join(dir, 'pm2', 'pm2.pid')), 'doctor did not start a PM2 daemon');

  writeFileSync(join(dir, 'pm2-config.json'), '{"llama": {"enabled": "yes"}}');
  const broken = await doctor(dir);
  t.equal(broken.code, 1);
  t.match(broken.out, '  ✘ pm2-config.json: llama.enabled must be true or false, got "yes"\n');
});

t.test('two llama-servers: a section each; one down fails its own section only', async (t) => {
  const { dir, fake: chat } = await setup(t, { modelId: 'qwen-chat', aliases: ['chat', 'assistant'], slots: 4 });
  const embed = await startFakeLlama({ modelId: 'nomic-embed', slots: 1 });
  t.teardown(() => embed.close());
  writeFileSync(
    join(dir, '.env'),
    `LLM_API_KEYS=${KEY_A}\nLLM_UPSTREAM=${chat.url},${embed.url}\nGATEWAY_PORT=${GATEWAY_PORT}\nGATEWAY_DB=./data/gateway.db\n`,
  );
  const section = (out: string, url: string): string => {
    const at = out.indexOf(`llama-server (${url}, called directly)\n`);
    return at < 0 ? '' : out.slice(at, out.indexOf('\n\n', at) + 1);
  };
  const run = await doctor(dir);
  t.equal(run.code, 0, run.out);
  t.match(run.out, `  ✔ valid: GATEWAY_HOST 127.0.0.1, GATEWAY_PORT ${GATEWAY_PORT}, LLM_UPSTREAM ${chat.url}, ${embed.url}\n`);
  t.equal(
    section(run.out, chat.url),
    `llama-server (${chat.url}, called directly)
  ✔ reachable and ready (GET /health → 200)
  ✔ model: qwen-chat (also chat, assistant) (GET /v1/models)
  ✔ 4 slots: 4 requests at once, 2048 tokens of context each (GET /props total_slots, n_ctx; -np, -c), model file tiny.gguf
`,
  );
  t.equal(
    section(run.out, embed.url),
    `llama-server (${embed.url}, called directly)
  ✔ reachable and ready (GET /health → 200)
  ✔ model: nomic-embed (GET /v1/models)
  ✔ 1 slot: 1 request at once, 2048 tokens of context each (GET /props total_slots, n_ctx; -np, -c), model file tiny.gguf
`,
  );
  t.ok(run.out.indexOf(chat.url) < run.out.indexOf(`llama-server (${embed.url}`), "in LLM_UPSTREAM's order");
  t.match(run.out, /\n✔ All 12 checks passed\.\n$/);

  await chat.close();
  const down = await doctor(dir);
  t.equal(down.code, 1);
  t.equal(
    section(down.out, chat.url),
    `llama-server (${chat.url}, called directly)
  ✘ not reachable at ${chat.url} (ECONNREFUSED): is llama-server running, and is LLM_UPSTREAM its address? (llm-gateway menu, key 1)
  – model and slots: skipped, llama-server is not reachable
`,
  );
  t.match(section(down.out, embed.url), '  ✔ model: nomic-embed (GET /v1/models)\n', 'the other one still passes');
  t.match(down.out, /\n✘ 1 of 10 checks failed\.\n$/);
});

const HAS_UPSTREAMS_FILE = Object.values(SETTINGS).some((s) => s.env === 'GATEWAY_UPSTREAMS_FILE');

t.test(
  "an upstreams file: its servers replace LLM_UPSTREAM's, by name, each with its own api_key",
  { skip: HAS_UPSTREAMS_FILE ? false : 'GATEWAY_UPSTREAMS_FILE is not a setting (yet)' },
  async (t) => {
    const { dir, fake } = await setup(t, { apiKey: 'upstream-secret-0123456789' });
    writeFileSync(
      join(dir, '.env'),
      `LLM_API_KEYS=${KEY_A}\nGATEWAY_UPSTREAMS_FILE=./upstreams.json\nGATEWAY_PORT=${GATEWAY_PORT}\nGATEWAY_DB=./data/gateway.db\n`,
    );
    writeFileSync(
      join(dir, 'upstreams.json'),
      JSON.stringify({ upstreams: [{ url: `${fake.url}/`, name: 'gpu-a', api_key: 'upstream-secret-0123456789' }] }),
    );
    const run = await doctor(dir);
    t.equal(run.code, 0, run.out);
    t.match(
      run.out,
      `\nllama-server gpu-a (${fake.url}, called directly)\n  ✔ reachable and ready (GET /health → 200)\n  ✔ model: gpt-oss-20b`,
    );
    t.notMatch(run.out, 'http://127.0.0.1:5857', "LLM_UPSTREAM's default is not asked");
    t.notMatch(run.out, 'upstream-secret');

    writeFileSync(join(dir, 'upstreams.json'), JSON.stringify({ upstreams: [{ url: fake.url, name: 'gpu-a' }] }));
    const noKey = await doctor(dir);
    t.match(
      noKey.out,
      '  ✘ llama-server wants an API key (GET /v1/models → 401): set its "api_key" in GATEWAY_UPSTREAMS_FILE (or LLM_UPSTREAM_API_KEY) to its --api-key\n',
    );

    rmSync(join(dir, 'upstreams.json'));
    const missing = await doctor(dir);
    t.equal(missing.code, 1);
    t.match(missing.out, `Settings (.env and environment)\n  ✘ GATEWAY_UPSTREAMS_FILE ./upstreams.json: ${dir}/upstreams.json not found\n`);
  },
);

/** A stand-in for the running gateway: GET /health answers `body` with `status`. */
async function fakeGateway(t: Teardown, status: number, body: unknown): Promise<number> {
  const server = http.createServer((req, res) => {
    res.writeHead(req.url === '/health' ? status : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify(req.url === '/health' ? body : { error: 'not found' }));
  });
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  t.teardown(() => new Promise<void>((done) => server.close(() => done())));
  return (server.address() as AddressInfo).port;
}

t.test("the running gateway's view: each upstream's state, slots and models from its GET /health", async (t) => {
  const { dir, fake } = await setup(t);
  const port = await fakeGateway(t, 200, {
    status: 'degraded',
    upstreams: [
      { name: 'chat', state: 'ready', slots: 4, models: ['qwen-chat', 'chat'] },
      { name: 'embed', state: 'loading', slots: 1, models: ['nomic-embed'] },
      { name: '127.0.0.1:5859', state: 'down', slots: 4, models: [] },
    ],
  });
  writeFileSync(join(dir, '.env'), `LLM_API_KEYS=${KEY_A}\nLLM_UPSTREAM=${fake.url}\nGATEWAY_PORT=${port}\nGATEWAY_DB=./data/gateway.db\n`);
  writeFileSync(join(dir, 'cloudflared-config.yml'), tunnel(dir, port));
  const run = await doctor(dir);
  t.equal(run.code, 1, 'an upstream the gateway sees down is a failure');
  t.match(
    run.out,
    `Gateway (http://127.0.0.1:${port}/health, its view of the llama-servers)
  ✔ answers GET /health → 200: degraded
  ✔ chat: ready, 4 slots, models qwen-chat, chat
  ⚠ embed: loading, 1 slot, model nomic-embed
  ✘ 127.0.0.1:5859: down, 4 slots

`,
  );

  const old = await fakeGateway(t, 200, { status: 'ok' });
  writeFileSync(join(dir, '.env'), `LLM_API_KEYS=${KEY_A}\nLLM_UPSTREAM=${fake.url}\nGATEWAY_PORT=${old}\nGATEWAY_DB=./data/gateway.db\n`);
  writeFileSync(join(dir, 'cloudflared-config.yml'), tunnel(dir, old));
  const before = await doctor(dir);
  t.equal(before.code, 0, before.out);
  t.match(
    before.out,
    `Gateway (http://127.0.0.1:${old}/health, its view of the llama-servers)
  ✔ answers GET /health → 200: ok
  – it does not list its llama-servers (an older build? npm run build)
`,
  );
});

t.test('usage', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-doctor-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bad = await doctor(dir, {}, ['--bogus']);
  t.equal(bad.code, 2);
  t.match(bad.out, /Unknown option '--bogus'.*\nTry: llm-gateway doctor --help\n/);
  const help = await doctor(dir, {}, ['--help']);
  t.equal(help.code, 0);
  t.match(help.out, /^Usage: llm-gateway doctor \[--config FILE\]/);
});
