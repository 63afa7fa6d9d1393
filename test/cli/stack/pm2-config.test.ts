// pm2-config.json and what is built from it, without PM2: every wrong field named, the PM2 app
// definitions (the gateway's wait_ready and kill_timeout), ecosystem.config.cjs, the cloudflared
// template (`llm-gateway tunnel init`, never overwriting) and the consistency checks between
// llama-server's port, LLM_UPSTREAM, the tunnel's ingress and GATEWAY_PORT.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { stackFindings, startBlockers, type Finding } from '../../../src/cli/stack/findings.js';
import { ecosystemApps, pm2App } from '../../../src/cli/stack/pm2-apps.js';
import {
  StackConfigError,
  defaultStackConfig,
  defaultStackConfigText,
  loadStackConfig,
  parseStackConfig,
  placeholdersOf,
} from '../../../src/cli/stack/pm2-config.js';
import { llamaListen } from '../../../src/cli/stack/settings.js';
import { ensureTunnelTemplate, parseTunnelFile, tunnelTemplate } from '../../../src/cli/stack/tunnel-file.js';
import { tempDir, type Teardown } from '../../helpers.js';

const ROOT = resolve(fileURLToPath(new URL('../../..', import.meta.url)));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const STAND_INS = join(ROOT, 'test', 'fixtures', 'stand-ins');

/** A project folder whose config works as written: node stand-ins instead of llama-server and cloudflared. */
function project(
  t: Teardown,
  edit: (c: Record<string, Record<string, unknown>>) => void = () => {},
  dotEnv = '',
): { dir: string; file: string } {
  const dir = tempDir(t);
  mkdirSync(join(dir, 'cf'));
  writeFileSync(join(dir, 'cf', 'abc.json'), '{}');
  writeFileSync(join(dir, '.env'), `LLM_API_KEYS=sk-test-alice-0123456789abcdef\n${dotEnv}`);
  const config = defaultStackConfig() as Record<string, Record<string, unknown>>;
  config.llama!.command = join(STAND_INS, 'llama-server.mjs');
  config.llama!.args = ['-m', '/models/tiny.gguf', '--port', '5857'];
  config.gateway!.args = [join(ROOT, 'dist', 'server.js')];
  config.tunnel!.command = join(STAND_INS, 'cloudflared.mjs');
  config.tunnel!.args = ['tunnel', '--config', './cloudflared-config.yml', 'run', 'my-llm'];
  edit(config);
  const file = join(dir, 'pm2-config.json');
  writeFileSync(file, JSON.stringify(config, null, 2));
  writeFileSync(join(dir, 'cloudflared-config.yml'), tunnelYaml(dir, 8787));
  return { dir, file };
}

function tunnelYaml(dir: string, port: number, extra = ''): string {
  return `tunnel: my-llm\ncredentials-file: ${join(dir, 'cf', 'abc.json')}\ningress:\n  - hostname: api.example.com\n    service: http://localhost:${port}\n${extra}  - service: http_status:404\n`;
}

function problemsOf(raw: unknown, file = join(ROOT, 'pm2-config.json')): string[] {
  try {
    parseStackConfig(raw, file);
  } catch (err) {
    if (err instanceof StackConfigError) return [...err.problems];
    throw err;
  }
  return [];
}

/** The gateway's PM2 app as built from a pm2-config.json. */
function gatewayApp(file: string, env: Record<string, string | undefined>): ReturnType<typeof pm2App> {
  const stack = loadStackConfig(file);
  return pm2App(stack, stack.processes.gateway, env);
}

const bad = (fs: Finding[]): string[] => fs.filter((f) => f.level !== 'ok').map((f) => `${f.level}: ${f.text}`);
const ENV = { PATH: process.env.PATH ?? '' };

