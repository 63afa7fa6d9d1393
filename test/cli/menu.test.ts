// The PM2 menu as a person uses it: keys typed into its input, what appears on its screen, and what
// really runs. Each test has its own PM2_HOME in a temp folder (never ~/.pm2) and kills the daemon
// it started, then checks with `ps` that nothing of it is left. llama-server and cloudflared are
// played by small node scripts (test/fixtures/stand-ins/); the gateway is the real dist/server.js.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { PassThrough } from 'node:stream';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { runMenu } from '../../src/cli/menu.js';
import { Pm2, daemonRunning } from '../../src/cli/pm2.js';
import { defaultStackConfig } from '../../src/cli/stack/pm2-config.js';
import { tunnelTemplate } from '../../src/cli/stack/tunnel-file.js';
import { KEY_A, freePort, until, type Teardown } from '../helpers.js';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');
const SERVER = join(ROOT, 'dist', 'server.js');
const PM2_CLI = join(ROOT, 'node_modules', 'pm2', 'bin', 'pm2');
const STAND_INS = join(ROOT, 'test', 'fixtures', 'stand-ins');
const WAIT_MS = 20_000;

if (!existsSync(CLI) || !existsSync(SERVER)) throw new Error('dist/ is missing: build first (npx tsc -p tsconfig.json; npm test does it)');

interface Project {
  readonly dir: string;
  readonly home: string;
  readonly bin: string;
  readonly config: string;
  readonly llamaPort: number;
  readonly gatewayPort: number;
  /** PATH with llama-server and cloudflared (the stand-ins) first. */
  readonly path: string;
}

interface ProjectOptions {
  /** Write pm2-config.json and cloudflared-config.yml ready to run (default); false: first run. */
  readonly ready?: boolean;
  readonly dotEnv?: string;
}

/**
 * A project folder as a self-hoster has it: .env, pm2-config.json with the example's commands
 * (`llama-server`, `cloudflared`, found in PATH as the stand-ins), a filled-in cloudflared config,
 * and a private PM2_HOME. At teardown the daemon is killed and `ps` must show nothing left of it.
 */
async function project(t: Teardown, opts: ProjectOptions = {}): Promise<Project> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-menu-'));
  const home = join(dir, 'pm2');
  const bin = join(dir, 'bin');
  mkdirSync(bin);
  symlinkSync(join(STAND_INS, 'llama-server.mjs'), join(bin, 'llama-server'));
  symlinkSync(join(STAND_INS, 'cloudflared.mjs'), join(bin, 'cloudflared'));
  const [llamaPort, gatewayPort] = [await freePort(), await freePort()];
  writeFileSync(
    join(dir, '.env'),
    opts.dotEnv ??
      `LLM_API_KEYS=${KEY_A}\nLLM_UPSTREAM=http://127.0.0.1:${llamaPort}\nGATEWAY_PORT=${gatewayPort}\nGATEWAY_DB=./data/gateway.db\n`,
  );
  const config = join(dir, 'pm2-config.json');
  if (opts.ready !== false) {
    const c = defaultStackConfig() as Record<string, Record<string, unknown>>;
    c.llama!.args = ['-m', '/models/tiny.gguf', '--host', '127.0.0.1', '--port', String(llamaPort), '-np', '2', '-a', 'tiny'];
    c.gateway!.args = [SERVER];
    c.tunnel!.args = ['tunnel', '--config', './cloudflared-config.yml', 'run', 'my-llm'];
    writeFileSync(config, JSON.stringify(c, null, 2));
    mkdirSync(join(dir, 'cf'));
    writeFileSync(join(dir, 'cf', 'tunnel-id.json'), '{}');
    writeFileSync(
      join(dir, 'cloudflared-config.yml'),
      tunnelTemplate(gatewayPort, dir)
        .replace('tunnel: <tunnel-name>', 'tunnel: my-llm')
        .replace(/credentials-file: .*/, `credentials-file: ${join(dir, 'cf', 'tunnel-id.json')}`)
        .replace('- hostname: <hostname>', '- hostname: api.example.com'),
    );
  }
  t.teardown(async () => {
    await killDaemon(home);
    rmSync(dir, { recursive: true, force: true });
  });
  return { dir, home, bin, config, llamaPort, gatewayPort, path: `${bin}:${process.env.PATH ?? ''}` };
}

