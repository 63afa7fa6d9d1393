// pm2-config.json's "llama" as a list (issue 14): each llama-server checked field by field with
// messages naming its index, one PM2 app each (llama-<name> or llama-1, llama-2 …), and the checks
// of their ports against LLM_UPSTREAM's URLs both ways (mismatch, shared port, started elsewhere),
// the tunnel kept away from every one of them.
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { stackFindings, startBlockers, type Finding } from '../../../src/cli/stack/findings.js';
import { ecosystemApps, pm2App } from '../../../src/cli/stack/pm2-apps.js';
import { StackConfigError, defaultStackConfig, loadStackConfig, parseStackConfig } from '../../../src/cli/stack/pm2-config.js';
import { tempDir, type Teardown } from '../../helpers.js';

const ROOT = resolve(fileURLToPath(new URL('../../..', import.meta.url)));
const STAND_IN = join(ROOT, 'test', 'fixtures', 'stand-ins', 'llama-server.mjs');
const ENV = { PATH: process.env.PATH ?? '' };

type Raw = Record<string, unknown>;

/** A chat server and an embeddings server, as the example's comment shows them. */
function twoLlamas(): Raw[] {
  return [
    { name: 'chat', command: STAND_IN, args: ['-m', '/models/chat.gguf', '--host', '127.0.0.1', '--port', '5857', '-np', '4'] },
    { command: STAND_IN, args: ['-m', '/models/embed.gguf', '--embeddings', '--host', '127.0.0.1', '--port', '5858'] },
  ];
}