t.test('pm2-config.example.json is the documented default, and valid', async (t) => {
  const text = readFileSync(join(ROOT, 'pm2-config.example.json'), 'utf8');
  t.equal(text, defaultStackConfigText(), 'the committed example is what the menu writes on first run');
  const stack = parseStackConfig(JSON.parse(text), join(ROOT, 'pm2-config.json'));
  t.same(stack.processes.llama[0]!.args, ['-m', '<path/to/model.gguf>', '--host', '127.0.0.1', '--port', '5857', '-np', '4']);
  t.equal(stack.processes.llama[0]!.command, 'llama-server');
  t.equal(stack.processes.llama.length, 1, 'one llama-server, PM2 calls it llama');
  t.equal(stack.processes.llama[0]!.app, 'llama');
  t.same([stack.processes.gateway.command, ...stack.processes.gateway.args], ['node', 'dist/server.js']);
  t.same(
    [stack.processes.tunnel.command, ...stack.processes.tunnel.args],
    ['cloudflared', 'tunnel', '--config', './cloudflared-config.yml', 'run', '<tunnel-name>'],
  );
  t.equal(stack.processes.gateway.cwd, ROOT, 'cwd "." is the folder of pm2-config.json');
  t.same(placeholdersOf(stack.processes.llama[0]!), ['<path/to/model.gguf>']);
  t.same(placeholdersOf(stack.processes.tunnel), ['<tunnel-name>']);
  t.same(placeholdersOf(stack.processes.gateway), []);
  t.same(llamaListen(stack.processes.llama[0]!), { host: '127.0.0.1', port: 5857 });
  const gitignore = readFileSync(join(ROOT, '.gitignore'), 'utf8').split('\n');
  t.ok(gitignore.includes('pm2-config.json'), "the real pm2-config.json is the user's: git ignores it");
  t.ok(gitignore.includes('cloudflared-config.yml'));
});

t.test('every wrong field is named, all at once', async (t) => {
  t.match(problemsOf([]), [/must be a JSON object with "llama", "gateway" and "tunnel", got a list/]);
  const base = defaultStackConfig();
  const problems = problemsOf({
    ...base,
    tunnle: {},
    llama: {
      enabled: 'yes',
      command: 'llama-server -m model.gguf',
      args: ['-m', 5857],
      cwd: './nowhere',
      env: { PORT: 5857, 'BAD-NAME': 'x' },
      restart: true,
    },
    gateway: { command: '', args: 'dist/server.js' },
    tunnel: undefined,
  });
  t.match(problems, [
    /^unknown entry "tunnle" \(expected llama, gateway, tunnel\)$/,
    /^llama: unknown field "restart" \(expected name, enabled, command, args, cwd, env\)$/,
    /^llama\.enabled must be true or false, got "yes"$/,
    /^llama\.command "llama-server -m model\.gguf" contains spaces: put only the program in "command" and each argument as its own string in "args"$/,
    /^llama\.args\[1\] must be a string, got 5857 \(write "5857" in quotes\)$/,
    /^llama\.cwd "\.\/nowhere" is not a folder/,
    /^llama\.env\.PORT must be a string, got 5857 \(write "5857" in quotes\)$/,
    /^llama\.env: "BAD-NAME" is not a valid variable name$/,
    /^gateway\.command must be the program to run, such as "node", got ""$/,
    /^gateway\.args must be a list of strings such as \["--port", "5857"\], got "dist\/server\.js"$/,
    /^tunnel must be an object with "command", "args", "cwd", "env" and "enabled", got undefined$/,
  ]);
  t.equal(problems.length, 11);
  const { tunnel: _tunnel, ...withoutTunnel } = base;
  t.same(problemsOf(withoutTunnel), ['"tunnel" is missing (set "enabled": false in it to leave tunnel out)']);
  t.same(problemsOf({ ...base, gateway: { command: 'node' } }), [], 'args, cwd, env and enabled have defaults');
});

t.test('loadStackConfig: missing file, broken JSON', async (t) => {
  const dir = tempDir(t);
  const missing = t.throws(() => loadStackConfig(join(dir, 'pm2-config.json'))) as unknown as StackConfigError;
  t.ok(missing instanceof StackConfigError && missing.missing);
  t.match(missing.message, /pm2-config\.json: not found: cp pm2-config\.example\.json pm2-config\.json, then fill in the model path/);
  writeFileSync(join(dir, 'pm2-config.json'), '{ "llama": { "command": "llama-server", } }');
  t.throws(() => loadStackConfig(join(dir, 'pm2-config.json')), {
    name: 'StackConfigError',
    message: /pm2-config\.json: is not valid JSON: /,
  });
});

