// `llm-gateway menu`: one key to start or stop llama-server, the gateway and the Cloudflare Tunnel
// together under PM2, as pm2-config.json describes them (the successor of pm2-simple.js). Plain
// text, no mouse: raw single keys in a terminal, one key per line from a pipe. runMenu() takes its
// streams, so tests drive it like a person would.
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs } from 'node:util';
import {
  DEFAULT_STACK_FILE,
  PROCESS_NAMES,
  StackConfigError,
  ensureTunnelTemplate,
  gatewayEnvironment,
  gatewaySettings,
  loadStackConfig,
  pm2App,
  stackFindings,
  startBlockers,
  tunnelTemplateHelp,
  writeDefaultStackConfig,
  type ProcessName,
  type StackConfig,
} from './stack/pm2-config.js';
import { Failure, UsageError, run } from './common.js';
import { doctor, formatDoctor } from './doctor.js';
import { Pm2, defaultPm2Home, formatBytes, formatUptime } from './pm2.js';

type Env = Readonly<Record<string, string | undefined>>;
type PrettyFactory = typeof import('pino-pretty').prettyFactory;

export interface MenuInput extends NodeJS.ReadableStream {
  isTTY?: boolean;
  setRawMode?(mode: boolean): unknown;
}

export interface MenuOutput extends NodeJS.WritableStream {
  isTTY?: boolean;
}

export interface MenuOptions {
  readonly input: MenuInput;
  readonly output: MenuOutput;
  /** PM2's folder (daemon socket, logs); the pm2 command line uses the same one. */
  readonly pm2Home: string;
  /** pm2-config.json; written with the defaults when missing. */
  readonly configPath: string;
  /** Where settings and PATH are read (default process.env); .env is read as the gateway does. */
  readonly env?: Env;
  /** How long to watch freshly started processes before saying whether they stayed up. */
  readonly settleMs?: number;
  /** Lines shown by the log keys. */
  readonly logLines?: number;
  /** ANSI colours (default: when the output is a terminal and NO_COLOR is unset). */
  readonly color?: boolean;
}

const DEFAULT_SETTLE_MS = 1500;
const DEFAULT_LOG_LINES = 20;
const HEALTH_TIMEOUT_MS = 1500;
const TAIL_BYTES = 64 * 1024;
const START_ORDER: readonly ProcessName[] = ['llama', 'gateway', 'tunnel'];
const STOP_ORDER: readonly ProcessName[] = ['tunnel', 'gateway', 'llama'];

const PROCESS_BY_DIGIT: Readonly<Record<string, ProcessName>> = { 1: 'llama', 2: 'gateway', 3: 'tunnel', 4: 'llama', 5: 'gateway', 6: 'tunnel' };

const STOP_KEY: Readonly<Record<ProcessName, string>> = { llama: '4', gateway: '5', tunnel: '6' };

const KEY_HELP = [
  'a/7 start all      1 start llama     4 stop llama     l restart llama',
  'k/8 stop all       2 start gateway   5 stop gateway   g restart gateway',
  '0   refresh        3 start tunnel    6 stop tunnel    t restart tunnel',
  '9   gateway logs   L llama logs      T tunnel logs    d doctor    q quit',
];

// ---------------------------------------------------------------------------------------------
// Keys

/** Keys pressed, in order; next() resolves with null once the input has ended. */
class KeyQueue {
  #keys: string[] = [];
  #waiter: ((key: string | null) => void) | undefined;
  #ended = false;

  push(key: string): void {
    if (this.#waiter !== undefined) {
      const wake = this.#waiter;
      this.#waiter = undefined;
      wake(key);
    } else this.#keys.push(key);
  }

  /** Ctrl-C: forget what was typed ahead and quit after the current action. */
  interrupt(): void {
    this.#keys = [];
    this.push('q');
  }

  end(): void {
    this.#ended = true;
    if (this.#waiter !== undefined) {
      const wake = this.#waiter;
      this.#waiter = undefined;
      wake(null);
    }
  }