/** `pm2 kill` for this PM2_HOME through the programmatic API, then: nothing of it may be running. */
async function killDaemon(home: string): Promise<void> {
  if (daemonRunning(home)) {
    const pm2 = await Pm2.connect(home);
    const pids = (await pm2.list()).flatMap((p) => (p.pid === null ? [] : [p.pid]));
    await pm2.killDaemon();
    await until('the processes PM2 ran to end', () => pids.every((pid) => !alive(pid)), WAIT_MS, 50);
  }
  await until(`no process of ${home} in ps`, () => !psShows(home), WAIT_MS, 50);
}

async function answers(url: string): Promise<boolean> {
  try {
    return (await fetch(url)).status === 200;
  } catch {
    return false;
  }
}

function alive(pid: number): boolean {
  const stat = spawnSync('ps', ['-o', 'stat=', '-p', String(pid)], { encoding: 'utf8' }).stdout.trim();
  return stat !== '' && !stat.startsWith('Z'); // a zombie has ended; its parent has not reaped it yet
}

function psShows(text: string): boolean {
  return spawnSync('ps', ['-eo', 'stat=,args='], { encoding: 'utf8' })
    .stdout.split('\n')
    .some((line) => line.includes(text) && !line.trim().startsWith('Z'));
}

/** Text written so far, and a wait for a pattern in what comes after a mark. */
class Transcript {
  text = '';

  mark(): number {
    return this.text.length;
  }

  async waitFor(pattern: RegExp, from = 0, ms = WAIT_MS): Promise<string> {
    try {
      await until(String(pattern), () => pattern.test(this.text.slice(from)), ms, 50);
    } catch (err) {
      throw new Error(`${(err as Error).message}; the screen after the mark:\n${this.text.slice(from)}`);
    }
    return this.text.slice(from);
  }
}

interface MenuDriver {
  readonly screen: Transcript;
  /** Types keys (each line is read as keys) and returns the mark before what they cause. */
  type(keys: string): number;
  /** The next whole menu screen after `from` (it ends with the prompt). */
  nextScreen(from: number): Promise<string>;
  readonly done: Promise<number>;
}

const PROMPT = /q quit\n> $/;

/** runMenu in this process, its input and output being streams the test holds. */
function driveMenu(t: Teardown, p: Project, env: Record<string, string> = {}): MenuDriver {
  const input = new PassThrough();
  const output = new PassThrough();
  const screen = new Transcript();
  output.on('data', (d: Buffer) => (screen.text += d.toString('utf8')));
  const done = runMenu({
    input,
    output,
    pm2Home: p.home,
    configPath: p.config,
    env: { PATH: p.path, HOME: p.dir, ...env },
    settleMs: 400,
    color: false,
  });
  t.teardown(async () => {
    input.end();
    await done.catch(() => 0);
  });
  return {
    screen,
    done,
    type(keys) {
      const from = screen.mark();
      input.write(`${keys}\n`);
      return from;
    },
    nextScreen: (from) => screen.waitFor(PROMPT, from),
  };
}

/** The status table's row for a process: [name, state, pid, uptime, restarts, memory, cpu]. */
function row(screenText: string, name: string): string[] {
  const tables = screenText.split('NAME').slice(1);
  const last = tables[tables.length - 1] ?? '';
  const line = last.split('\n').find((l) => l.trimStart().startsWith(`${name} `)) ?? '';
  return line.trim().split(/\s{2,}/);
}