t.test('PM2 app definitions', async (t) => {
  const { file } = project(t, (c) => {
    c.gateway!.args = ['--max-old-space-size=512', join(ROOT, 'dist', 'server.js'), '--flag'];
    c.llama!.command = 'llama-server';
  });
  const stack = loadStackConfig(file);
  const llama = pm2App(stack, stack.processes.llama[0]!, ENV);
  t.match(llama, {
    name: 'llama',
    script: 'llama-server',
    interpreter: 'none',
    args: ['-m', '/models/tiny.gguf', '--port', '5857'],
    exec_mode: 'fork',
    autorestart: true,
    kill_timeout: 10_000,
    exp_backoff_restart_delay: 1000,
    cwd: stack.root,
  });
  t.notOk('wait_ready' in llama);
  const bin = join(stack.root, 'bin');
  mkdirSync(bin);
  symlinkSync(join(STAND_INS, 'llama-server.mjs'), join(bin, 'llama-server'));
  t.equal(
    pm2App(stack, stack.processes.llama[0]!, { PATH: `${bin}:${ENV.PATH}` }).script,
    join(bin, 'llama-server'),
    'a program in PATH is given to PM2 as the path found',
  );

  const gateway = pm2App(stack, stack.processes.gateway, ENV);
  t.match(gateway, {
    name: 'gateway',
    interpreter: /\/node$/,
    node_args: ['--max-old-space-size=512'],
    script: join(ROOT, 'dist', 'server.js'),
    args: ['--flag'],
  });
  t.equal(gateway.wait_ready, true, 'the gateway tells PM2 when it listens');
  t.equal(gateway.listen_timeout, 15_000);
  t.equal(gateway.kill_timeout, 35_000, 'longer than the default GATEWAY_SHUTDOWN_GRACE_MS (30000)');
  t.equal(
    pm2App(stack, stack.processes.gateway, { ...ENV, GATEWAY_SHUTDOWN_GRACE_MS: '60000' }).kill_timeout,
    65_000,
    'follows the setting',
  );

  const tunnel = pm2App(stack, stack.processes.tunnel, ENV);
  t.match(tunnel, {
    script: join(STAND_INS, 'cloudflared.mjs'),
    interpreter: 'none',
    kill_timeout: 35_000,
    args: ['tunnel', '--config', './cloudflared-config.yml', 'run', 'my-llm'],
  });
});

t.test("the gateway's grace comes from .env in its folder, pm2-config.json's env over the environment", async (t) => {
  const { file } = project(t, () => {}, 'GATEWAY_SHUTDOWN_GRACE_MS=45000\n');
  t.equal(gatewayApp(file, ENV).kill_timeout, 50_000, '.env');
  t.equal(gatewayApp(file, { ...ENV, GATEWAY_SHUTDOWN_GRACE_MS: '20000' }).kill_timeout, 25_000, 'environment over .env');
  const { file: withEnv } = project(
    t,
    (c) => (c.gateway!.env = { GATEWAY_SHUTDOWN_GRACE_MS: '10000' }),
    'GATEWAY_SHUTDOWN_GRACE_MS=45000\n',
  );
  t.equal(gatewayApp(withEnv, { ...ENV, GATEWAY_SHUTDOWN_GRACE_MS: '20000' }).kill_timeout, 15_000, 'gateway.env over both');
});