/** A project folder with .env, pm2-config.json (llama as given, the gateway built, the tunnel off). */
function project(t: Teardown, llama: unknown, dotEnv: string, tunnel?: string): string {
  const dir = tempDir(t);
  writeFileSync(join(dir, '.env'), `LLM_API_KEYS=sk-test-alice-0123456789abcdef\n${dotEnv}`);
  const config = defaultStackConfig() as Record<string, Raw>;
  config.llama = llama as Raw;
  config.gateway!.args = [join(ROOT, 'dist', 'server.js')];
  if (tunnel === undefined) config.tunnel!.enabled = false;
  else {
    config.tunnel!.command = join(ROOT, 'test', 'fixtures', 'stand-ins', 'cloudflared.mjs');
    config.tunnel!.args = ['tunnel', '--config', './cloudflared-config.yml', 'run', 'my-llm'];
    writeFileSync(join(dir, 'cf.json'), '{}');
    writeFileSync(join(dir, 'cloudflared-config.yml'), `tunnel: my-llm\ncredentials-file: ${join(dir, 'cf.json')}\ningress:\n${tunnel}`);
  }
  const file = join(dir, 'pm2-config.json');
  writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

function problemsOf(llama: unknown): string[] {
  try {
    parseStackConfig({ ...defaultStackConfig(), llama }, join(ROOT, 'pm2-config.json'));
  } catch (err) {
    if (err instanceof StackConfigError) return [...err.problems];
    throw err;
  }
  return [];
}

const notOk = (fs: Finding[]): string[] => fs.filter((f) => f.level !== 'ok').map((f) => `${f.level}: ${f.text}`);
const llamaTexts = (fs: Finding[]): string[] => fs.filter((f) => f.topic === 'llama').map((f) => `${f.level}: ${f.text}`);

t.test('the list form: each process a full spec, PM2 names llama-<name> or llama-<n>', async (t) => {
  const stack = parseStackConfig({ ...defaultStackConfig(), llama: twoLlamas() }, join(ROOT, 'pm2-config.json'));
  t.same(
    stack.processes.llama.map((s) => [s.app, s.path, s.enabled, s.args.at(-1)]),
    [
      ['llama-chat', 'llama[0]', true, '4'],
      ['llama-2', 'llama[1]', true, '5858'],
    ],
  );
  t.same(
    stack.apps.map((s) => s.app),
    ['llama-chat', 'llama-2', 'gateway', 'tunnel'],
    'start order: the llama-servers, the gateway, the tunnel',
  );
  t.equal(stack.processes.llama[1]!.cwd, ROOT, 'cwd and env have their defaults in a list too');
  t.same(stack.processes.llama[1]!.env, {});

  const one = parseStackConfig(defaultStackConfig(), join(ROOT, 'pm2-config.json'));
  t.same(
    one.processes.llama.map((s) => [s.app, s.path]),
    [['llama', 'llama']],
    'the object form stays one process called llama',
  );
  const named = parseStackConfig({ ...defaultStackConfig(), llama: { ...twoLlamas()[0] } }, join(ROOT, 'pm2-config.json'));
  t.equal(named.processes.llama[0]!.app, 'llama-chat', 'a name in the object form names its PM2 app too');
});

t.test('the list form: every wrong field named with its index', async (t) => {
  t.same(problemsOf([]), ['llama is an empty list: give it one process or more (or one with "enabled": false to run no llama-server)']);
  t.same(problemsOf([{ command: 'llama-server' }, 'llama-server --port 5858']), [
    'llama[1] must be an object with "command", "args", "cwd", "env" and "enabled", got "llama-server --port 5858"',
  ]);
  t.same(
    problemsOf([
      { name: 'chat', command: 'llama-server', args: ['--port', 5857], port: 5857 },
      { name: 'embed model', enabled: 'yes', args: ['--port', '5858'], env: { LLAMA_ARG_PORT: 5858 } },
      { command: 'llama-server', cwd: './nowhere' },
    ]),
    [
      'llama[0]: unknown field "port" (expected name, enabled, command, args, cwd, env)',
      'llama[0].args[1] must be a string, got 5857 (write "5857" in quotes)',
      'llama[1].name must be a short name of letters, digits, "_" and "." such as "chat" (PM2 calls it llama-<name>), got "embed model"',
      'llama[1].enabled must be true or false, got "yes"',
      'llama[1].command must be the program to run, such as "llama-server", got nothing',
      'llama[1].env.LLAMA_ARG_PORT must be a string, got 5858 (write "5858" in quotes)',
      `llama[2].cwd "./nowhere" is not a folder (${join(ROOT, 'nowhere')})`,
    ],
  );
  t.same(
    problemsOf([
      { command: 'llama-server' },
      { name: '1', command: 'llama-server' },
      { name: 'x', command: 'a' },
      { name: 'x', command: 'b' },
    ]),
    [
      'llama[1]: PM2 would call it llama-1 like llama[0]; give each a different "name"',
      'llama[3]: PM2 would call it llama-x like llama[2]; give each a different "name"',
    ],
  );
  t.same(problemsOf([{ name: 7, command: 'llama-server' }]), [
    'llama[0].name must be a short name of letters, digits, "_" and "." such as "chat" (PM2 calls it llama-<name>), got 7',
  ]);
  t.same(problemsOf(twoLlamas()), [], 'the example is valid');
});

t.test('PM2 apps: one per llama-server, blockers named by app and place', async (t) => {
  const file = project(t, twoLlamas(), 'LLM_UPSTREAM=http://127.0.0.1:5857,http://127.0.0.1:5858\n');
  const stack = loadStackConfig(file);
  const [chat, embed] = stack.processes.llama.map((spec) => pm2App(stack, spec, ENV));
  t.match(chat, {
    name: 'llama-chat',
    script: STAND_IN,
    interpreter: 'none',
    args: ['-m', '/models/chat.gguf', '--host', '127.0.0.1', '--port', '5857', '-np', '4'],
    kill_timeout: 10_000,
    exp_backoff_restart_delay: 1000,
  });
  t.match(embed, {
    name: 'llama-2',
    script: STAND_IN,
    args: ['-m', '/models/embed.gguf', '--embeddings', '--host', '127.0.0.1', '--port', '5858'],
    kill_timeout: 10_000,
  });
  t.same(
    ecosystemApps(file, ENV).map((a) => a.name),
    ['llama-chat', 'llama-2', 'gateway'],
    'ecosystem.config.cjs gets every enabled process (the tunnel is off)',
  );

  const [first, second] = twoLlamas();
  const off = project(t, [first, { ...second, enabled: false }], '');
  t.same(
    ecosystemApps(off, ENV).map((a) => a.name),
    ['llama-chat', 'gateway'],
    'a llama-server with "enabled": false is left out',
  );

  const unfinished = project(t, [first, { ...second, args: ['-m', '<path/to/embed.gguf>', '--port', '5858'] }], '');
  const unfinishedStack = loadStackConfig(unfinished);
  t.same(startBlockers(unfinishedStack, unfinishedStack.processes.llama[1]!, ENV), [
    'fill in <path/to/embed.gguf> in pm2-config.json (llama[1])',
  ]);
  t.throws(() => ecosystemApps(unfinished, ENV), {
    name: 'StackConfigError',
    problems: ['llama-2: fill in <path/to/embed.gguf> in pm2-config.json (llama[1])'],
  });
  const missing = project(t, [first, { ...second, command: 'no-such-llama-server' }], '');
  const missingStack = loadStackConfig(missing);
  t.same(startBlockers(missingStack, missingStack.processes.llama[1]!, ENV), [
    'no-such-llama-server is not in PATH: install it, or set llama[1].command in pm2-config.json to its full path',
  ]);
});

t.test("findings: each llama-server's port against LLM_UPSTREAM's URLs, both ways", async (t) => {
  const both = 'LLM_UPSTREAM=http://127.0.0.1:5857,http://127.0.0.1:5858\n';
  const check = (llama: unknown, dotEnv: string, tunnel?: string): Finding[] =>
    stackFindings(loadStackConfig(project(t, llama, dotEnv, tunnel)), ENV);

  t.same(
    llamaTexts(check(twoLlamas(), both)),
    [
      "ok: llama-chat (llama[0]) port 5857 is LLM_UPSTREAM's http://127.0.0.1:5857",
      "ok: llama-2 (llama[1]) port 5858 is LLM_UPSTREAM's http://127.0.0.1:5858",
    ],
    'everything fits',
  );
  t.same(notOk(check(twoLlamas(), both)), []);

  t.same(notOk(check(twoLlamas(), 'LLM_UPSTREAM=http://127.0.0.1:5857\n')), [
    'fail: port mismatch: llama-2 (llama[1]) is started with --port 5858 (pm2-config.json) but no URL of LLM_UPSTREAM (http://127.0.0.1:5857) has that port; add it to LLM_UPSTREAM or change the port',
  ]);

  const [chat, embed] = twoLlamas();
  const samePort = { ...embed, args: ['-m', '/models/embed.gguf', '--embeddings', '--port', '5857'] };
  t.same(notOk(check([chat, samePort], both)), [
    'fail: llama-chat (llama[0]) and llama-2 (llama[1]) share --port 5857 (pm2-config.json): each llama-server needs its own port',
  ]);
  t.same(
    llamaTexts(check([chat, { ...samePort, enabled: false }], 'LLM_UPSTREAM=http://127.0.0.1:5857\n')),
    ["ok: llama-chat (llama[0]) port 5857 is LLM_UPSTREAM's http://127.0.0.1:5857"],
    'a process that is off holds no port',
  );

  t.same(
    llamaTexts(check(twoLlamas(), 'LLM_UPSTREAM=http://127.0.0.1:5857,http://localhost:5858,http://127.0.0.1:5859,http://10.0.0.7:8080\n')),
    [
      "ok: llama-chat (llama[0]) port 5857 is LLM_UPSTREAM's http://127.0.0.1:5857",
      "ok: llama-2 (llama[1]) port 5858 is LLM_UPSTREAM's http://localhost:5858",
      "ok: LLM_UPSTREAM's http://127.0.0.1:5859 is not started by pm2-config.json: started elsewhere",
    ],
    'a local URL nothing here starts is said to be started elsewhere; another machine is not asked about',
  );

  t.same(notOk(check(twoLlamas(), 'LLM_UPSTREAM=http://10.0.0.7:5857,http://10.0.0.8:5858\n')), [
    'warn: LLM_UPSTREAM is http://10.0.0.7:5857,http://10.0.0.8:5858 (another machine), but pm2-config.json also starts llama-chat (llama[0]) here on port 5857',
    'warn: LLM_UPSTREAM is http://10.0.0.7:5857,http://10.0.0.8:5858 (another machine), but pm2-config.json also starts llama-2 (llama[1]) here on port 5858',
  ]);

  const open = { ...embed, args: ['-m', '/models/embed.gguf', '--host', '0.0.0.0', '--port', '5858'] };
  t.same(notOk(check([chat, open], both)), [
    'warn: llama-2 (llama[1]) listens on 0.0.0.0: anyone on your network can use it without a key; --host 127.0.0.1 keeps it behind the gateway',
  ]);

  // One llama-server (the object form) and two URLs: the second is started elsewhere.
  t.same(llamaTexts(check({ ...chat, name: undefined }, both)), [
    "ok: llama-server port 5857 is LLM_UPSTREAM's http://127.0.0.1:5857",
    "ok: LLM_UPSTREAM's http://127.0.0.1:5858 is not started by pm2-config.json: started elsewhere",
  ]);

  // The tunnel may point at none of them.
  t.same(
    notOk(
      check(
        twoLlamas(),
        `${both}GATEWAY_PORT=8787\n`,
        '  - hostname: api.example.com\n    service: http://localhost:8787\n  - hostname: raw.example.com\n    service: http://localhost:5858\n  - service: http_status:404\n',
      ),
    ),
    [
      "fail: ingress raw.example.com → http://localhost:5858 goes straight to llama-server (port 5858), around the gateway's keys: point it at http://localhost:8787",
    ],
  );
});