  next(): Promise<string | null> {
    const key = this.#keys.shift();
    if (key !== undefined) return Promise.resolve(key);
    if (this.#ended) return Promise.resolve(null);
    return new Promise((resolve) => (this.#waiter = resolve));
  }
}

/** Raw single keys on a terminal; otherwise every character of each line is a key (Enter alone: refresh). */
function readKeys(input: MenuInput, raw: boolean): { keys: KeyQueue; close(): void } {
  const keys = new KeyQueue();
  if (raw) {
    input.setRawMode?.(true);
    input.setEncoding('utf8');
    const onData = (chunk: string | Buffer): void => {
      const text = chunk.toString();
      if (text.startsWith('\x1b')) return; // arrows, function keys
      for (const ch of text) {
        if (ch === '\u0003' || ch === '\u0004') keys.interrupt(); // Ctrl-C, Ctrl-D
        else keys.push(ch === '\r' ? '\n' : ch);
      }
    };
    const onEnd = (): void => keys.end();
    input.on('data', onData);
    input.on('end', onEnd);
    input.resume();
    return {
      keys,
      close() {
        input.removeListener('data', onData);
        input.removeListener('end', onEnd);
        input.setRawMode?.(false);
        input.pause();
      },
    };
  }
  const lines = createInterface({ input, terminal: false, crlfDelay: Infinity });
  lines.on('line', (line) => {
    const typed = line.trim();
    if (typed === '') keys.push('\n');
    for (const ch of typed) if (ch !== ' ') keys.push(ch);
  });
  lines.on('close', () => keys.end());
  return { keys, close: () => lines.close() };
}

// ---------------------------------------------------------------------------------------------
// Formatting

const COLORS = { green: 32, red: 31, yellow: 33, dim: 2, bold: 1, cyan: 36 } as const;
type Color = keyof typeof COLORS;

/** The last `count` lines of a file, reading at most its last 64 KB (PM2 logs grow without end). */
export function tailLines(path: string, count: number): string[] | null {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return null;
  }
  try {
    const size = statSync(path).size;
    const length = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(length);
    readSync(fd, buf, 0, length, size - length);
    const lines = buf.toString('utf8').split('\n');
    if (length < size) lines.shift(); // a partial first line
    while (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
    return lines.slice(-count);
  } finally {
    closeSync(fd);
  }
}

class Screen {
  readonly #out: MenuOutput;
  readonly color: boolean;
  readonly clears: boolean;
  /** What the last action said, shown again under the table after a clear. */
  notes: string[] = [];

  constructor(out: MenuOutput, color: boolean, clears: boolean) {
    this.#out = out;
    this.color = color;
    this.clears = clears;
  }

  paint(color: Color, text: string): string {
    return this.color ? `\x1b[${COLORS[color]}m${text}\x1b[0m` : text;
  }

  write(text: string): void {
    this.#out.write(text);
  }

  line(text = ''): void {
    this.#out.write(`${text}\n`);
  }

  /** A line the user should still see after the next redraw. */
  note(text: string): void {
    this.line(text);
    this.notes.push(text);
  }

  clear(): void {
    if (this.clears) this.#out.write('\x1b[2J\x1b[H');
  }
}

function table(rows: string[][], paint: (row: number, col: number, cell: string) => string): string[] {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  return rows.map((r, i) => `  ${r.map((cell, c) => paint(i, c, c === r.length - 1 ? cell : cell.padEnd(widths[c]!))).join('  ')}`.trimEnd());
}

// ---------------------------------------------------------------------------------------------
// The menu

async function probe(url: string): Promise<number | string> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(HEALTH_TIMEOUT_MS) });
    await res.arrayBuffer();
    return res.status;
  } catch (err) {
    const cause = (err as { cause?: { code?: string } }).cause;
    return cause?.code ?? (err as Error).name;
  }
}

function localUrl(host: string, port: number): string {
  const h = host === '0.0.0.0' ? '127.0.0.1' : host === '::' ? '[::1]' : host.includes(':') ? `[${host}]` : host;
  return `http://${h}:${port}`;
}

class Menu {
  readonly #pm2: Pm2;
  readonly #screen: Screen;
  readonly #opts: MenuOptions;
  readonly #env: Env;
  readonly #configPath: string;
  readonly #pretty: (line: string) => string;