t.test('a starts all three, 9 shows the gateway log, d runs doctor, k stops them all', async (t) => {
  const p = await project(t);
  const menu = driveMenu(t, p);
  const first = await menu.nextScreen(0);
  t.match(first, /LLM Gateway · PM2 menu/);
  t.same(row(first, 'llama').slice(0, 2), ['llama', 'not started']);
  t.match(first, /a\/7 start all {6}1 start llama {5}4 stop llama {5}l restart llama/);
  t.notMatch(first, /[✘⚠]/, 'a consistent set-up shows no warning');

  let from = menu.type('a');
  let screen = await menu.nextScreen(from);
  t.match(
    screen,
    /Starting llama…\nStarting gateway…\nStarting tunnel…\n✔ llama online \(pid \d+\)\n✔ gateway online \(pid \d+\)\n✔ tunnel online \(pid \d+\)\n/,
  );
  for (const name of ['llama', 'gateway', 'tunnel']) {
    const [n, state, pid, uptime, restarts, memory, cpu] = row(screen, name);
    t.equal(n, name);
    t.equal(state, 'online', `${name} online in the table`);
    t.match(pid, /^\d+$/);
    t.match(uptime, /^\d+s$/);
    t.equal(restarts, '0');
    t.match(memory, /^[\d.]+ (KB|MB|GB)$/);
    t.match(cpu, /^\d+(\.\d+)?%$/);
  }
  t.match(
    screen,
    new RegExp(
      `llama-server  http://127\\.0\\.0\\.1:${p.llamaPort} +ready · tiny · 2 slots\n  gateway       http://127\\.0\\.0\\.1:${p.gatewayPort} +answering\n`,
    ),
  );

  // What really runs: PM2's own list, and the gateway answering in front of the stand-in.
  const pm2 = await Pm2.connect(p.home);
  const states = await pm2.list();
  await pm2.disconnect();
  t.same(states.map((s) => [s.name, s.status]).sort(), [
    ['gateway', 'online'],
    ['llama', 'online'],
    ['tunnel', 'online'],
  ]);
  const models = await fetch(`http://127.0.0.1:${p.gatewayPort}/v1/models`, { headers: { authorization: `Bearer ${KEY_A}` } });
  t.equal(models.status, 200);
  t.match(await models.json(), { data: [{ id: 'tiny' }] }, 'the gateway forwards to the llama-server PM2 started');

  from = menu.type('9');
  screen = await menu.nextScreen(from);
  t.match(screen, new RegExp(`── gateway: last 20 lines of ${p.home}/logs/gateway-out\\.log\n`));
  t.match(screen, /✅ LLM Gateway starting with config:\n {2}- Port: \d+\n/);
  t.match(screen, new RegExp(`🚀 LLM API Gateway listening on http://localhost:${p.gatewayPort}\n`));
  t.match(screen, /\[\d\d:\d\d:\d\d\] INFO: request .*"url":"\/v1\/models","status":200/, 'JSON log lines shown readable');
  t.notMatch(screen, KEY_A, 'no key on screen');

  from = menu.type('d');
  screen = await menu.nextScreen(from);
  t.match(screen, /LLM Gateway doctor\n/);
  t.match(screen, /✔ All \d+ checks passed\./);

  from = menu.type('0');
  screen = await menu.nextScreen(from);
  t.equal(row(screen, 'gateway')[1], 'online', '0 redraws the table');

  from = menu.type('k');
  screen = await menu.nextScreen(from);
  t.match(
    screen,
    /Stopping tunnel…\n■ tunnel stopped\nStopping gateway…\n■ gateway stopped\nStopping llama…\n■ llama stopped\n/,
    'the tunnel first, llama-server last',
  );
  for (const name of ['llama', 'gateway', 'tunnel']) t.same(row(screen, name), [name, 'stopped', '-', '-', '0', '-', '-']);
  t.match(screen, /llama-server .* not reachable \(ECONNREFUSED\)/);

  from = menu.type('q');
  t.equal(await menu.done, 0);
  t.match(menu.screen.text.slice(from), /Bye\. What runs keeps running under PM2/);
  t.ok(daemonRunning(p.home), 'quitting leaves the PM2 daemon (and whatever runs) up');
});