t.test('what stops a process from starting is said before PM2 is asked', async (t) => {
  const example = parseStackConfig(defaultStackConfig(), join(tempDir(t), 'pm2-config.json'));
  t.match(startBlockers(example, example.processes.llama[0]!, { PATH: '' }), [
    /^fill in <path\/to\/model\.gguf> in pm2-config\.json \(llama\)$/,
    /^llama-server is not in PATH: install it, or set llama\.command in pm2-config\.json to its full path$/,
  ]);
  t.match(startBlockers(example, example.processes.gateway, ENV), [/dist\/server\.js does not exist: run `npm run build`$/]);
  t.match(startBlockers(example, example.processes.tunnel, { PATH: '' }), [
    /fill in <tunnel-name>/,
    /cloudflared is not in PATH/,
    /cloudflared-config\.yml does not exist \(`llm-gateway tunnel init` writes a template\)$/,
  ]);

  const { file } = project(t, () => {}, 'GATEWAY_PORT=eighty\n');
  const stack = loadStackConfig(file);
  t.same(startBlockers(stack, stack.processes.llama[0]!, ENV), []);
  t.same(startBlockers(stack, stack.processes.gateway, ENV), [
    'gateway setting: GATEWAY_PORT must be a port number from 1 to 65535, got "eighty"',
  ]);
  writeFileSync(join(stack.root, 'cloudflared-config.yml'), tunnelTemplate(8787));
  t.match(startBlockers(stack, stack.processes.tunnel, ENV), [
    /^fill in <tunnel-name>, <tunnel-id>, <hostname> in .*cloudflared-config\.yml$/,
  ]);
});

t.test('ecosystem.config.cjs: the same apps, from the same file', async (t) => {
  const { file } = project(t, (c) => (c.tunnel!.enabled = false));
  const load = (): { apps: unknown[] } => {
    const require = createRequire(import.meta.url);
    const path = join(ROOT, 'ecosystem.config.cjs');
    delete require.cache[path];
    return require(path) as { apps: unknown[] };
  };
  const before = process.env.LLM_GATEWAY_PM2_CONFIG;
  t.teardown(() => {
    if (before === undefined) delete process.env.LLM_GATEWAY_PM2_CONFIG;
    else process.env.LLM_GATEWAY_PM2_CONFIG = before;
  });
  process.env.LLM_GATEWAY_PM2_CONFIG = file;
  const { apps } = load();
  const stack = loadStackConfig(file);
  t.same(
    apps,
    [pm2App(stack, stack.processes.llama[0]!, process.env), pm2App(stack, stack.processes.gateway, process.env)],
    'enabled processes only, defined as the menu defines them',
  );
  t.same(ecosystemApps(file, process.env), apps);

  const { file: unfinished } = project(t, (c) => (c.llama!.args = ['-m', '<path/to/model.gguf>']));
  process.env.LLM_GATEWAY_PM2_CONFIG = unfinished;
  t.throws(load, {
    message: /ecosystem\.config\.cjs: .*pm2-config\.json:\n {2}- llama: fill in <path\/to\/model\.gguf> in pm2-config\.json \(llama\)/,
  });
});

t.test('tunnel template: written inside the project when missing, never overwritten', async (t) => {
  const { file, dir } = project(t, () => {}, 'GATEWAY_PORT=9123\n');
  rmSync(join(dir, 'cloudflared-config.yml'));
  const stack = loadStackConfig(file);
  const first = ensureTunnelTemplate(stack, 9123);
  t.same(first, { status: 'written', path: join(dir, 'cloudflared-config.yml') });
  const text = readFileSync(join(dir, 'cloudflared-config.yml'), 'utf8');
  t.match(text, /^tunnel: <tunnel-name>$/m);
  t.match(text, /^credentials-file: .*\/\.cloudflared\/<tunnel-id>\.json$/m);
  t.match(text, /^ {2}- hostname: <hostname>\n {4}service: http:\/\/localhost:9123$/m, 'ingress to the gateway');
  t.match(text, /^ {2}- service: http_status:404\n$/m, 'the final catch-all rule last');
  t.same(parseTunnelFile(text).ingress, [{ hostname: '<hostname>', service: 'http://localhost:9123' }, { service: 'http_status:404' }]);

  writeFileSync(join(dir, 'cloudflared-config.yml'), 'mine\n');
  t.same(ensureTunnelTemplate(stack, 9123), { status: 'exists', path: join(dir, 'cloudflared-config.yml') });
  t.equal(readFileSync(join(dir, 'cloudflared-config.yml'), 'utf8'), 'mine\n', 'an existing file is left alone');

  const outside = join(tempDir(t), 'cloudflared.yml');
  const { file: other } = project(t, (c) => (c.tunnel!.args = ['tunnel', '--config', outside, 'run', 'my-llm']));
  t.same(ensureTunnelTemplate(loadStackConfig(other), 8787), { status: 'outside', path: outside });
  t.notOk(existsSync(outside), 'a path outside the project is not written');
});