  constructor(pm2: Pm2, screen: Screen, opts: MenuOptions, prettyFactory: PrettyFactory) {
    this.#pm2 = pm2;
    this.#screen = screen;
    this.#opts = opts;
    this.#env = opts.env ?? process.env;
    this.#configPath = resolve(opts.configPath);
    const pretty = prettyFactory({ colorize: screen.color, translateTime: 'SYS:HH:MM:ss', ignore: 'pid,hostname', singleLine: true });
    this.#pretty = (line) => {
      if (!line.startsWith('{')) return line;
      try {
        return pretty(JSON.parse(line) as object).trimEnd();
      } catch {
        return line;
      }
    };
  }

  /** pm2-config.json, read again for every action so edits apply at once. */
  #tryStack(): { stack: StackConfig; error?: undefined } | { stack: null; error: StackConfigError } {
    try {
      return { stack: loadStackConfig(this.#configPath) };
    } catch (err) {
      if (err instanceof StackConfigError) return { stack: null, error: err };
      throw err;
    }
  }

  /** The config for an action, or null after saying what is wrong with it. */
  #stack(): StackConfig | null {
    const { stack, error } = this.#tryStack();
    if (error !== undefined) {
      this.#screen.note(this.#screen.paint('red', `✘ ${basename(error.file)} has problems:`));
      for (const p of error.problems) this.#screen.note(`    ${p}`);
    }
    return stack;
  }

  #gatewayPort(stack: StackConfig): number {
    try {
      return gatewaySettings(gatewayEnvironment(stack, this.#env)).config?.port ?? 8787;
    } catch {
      return 8787; // .env unreadable: said under the table
    }
  }

  /** First run: write pm2-config.json and the cloudflared template if they are missing. */
  prepare(): void {
    if (writeDefaultStackConfig(this.#configPath)) {
      this.#screen.note(this.#screen.paint('yellow', `Wrote ${this.#configPath} with the defaults. Put your model's path where it says <path/to/model.gguf>`));
      this.#screen.note(this.#screen.paint('yellow', 'and your tunnel name where it says <tunnel-name>, or set "enabled": false for what you do not run.'));
    }
    const { stack } = this.#tryStack(); // problems are shown with the table
    if (stack !== null && stack.processes.tunnel.enabled) this.#tunnelTemplate(stack);
  }

  #tunnelTemplate(stack: StackConfig): void {
    const outcome = ensureTunnelTemplate(stack, this.#gatewayPort(stack));
    if (outcome.status === 'written') for (const line of tunnelTemplateHelp(outcome.path)) this.#screen.note(this.#screen.paint('yellow', line));
  }

  async draw(): Promise<void> {
    const s = this.#screen;
    const { stack, error } = this.#tryStack();
    const [states, health] = await Promise.all([this.#pm2.list(), this.#health(stack)]);
    s.clear();
    if (!s.clears) s.line();
    s.line(s.paint('bold', 'LLM Gateway · PM2 menu'));
    s.line(s.paint('dim', `config ${this.#configPath} · PM2_HOME ${this.#pm2.home}`));
    s.line();
    const rows = [['NAME', 'STATE', 'PID', 'UPTIME', 'RESTARTS', 'MEMORY', 'CPU']];
    const now = Date.now();
    const stateColors: Color[] = [];
    for (const name of PROCESS_NAMES) {
      const p = states.find((x) => x.name === name);
      const enabled = stack?.processes[name].enabled ?? true;
      const status = p?.status ?? (enabled ? 'not started' : 'off');
      stateColors.push(status === 'online' ? 'green' : status === 'errored' ? 'red' : p === undefined || status === 'stopped' ? 'dim' : 'yellow');
      rows.push([
        name,
        p !== undefined && !enabled ? `${status} (off)` : status,
        p?.pid === null || p === undefined ? '-' : String(p.pid),
        p?.startedAt === null || p === undefined ? '-' : formatUptime(now - p.startedAt),
        p === undefined ? '-' : String(p.restarts),
        p?.memory === null || p === undefined ? '-' : formatBytes(p.memory),
        p?.cpu === null || p === undefined ? '-' : `${p.cpu}%`,
      ]);
    }
    for (const l of table(rows, (r, c, cell) => (r === 0 ? s.paint('dim', cell) : c === 1 ? s.paint(stateColors[r - 1]!, cell) : cell))) s.line(l);
    s.line();
    for (const h of health) s.line(`  ${h}`);
    if (error !== undefined) {
      s.line();
      s.line(`  ${s.paint('red', '✘')} ${basename(error.file)} has problems:`);
      for (const p of error.problems) s.line(`      ${p}`);
    } else {
      let findings: { level: string; text: string }[];
      try {
        findings = stackFindings(stack, this.#env).filter((f) => f.level !== 'ok');
      } catch (err) {
        findings = [{ level: 'fail', text: (err as Error).message }]; // e.g. an unreadable .env
      }
      if (findings.length > 0) s.line();
      for (const f of findings) s.line(`  ${f.level === 'fail' ? s.paint('red', '✘') : s.paint('yellow', '⚠')} ${f.text}`);
    }
    if (s.clears && s.notes.length > 0) {
      s.line();
      for (const n of s.notes) s.line(n);
    }
    s.notes = [];
    s.line();
    for (const k of KEY_HELP) s.line(`  ${k}`);
    s.write('> ');
  }

  /** One line each for llama-server's /health and the gateway's /healthz. */
  async #health(stack: StackConfig | null): Promise<string[]> {
    const s = this.#screen;
    let settings: ReturnType<typeof gatewaySettings>;
    try {
      settings = gatewaySettings(gatewayEnvironment(stack, this.#env));
    } catch (err) {
      return [`${s.paint('red', '✘')} ${(err as Error).message}`];
    }
    if (settings.config === undefined) return [`${s.paint('red', '✘')} gateway settings: ${settings.error}`];
    const { upstream, host, port } = settings.config;
    const gateway = localUrl(host, port);
    const [up, gw] = await Promise.all([probe(`${upstream}/health`), probe(`${gateway}/healthz`)]);
    const upText = up === 200 ? s.paint('green', 'ready') : up === 503 ? s.paint('yellow', 'loading the model') : typeof up === 'number' ? s.paint('yellow', `answers ${up}`) : s.paint('dim', `not reachable (${up})`);
    const gwText = gw === 200 ? s.paint('green', 'answering') : typeof gw === 'number' ? s.paint('yellow', `answers ${gw}`) : s.paint('dim', `not reachable (${gw})`);
    const width = Math.max(upstream.length, gateway.length);
    return [`llama-server  ${upstream.padEnd(width)}  ${upText}`, `gateway       ${gateway.padEnd(width)}  ${gwText}`];
  }

  /** Runs one key; false when the key quits. */
  async handle(key: string, keys: KeyQueue): Promise<boolean> {
    try {
      switch (key) {
        case 'q':
          return false;
        case 'a':
        case '7':
          await this.#start(START_ORDER, true);
          break;
        case 'k':
        case '8':
          await this.#stop(STOP_ORDER, true);
          break;
        case '0':
        case '\n':
          break;
        case '1':
        case '2':
        case '3':
          await this.#start([PROCESS_BY_DIGIT[key]!], false);
          break;
        case '4':
        case '5':
        case '6':
          await this.#stop([PROCESS_BY_DIGIT[key]!], false);
          break;
        case 'l':
        case 'g':
        case 't':
          await this.#restart(key === 'l' ? 'llama' : key === 'g' ? 'gateway' : 'tunnel');
          break;
        case '9':
        case 'G':
        case 'L':
        case 'T':
          await this.#logs(key === 'L' ? 'llama' : key === 'T' ? 'tunnel' : 'gateway');
          await this.#pause(keys);
          break;
        case 'd':
          await this.#doctor();
          await this.#pause(keys);
          break;
        case 'h':
        case '?':
          break; // the keys are on the screen
        default:
          this.#screen.note(`Unknown key ${JSON.stringify(key)}: the keys are listed at the bottom.`);
      }
    } catch (err) {
      this.#screen.note(this.#screen.paint('red', `✘ ${(err as Error).message}`));
    }
    return true;
  }

  /** On a terminal that the next redraw clears, wait for a key first. */
  async #pause(keys: KeyQueue): Promise<void> {
    if (!this.#screen.clears) return;
    this.#screen.write(this.#screen.paint('dim', 'Press any key for the menu '));
    await keys.next();
  }

  async #start(names: readonly ProcessName[], all: boolean): Promise<void> {
    const s = this.#screen;
    const stack = this.#stack();
    if (stack === null) return;
    const started: ProcessName[] = [];
    for (const name of names) {
      const spec = stack.processes[name];
      if (!spec.enabled) {
        if (!all) s.note(`${name} is off in ${basename(stack.file)} ("enabled": false).`);
        continue;
      }
      if (name === 'tunnel') this.#tunnelTemplate(stack);
      const blockers = startBlockers(stack, name, this.#env);
      if (blockers.length > 0) {
        s.note(`${s.paint('red', '✘')} ${name} not started: ${blockers.join('; ')}`);
        continue;
      }
      const current = await this.#pm2.find(name);
      if (current?.status === 'online') {
        s.note(`${name} is already online (pid ${current.pid ?? '?'}).`);
        continue;
      }
      s.line(`Starting ${name}…`);
      // A fresh definition each time, so edits to pm2-config.json apply.
      if (current !== undefined) await this.#pm2.delete(name);
      try {
        await this.#pm2.start(pm2App(stack, name, this.#env));
        started.push(name);
      } catch (err) {
        s.note(`${s.paint('red', '✘')} ${name} did not start: ${(err as Error).message}`);
      }
    }
    await this.#settle(started);
  }

  /** Watches what was just started for a moment and says whether it stayed up. */
  async #settle(names: readonly ProcessName[]): Promise<void> {
    if (names.length === 0) return;
    await sleep(this.#opts.settleMs ?? DEFAULT_SETTLE_MS);
    const states = await this.#pm2.list();
    const s = this.#screen;
    for (const name of names) {
      const p = states.find((x) => x.name === name);
      if (p !== undefined && p.status === 'online' && p.restarts === 0) {
        s.note(`${s.paint('green', '✔')} ${name} online (pid ${p.pid ?? '?'})`);
        continue;
      }
      const how = p === undefined ? 'gone' : `${p.status}${p.restarts > 0 ? `, restarted ${p.restarts} time${p.restarts === 1 ? '' : 's'}` : ''}`;
      s.note(`${s.paint('red', '✘')} ${name} did not stay up (${how}). Its last log lines:`);
      const lines = [...(tailLines(p?.errLog ?? '', 6) ?? []), ...(tailLines(p?.outLog ?? '', 4) ?? [])];
      for (const l of lines.length > 0 ? lines : ['(nothing logged)']) s.note(`    ${this.#pretty(l)}`);
      if (p !== undefined && p.status !== 'stopped') s.note(`    PM2 keeps restarting it; ${STOP_KEY[name]} stops it.`);
    }
  }

  async #stop(names: readonly ProcessName[], all: boolean): Promise<void> {
    const s = this.#screen;
    let stopped = 0;
    for (const name of names) {
      const current = await this.#pm2.find(name);
      if (current === undefined || current.status === 'stopped') {
        if (!all) s.note(`${name} is not running.`);
        continue;
      }
      s.line(`Stopping ${name}…`);
      await this.#pm2.stop(name);
      stopped++;
      s.note(`■ ${name} stopped`);
    }
    if (all && stopped === 0) s.note('Nothing was running.');
  }

  async #restart(name: ProcessName): Promise<void> {
    const s = this.#screen;
    const stack = this.#stack();
    if (stack === null) return;
    if (!stack.processes[name].enabled) {
      s.note(`${name} is off in ${basename(stack.file)} ("enabled": false).`);
      return;
    }
    const blockers = startBlockers(stack, name, this.#env);
    if (blockers.length > 0) {
      s.note(`${s.paint('red', '✘')} ${name} not restarted: ${blockers.join('; ')}`);
      return;
    }
    const current = await this.#pm2.find(name);
    s.line(`Restarting ${name}…`);
    if (current !== undefined) await this.#pm2.delete(name);
    await this.#pm2.start(pm2App(stack, name, this.#env));
    await this.#settle([name]);
  }

  async #logs(name: ProcessName): Promise<void> {
    const s = this.#screen;
    const count = this.#opts.logLines ?? DEFAULT_LOG_LINES;
    const p = await this.#pm2.find(name);
    const out = p?.outLog ?? join(this.#pm2.home, 'logs', `${name}-out.log`);
    const err = p?.errLog ?? join(this.#pm2.home, 'logs', `${name}-error.log`);
    s.clear();
    const outLines = tailLines(out, count);
    s.line(s.paint('cyan', `── ${name}: last ${count} lines of ${out}`));
    for (const l of outLines ?? [`(no log yet: ${name} has not run under this PM2)`]) s.line(this.#pretty(l));
    const errLines = tailLines(err, Math.ceil(count / 2));
    if (errLines !== null && errLines.length > 0) {
      s.line(s.paint('cyan', `── ${name}: last ${errLines.length} lines of ${err}`));
      for (const l of errLines) s.line(this.#pretty(l));
    }
    s.line(s.paint('dim', `── live: pm2 logs ${name}  (PM2_HOME=${this.#pm2.home})`));
  }

  async #doctor(): Promise<void> {
    this.#screen.clear();
    const sections = await doctor({ env: this.#env, cwd: dirname(this.#configPath), configPath: this.#configPath, pm2Home: this.#pm2.home, pm2: this.#pm2 });
    this.#screen.write(formatDoctor(sections, this.#screen.color));
  }
}

/** Runs the menu until `q`, Ctrl-C or the end of input; PM2 keeps the processes running after. */
export async function runMenu(opts: MenuOptions): Promise<number> {
  const env = opts.env ?? process.env;
  const raw = opts.input.isTTY === true && typeof opts.input.setRawMode === 'function';
  const color = opts.color ?? (opts.output.isTTY === true && env.NO_COLOR === undefined);
  const screen = new Screen(opts.output, color, raw && opts.output.isTTY === true);
  screen.line(screen.paint('dim', `Connecting to PM2 (PM2_HOME ${opts.pm2Home})…`));
  let pm2: Pm2;
  try {
    pm2 = await Pm2.connect(opts.pm2Home);
  } catch (err) {
    throw new Failure(`could not reach or start the PM2 daemon in ${opts.pm2Home}: ${(err as Error).message}`);
  }
  const reader = readKeys(opts.input, raw);
  try {
    // Loaded here, not with the CLI: only the menu shows the gateway's JSON log lines.
    const { default: PinoPretty } = await import('pino-pretty');
    const menu = new Menu(pm2, screen, opts, PinoPretty.prettyFactory);
    menu.prepare();
    await menu.draw();
    for (;;) {
      const key = await reader.keys.next();
      if (key === null) break;
      screen.line(key === '\n' ? '' : key); // echo: raw keys and piped lines are not shown otherwise
      if (!(await menu.handle(key, reader.keys))) break;
      await menu.draw();
    }
  } finally {
    reader.close();
    await pm2.disconnect();
  }
  screen.line();
  screen.line(`Bye. What runs keeps running under PM2 (pm2 ls, or llm-gateway menu again; PM2_HOME ${opts.pm2Home}).`);
  return 0;
}

const MENU_HELP = `Usage: llm-gateway menu [--config FILE]

One key to start and stop llama-server, the gateway and the Cloudflare Tunnel together under PM2,
as pm2-config.json describes them (written with the defaults when missing; see
pm2-config.example.json). Works in any terminal, over SSH too. PM2 keeps the processes running
after you quit; \`pm2 ls\` and \`pm2 logs\` (same PM2_HOME, default ~/.pm2) see them.

Keys:
${KEY_HELP.map((k) => `  ${k}`).join('\n')}

From a pipe, each line is read as keys: printf 'a\\nq\\n' | llm-gateway menu

Options:
  --config FILE   the stack's config (default ./${DEFAULT_STACK_FILE})
  -h, --help      show help
`;

export function menuCommand(argv: string[]): Promise<number> {
  return run('llm-gateway menu --help', async () => {
    let values: { config?: string; help?: boolean };
    try {
      ({ values } = parseArgs({ args: argv, options: { config: { type: 'string' }, help: { type: 'boolean', short: 'h' } }, strict: true }));
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    if (values.help === true) {
      process.stdout.write(MENU_HELP);
      return 0;
    }
    return runMenu({
      input: process.stdin,
      output: process.stdout,
      pm2Home: defaultPm2Home(),
      configPath: values.config ?? DEFAULT_STACK_FILE,
    });
  });
}