t.test('first run: pm2-config.json and the tunnel template are written, unfinished processes are not started', async (t) => {
  const p = await project(t, { ready: false });
  const menu = driveMenu(t, p);
  const first = await menu.nextScreen(0);
  t.match(first, new RegExp(`Wrote ${p.config} with the defaults\\. Put your model's path where it says <path/to/model\\.gguf>\n`));
  t.match(
    first,
    new RegExp(`Wrote ${p.dir}/cloudflared-config\\.yml\\. Fill in:\n {2}<tunnel-name> .*\n {2}<tunnel-id> .*\n {2}<hostname> .*\n`),
  );
  const template = readFileSync(join(p.dir, 'cloudflared-config.yml'), 'utf8');
  t.match(template, new RegExp(`service: http://localhost:${p.gatewayPort}\n`), 'ingress to GATEWAY_PORT from .env');
  t.match(template, /- service: http_status:404\n$/);
  t.equal(readFileSync(p.config, 'utf8'), readFileSync(join(ROOT, 'pm2-config.example.json'), 'utf8'));
  t.match(first, /✘ fill in <path\/to\/model\.gguf> in pm2-config\.json \(llama\)/);
  t.match(first, /✘ .*cloudflared-config\.yml still has placeholders: fill in <tunnel-name>, <tunnel-id>, <hostname>/);
  t.match(
    first,
    /✘ port mismatch: LLM_UPSTREAM is http:\/\/127\.0\.0\.1:\d+ but llama-server is started with --port 5857 \(pm2-config\.json\); make them the same/,
  );

  const from = menu.type('a');
  const screen = await menu.nextScreen(from);
  t.match(screen, /✘ llama not started: fill in <path\/to\/model\.gguf> in pm2-config\.json \(llama\)\n/);
  t.match(
    screen,
    /✘ gateway not started: .*dist\/server\.js does not exist: run `npm run build`\n/,
    'cwd "." is the project; nothing built there',
  );
  t.match(
    screen,
    /✘ tunnel not started: fill in <tunnel-name> in pm2-config\.json \(tunnel\); fill in <tunnel-name>, <tunnel-id>, <hostname> in .*cloudflared-config\.yml\n/,
  );
  t.notMatch(screen, /Starting/);
  const pm2 = await Pm2.connect(p.home);
  t.same(await pm2.list(), [], 'PM2 was not asked to start anything');
  await pm2.disconnect();

  // A second run leaves both files alone.
  writeFileSync(join(p.dir, 'cloudflared-config.yml'), 'tunnel: mine\n');
  menu.type('q');
  await menu.done;
  const again = driveMenu(t, p);
  const screen2 = await again.nextScreen(0);
  t.notMatch(screen2, /Wrote/);
  t.equal(readFileSync(join(p.dir, 'cloudflared-config.yml'), 'utf8'), 'tunnel: mine\n', 'never overwritten');
  t.match(
    screen2,
    new RegExp(`✘ .*cloudflared-config\\.yml has no ingress rules; the gateway needs one: service: http://localhost:${p.gatewayPort}\n`),
  );
  again.type('q');
  await again.done;
});

t.test('mismatch warnings: llama-server port vs LLM_UPSTREAM, tunnel ingress vs GATEWAY_PORT', async (t) => {
  const p = await project(t);
  writeFileSync(join(p.dir, '.env'), `LLM_API_KEYS=${KEY_A}\nLLM_UPSTREAM=http://127.0.0.1:5999\nGATEWAY_PORT=${p.gatewayPort + 1}\n`);
  const menu = driveMenu(t, p);
  const screen = await menu.nextScreen(0);
  t.match(
    screen,
    new RegExp(
      `✘ port mismatch: LLM_UPSTREAM is http://127\\.0\\.0\\.1:5999 but llama-server is started with --port ${p.llamaPort} \\(pm2-config\\.json\\); make them the same\n`,
    ),
  );
  t.match(
    screen,
    new RegExp(
      `✘ no ingress rule points at the gateway \\(GATEWAY_PORT ${p.gatewayPort + 1}\\); found: http://localhost:${p.gatewayPort}, http_status:404\\. Use service: http://localhost:${p.gatewayPort + 1}\n`,
    ),
  );

  // Fixed in the files while the menu runs: the next screen says nothing any more.
  writeFileSync(
    join(p.dir, '.env'),
    `LLM_API_KEYS=${KEY_A}\nLLM_UPSTREAM=http://127.0.0.1:${p.llamaPort}\nGATEWAY_PORT=${p.gatewayPort}\n`,
  );
  const fixed = await menu.nextScreen(menu.type('0'));
  t.notMatch(fixed, /[✘⚠]/);
  menu.type('q');
  await menu.done;
});