t.test('reading a cloudflared config', async (t) => {
  const file = parseTunnelFile(`# comment
tunnel: "6ff42ae2-765d-4adf-8112-31c55c1551ef"
credentials-file: '/root/.cloudflared/6ff42ae2.json'   # trailing comment
originRequest:
  connectTimeout: 30s
ingress:
  - hostname: api.example.com
    service: http://localhost:8787
    originRequest:
      service: http://ignored:1
      noTLSVerify: true
  - hostname: chat.example.com
    path: /v1
    service: http://127.0.0.1:8787
  - service: http_status:404
`);
  t.same(file, {
    tunnel: '6ff42ae2-765d-4adf-8112-31c55c1551ef',
    credentialsFile: '/root/.cloudflared/6ff42ae2.json',
    ingress: [
      { hostname: 'api.example.com', service: 'http://localhost:8787' },
      { hostname: 'chat.example.com', path: '/v1', service: 'http://127.0.0.1:8787' },
      { service: 'http_status:404' },
    ],
  });
});

t.test('consistency: llama-server port vs LLM_UPSTREAM, ingress vs GATEWAY_PORT', async (t) => {
  const check = (edit: (c: Record<string, Record<string, unknown>>) => void, dotEnv = '', yaml?: (dir: string) => string): string[] => {
    const { file, dir } = project(t, edit, dotEnv);
    if (yaml !== undefined) writeFileSync(join(dir, 'cloudflared-config.yml'), yaml(dir));
    return bad(stackFindings(loadStackConfig(file), ENV));
  };
  t.same(
    check(() => {}, 'LLM_UPSTREAM=http://127.0.0.1:5857\n'),
    [],
    'everything fits: no warning',
  );
  const ok = stackFindings(loadStackConfig(project(t).file), ENV).map((f) => f.text);
  t.ok(ok.includes('llama-server port 5857 matches LLM_UPSTREAM'));

  t.same(
    check(() => {}, 'LLM_UPSTREAM=http://127.0.0.1:8080\n'),
    [
      'fail: port mismatch: LLM_UPSTREAM is http://127.0.0.1:8080 but llama-server is started with --port 5857 (pm2-config.json); make them the same',
    ],
  );
  t.same(
    check((c) => (c.llama!.args = ['-m', 'x.gguf'])),
    [
      'fail: port mismatch: LLM_UPSTREAM is http://127.0.0.1:5857 but llama-server is started with --port 8080 (pm2-config.json); make them the same',
    ],
    "no --port: llama-server's own default, 8080",
  );
  t.same(
    check((c) => {
      c.llama!.args = ['-m', 'x.gguf'];
      c.llama!.env = { LLAMA_ARG_PORT: '5857' };
    }),
    [],
    'llama-server also reads LLAMA_ARG_PORT',
  );
  t.same(
    check((c) => (c.llama!.args = ['-m', 'x.gguf', '--host', '0.0.0.0', '--port=5857'])),
    [
      'warn: llama-server listens on 0.0.0.0: anyone on your network can use it without a key; --host 127.0.0.1 keeps it behind the gateway',
    ],
  );
  t.same(
    check(() => {}, 'LLM_UPSTREAM=http://10.0.0.5:5857\n'),
    ['warn: LLM_UPSTREAM is http://10.0.0.5:5857 (another machine), but pm2-config.json also starts llama-server here on port 5857'],
  );

  t.match(
    check(() => {}, 'GATEWAY_PORT=9000\n'),
    [
      /^fail: no ingress rule points at the gateway \(GATEWAY_PORT 9000\); found: http:\/\/localhost:8787, http_status:404\. Use service: http:\/\/localhost:9000$/,
    ],
  );
  t.match(
    check(
      () => {},
      '',
      (dir) => tunnelYaml(dir, 8787, '  - hostname: raw.example.com\n    service: http://localhost:5857\n'),
    ),
    [/^fail: ingress raw\.example\.com → http:\/\/localhost:5857 goes straight to llama-server \(port 5857\), around the gateway's keys/],
  );
  t.match(
    check(
      () => {},
      '',
      (dir) => tunnelYaml(dir, 8787).replace('  - service: http_status:404\n', ''),
    ),
    [/^fail: the last ingress rule must match everything, e\.g\. "- service: http_status:404"/],
  );
  t.match(
    check((c) => (c.tunnel!.args = ['tunnel', '--config', './cloudflared-config.yml', 'run', 'other'])),
    [/^warn: pm2-config\.json runs tunnel "other" but cloudflared-config\.yml says tunnel: my-llm/],
  );
  t.match(
    check(
      () => {},
      '',
      (dir) => tunnelYaml(dir, 8787).replace('abc.json', 'missing.json'),
    ),
    [/^fail: credentials file .*missing\.json not found: `cloudflared tunnel create <name>` writes it$/],
  );
  t.same(
    check((c) => (c.tunnel!.enabled = false), 'GATEWAY_PORT=9000\n'),
    [],
    'a tunnel that is off is not checked',
  );
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], cwd: string, env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd,
      env: { PATH: process.env.PATH ?? '', HOME: cwd, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 15_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

t.test('llm-gateway tunnel init', async (t) => {
  const dir = tempDir(t);
  writeFileSync(join(dir, '.env'), 'GATEWAY_PORT=9321\n');
  const first = await cli(['tunnel', 'init'], dir);
  t.equal(first.code, 0, first.stderr);
  t.match(first.stdout, /^Wrote \.\/cloudflared-config\.yml\. Fill in:\n {2}<tunnel-name> .*\n {2}<tunnel-id> .*\n {2}<hostname> /);
  const text = readFileSync(join(dir, 'cloudflared-config.yml'), 'utf8');
  t.equal(text, tunnelTemplate(9321, dir), 'the ingress port is GATEWAY_PORT; the credentials folder is in $HOME');

  writeFileSync(join(dir, 'cloudflared-config.yml'), 'tunnel: mine\n');
  const again = await cli(['tunnel', 'init'], dir);
  t.equal(again.code, 0);
  t.match(again.stdout, /\.\/cloudflared-config\.yml already exists; left as it is/);
  t.equal(readFileSync(join(dir, 'cloudflared-config.yml'), 'utf8'), 'tunnel: mine\n', 'never overwritten');

  const custom = await cli(['tunnel', 'init', '--file', 'tunnels/home.yml'], dir);
  t.equal(custom.code, 1, 'no folder to write into');
  mkdirSync(join(dir, 'tunnels'));
  t.equal((await cli(['tunnel', 'init', '--file', 'tunnels/home.yml'], dir)).code, 0);
  t.ok(existsSync(join(dir, 'tunnels', 'home.yml')));

  const usage = await cli(['tunnel', 'start'], dir);
  t.equal(usage.code, 2);
  t.match(usage.stderr, /unknown action "start"\nTry: llm-gateway tunnel --help/);
});

t.test('llm-gateway tunnel init follows pm2-config.json', async (t) => {
  const { dir, file } = project(
    t,
    (c) => (c.tunnel!.args = ['tunnel', '--config', 'cf/tunnel.yml', 'run', 'my-llm']),
    'GATEWAY_PORT=9555\n',
  );
  const run = await cli(['tunnel', 'init'], dir);
  t.equal(run.code, 0, run.stderr);
  t.match(readFileSync(join(dir, 'cf', 'tunnel.yml'), 'utf8'), /service: http:\/\/localhost:9555\n/);
  t.ok(loadStackConfig(file));

  const outside = join(tempDir(t), 'elsewhere.yml');
  const { dir: other } = project(t, (c) => (c.tunnel!.args = ['tunnel', '--config', outside, 'run', 'my-llm']));
  const refused = await cli(['tunnel', 'init'], other);
  t.equal(refused.code, 1);
  t.match(refused.stderr, /the tunnel's --config .*elsewhere\.yml is outside the project/);
  t.notOk(existsSync(outside));

  const { dir: broken } = project(t, (c) => (c.llama!.enabled = 'no'));
  const wrong = await cli(['tunnel', 'init'], broken);
  t.equal(wrong.code, 1);
  t.match(wrong.stderr, /pm2-config\.json: llama\.enabled must be true or false, got "no"/);
});