t.test('a process that does not stay up is reported with its last log lines', async (t) => {
  const p = await project(t);
  writeFileSync(
    join(p.dir, '.env'),
    `LLM_UPSTREAM=http://127.0.0.1:${p.llamaPort}\nGATEWAY_PORT=${p.gatewayPort}\nGATEWAY_DB=./data/gateway.db\n`,
  ); // no key anywhere
  const menu = driveMenu(t, p);
  await menu.nextScreen(0);
  const screen = await menu.nextScreen(menu.type('2'));
  t.match(
    screen,
    /Starting gateway…\n✘ gateway did not stay up \((errored|waiting restart|launching|online), restarted \d+ times?\)\. Its last log lines:\n/,
  );
  t.match(screen, /❌ LLM Gateway cannot start: no API keys: set LLM_API_KEYS in \.env/);
  t.match(screen, /PM2 keeps restarting it; 5 stops it\.\n/);
  const stopped = await menu.nextScreen(menu.type('5'));
  t.match(stopped, /■ gateway stopped|gateway is not running\./);
  menu.type('q');
  await menu.done;
});

interface CliRun {
  readonly child: ChildProcess;
  readonly screen: Transcript;
  readonly exit: Promise<number | null>;
}

function spawnCli(t: Teardown, command: string, args: string[], p: Project, extraEnv: Record<string, string> = {}): CliRun {
  const child = spawn(command, args, {
    cwd: p.dir,
    env: { PATH: p.path, HOME: p.dir, PM2_HOME: p.home, ...extraEnv },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const screen = new Transcript();
  child.stdout.on('data', (d: Buffer) => (screen.text += d.toString('utf8')));
  child.stderr.on('data', (d: Buffer) => (screen.text += d.toString('utf8')));
  const exit = new Promise<number | null>((resolveExit) => child.on('close', (code) => resolveExit(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exit;
    }
  });
  return { child, screen, exit };
}

t.test('two llama-servers from a list: a row and an upstream line each; the llama keys act on both', async (t) => {
  const p = await project(t);
  const embedPort = await freePort();
  const llamaArgs = (port: number, alias: string, slots: string): string[] => [
    '-m',
    `/models/${alias}.gguf`,
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '-np',
    slots,
    '-a',
    alias,
  ];
  const c = JSON.parse(readFileSync(p.config, 'utf8')) as Record<string, unknown>;
  const single = c.llama;
  c.llama = [
    { name: 'chat', command: 'llama-server', args: llamaArgs(p.llamaPort, 'tiny', '2') },
    { command: 'llama-server', args: [...llamaArgs(embedPort, 'embed', '1'), '--embeddings'] },
  ];
  writeFileSync(p.config, JSON.stringify(c, null, 2));
  const upstreams = `http://127.0.0.1:${p.llamaPort},http://127.0.0.1:${embedPort}`;
  writeFileSync(
    join(p.dir, '.env'),
    `LLM_API_KEYS=${KEY_A}\nLLM_UPSTREAM=${upstreams}\nGATEWAY_PORT=${p.gatewayPort}\nGATEWAY_DB=./data/gateway.db\n`,
  );
  const menu = driveMenu(t, p);
  const first = await menu.nextScreen(0);
  t.same(row(first, 'llama-chat').slice(0, 2), ['llama-chat', 'not started']);
  t.same(row(first, 'llama-2').slice(0, 2), ['llama-2', 'not started']);
  t.notMatch(first, /[✘⚠]/, 'both ports are in LLM_UPSTREAM: no warning');
  t.match(
    first,
    new RegExp(
      `  llama-server  http://127\\.0\\.0\\.1:${p.llamaPort} +not reachable \\(ECONNREFUSED\\)\n  llama-server  http://127\\.0\\.0\\.1:${embedPort} +not reachable \\(ECONNREFUSED\\)\n  gateway  `,
    ),
  );

  let screen = await menu.nextScreen(menu.type('1'));
  t.match(screen, /Starting llama-chat…\nStarting llama-2…\n✔ llama-chat online \(pid \d+\)\n✔ llama-2 online \(pid \d+\)\n/);
  t.equal(row(screen, 'llama-chat')[1], 'online');
  t.equal(row(screen, 'llama-2')[1], 'online');
  t.equal(row(screen, 'gateway')[1], 'not started');
  // Online under PM2 is not yet listening: wait for both, then redraw.
  for (const port of [p.llamaPort, embedPort])
    await until(`the llama-server on ${port} answering`, () => answers(`http://127.0.0.1:${port}/health`), WAIT_MS, 50);
  screen = await menu.nextScreen(menu.type('0'));
  t.match(
    screen,
    new RegExp(
      `  llama-server  http://127\\.0\\.0\\.1:${p.llamaPort} +ready · tiny · 2 slots\n  llama-server  http://127\\.0\\.0\\.1:${embedPort} +ready · embed · 1 slot\n  gateway  `,
    ),
    'every upstream with its state, models and slots',
  );

  screen = await menu.nextScreen(menu.type('L'));
  t.match(
    screen,
    new RegExp(
      `── llama-chat: last \\d+ lines of ${p.home}/logs/llama-chat-out\\.log\n.*listening on http://127\\.0\\.0\\.1:${p.llamaPort}`,
    ),
  );
  t.match(
    screen,
    new RegExp(`── llama-2: last \\d+ lines of ${p.home}/logs/llama-2-out\\.log\n.*listening on http://127\\.0\\.0\\.1:${embedPort}`),
  );
  t.match(screen, /── live: pm2 logs '\/\^llama\/'/);

  screen = await menu.nextScreen(menu.type('d'));
  t.match(screen, /✔ llama-chat online \(pid \d+, up \d+s, 0 restarts\)\n {2}✔ llama-2 online/);
  t.match(
    screen,
    new RegExp(
      `llama-server \\(http://127\\.0\\.0\\.1:${embedPort}, called directly\\)\n  ✔ reachable and ready \\(GET /health → 200\\)\n  ✔ model: embed \\(GET /v1/models\\)\n`,
    ),
  );

  // Back to one llama-server in the file: the two PM2 still runs are shown as such, and 4 stops them.
  c.llama = single;
  writeFileSync(p.config, JSON.stringify(c, null, 2));
  screen = await menu.nextScreen(menu.type('0'));
  t.equal(row(screen, 'llama')[1], 'not started');
  t.equal(row(screen, 'llama-chat')[1], 'online (not in config)');
  t.equal(row(screen, 'llama-2')[1], 'online (not in config)');
  screen = await menu.nextScreen(menu.type('4'));
  t.match(screen, /Stopping llama-chat…\n■ llama-chat stopped\nStopping llama-2…\n■ llama-2 stopped\n/);
  t.same(row(screen, 'llama-chat').slice(0, 2), ['llama-chat', 'stopped (not in config)']);
  screen = await menu.nextScreen(menu.type('4'));
  t.match(screen, /llama is not running\./);
  menu.type('q');
  await menu.done;
});

t.test('the real command over a pipe: one process at a time, with the names from PATH', async (t) => {
  const p = await project(t);
  const run = spawnCli(t, process.execPath, [CLI, 'menu'], p);
  const type = (keys: string): number => {
    const from = run.screen.mark();
    run.child.stdin!.write(`${keys}\n`);
    return from;
  };
  await run.screen.waitFor(PROMPT);
  let screen = await run.screen.waitFor(PROMPT, type('1'));
  t.match(screen, /✔ llama online \(pid \d+\)/);
  t.equal(row(screen, 'llama')[1], 'online');
  t.equal(row(screen, 'gateway')[1], 'not started');
  screen = await run.screen.waitFor(PROMPT, type('2'));
  const pid = row(screen, 'gateway')[2];
  t.match(screen, /✔ gateway online/);
  screen = await run.screen.waitFor(PROMPT, type('g'));
  t.match(screen, /Restarting gateway…\n✔ gateway online \(pid \d+\)/);
  t.not(row(screen, 'gateway')[2], pid, 'a new process');
  screen = await run.screen.waitFor(PROMPT, type('1'));
  t.match(screen, /llama is already online \(pid \d+\)\./);
  screen = await run.screen.waitFor(PROMPT, type('5'));
  t.match(screen, /■ gateway stopped/);
  t.equal(row(screen, 'gateway')[1], 'stopped');
  screen = await run.screen.waitFor(PROMPT, type('x'));
  t.match(screen, /Unknown key "x": the keys are listed at the bottom\./);
  run.child.stdin!.end(); // end of input quits, like q
  t.equal(await run.exit, 0);
  t.match(run.screen.text, /Bye\./);
});

const HAS_SCRIPT = spawnSync('script', ['--version']).status === 0;

t.test(
  'a real terminal: single keys without Enter (raw mode, in a pseudo-terminal)',
  { skip: HAS_SCRIPT ? false : 'util-linux `script` is not installed' },
  async (t) => {
    const p = await project(t);
    // script(1) gives the menu a real pseudo-terminal; what we write reaches it as typed keys.
    const run = spawnCli(t, 'script', ['-qfec', `${process.execPath} ${CLI} menu`, '/dev/null'], p, { TERM: 'dumb' });
    await run.screen.waitFor(/q quit\r?\n> $/);
    t.match(run.screen.text, '\x1b[2J\x1b[H', 'the screen is cleared: it is a terminal');
    let from = run.screen.mark();
    run.child.stdin!.write('0');
    await run.screen.waitFor(/LLM Gateway · PM2 menu[\s\S]*q quit\r?\n> $/, from);
    from = run.screen.mark();
    run.child.stdin!.write('q');
    await run.screen.waitFor(/Bye\./, from);
    t.equal(await run.exit, 0);
  },
);

t.test('the same stack without the menu: pm2 start ecosystem.config.cjs', async (t) => {
  const p = await project(t);
  const run = spawnCli(t, process.execPath, [PM2_CLI, 'start', join(ROOT, 'ecosystem.config.cjs')], p, {
    LLM_GATEWAY_PM2_CONFIG: p.config,
  });
  run.child.stdin!.end();
  t.equal(await run.exit, 0, run.screen.text);
  const pm2 = await Pm2.connect(p.home);
  t.teardown(() => pm2.disconnect());
  await until('three processes online', async () => (await pm2.list()).filter((s) => s.status === 'online').length === 3, WAIT_MS, 50);
  const answer = await fetch(`http://127.0.0.1:${p.gatewayPort}/healthz`);
  t.equal(answer.status, 200, 'the gateway was ready when PM2 said so (wait_ready)');

  // doctor, the real command, against the whole stack: every check passes.
  const doctor = spawnCli(t, process.execPath, [CLI, 'doctor'], p);
  doctor.child.stdin!.end();
  const code = await doctor.exit;
  t.equal(code, 0, doctor.screen.text);
  t.match(
    doctor.screen.text,
    /✔ llama online \(pid \d+, up \d+s, 0 restarts\)\n {2}✔ gateway online .*\n {2}✔ gateway answers on http:\/\/127\.0\.0\.1:\d+\/healthz\n {2}✔ tunnel online/,
  );
  t.match(
    doctor.screen.text,
    /✔ model: tiny \(GET \/v1\/models\)\n {2}✔ 2 slots: 2 requests at once \(GET \/props total_slots; -np\), model file \/models\/tiny\.gguf\n/,
  );
  t.notMatch(doctor.screen.text, KEY_A);
});
