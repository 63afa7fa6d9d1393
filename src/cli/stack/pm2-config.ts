// The stack that `llm-gateway menu` and `ecosystem.config.cjs` run under PM2: llama-server, the
// gateway and a Cloudflare Tunnel, described in pm2-config.json. Framework-free: it reads and checks
// that file, turns it into PM2 app definitions, writes the cloudflared template and compares the
// pieces with each other (ports, ingress). PM2 itself is driven elsewhere (src/cli/pm2.ts).
import { accessSync, constants, existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { basename, delimiter, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { parseEnv } from 'node:util';
import { SETTINGS, loadConfig, type Config } from '../../config.js';

export const PROCESS_NAMES = ['llama', 'gateway', 'tunnel'] as const;
export type ProcessName = (typeof PROCESS_NAMES)[number];

export const DEFAULT_STACK_FILE = 'pm2-config.json';
export const DEFAULT_TUNNEL_FILE = './cloudflared-config.yml';
/** llama-server's own defaults when --host / --port are not given. */
export const LLAMA_DEFAULT_HOST = '127.0.0.1';
export const LLAMA_DEFAULT_PORT = 8080;

// How long PM2 waits after SIGINT before SIGKILL. llama-server cancels its slots and frees the
// model's memory; cloudflared waits up to its --grace-period (30 s by default) for open requests.
// The gateway's own wait is GATEWAY_SHUTDOWN_GRACE_MS; PM2 must wait longer than that.
export const LLAMA_KILL_TIMEOUT_MS = 10_000;
export const TUNNEL_KILL_TIMEOUT_MS = 35_000;
export const GATEWAY_KILL_MARGIN_MS = 5_000;
/** How long PM2 waits for the gateway's process.send('ready') before calling it online anyway. */
export const GATEWAY_LISTEN_TIMEOUT_MS = 15_000;
/** First delay between restarts of a crashing llama-server or cloudflared (PM2 grows it up to 15 s). */
export const RESTART_BACKOFF_MS = 1_000;

/** `<something>` in a value: a placeholder the user still has to fill in. */
const PLACEHOLDER = /<[^<>\s][^<>]*>/g;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const FIELDS = ['enabled', 'command', 'args', 'cwd', 'env'] as const;

export interface ProcessSpec {
  readonly name: ProcessName;
  readonly enabled: boolean;
  readonly command: string;
  readonly args: readonly string[];
  /** Absolute: relative paths in the file are taken from the file's folder. */
  readonly cwd: string;
  readonly env: Readonly<Record<string, string>>;
}

export interface StackConfig {
  /** Absolute path of pm2-config.json. */
  readonly file: string;
  /** Its folder: the project the stack lives in. */
  readonly root: string;
  readonly processes: Readonly<Record<ProcessName, ProcessSpec>>;
}

/** pm2-config.json is missing, not JSON, or has wrong fields: one line per problem. */
export class StackConfigError extends Error {
  constructor(
    readonly file: string,
    readonly problems: readonly string[],
    readonly missing = false,
  ) {
    super(`${file}: ${problems.join('; ')}`);
    this.name = 'StackConfigError';
  }
}

// ---------------------------------------------------------------------------------------------
// The file

/** pm2-config.json as committed in pm2-config.example.json ("//" keys are comments). */
export function defaultStackConfig(): Record<string, unknown> {
  return {
    '//': [
      'The processes that `llm-gateway menu` (npm run menu) and `pm2 start ecosystem.config.cjs` run.',
      'pm2-config.json is yours (git ignores it): the menu writes it from these defaults on first run,',
      'or: cp pm2-config.example.json pm2-config.json. Put your model file where it says',
      '<path/to/model.gguf> and your tunnel where it says <tunnel-name>. Each process has "enabled"',
      '(false leaves it out), "command" (a program in PATH, or a path), "args" (one string per',
      'argument), "cwd" (relative to this file) and "env" (extra variables). "//" keys are comments.',
    ],
    llama: {
      '//': 'Add your usual options (-c, -ngl, -a …). --port must match LLM_UPSTREAM in .env; --host 127.0.0.1 keeps it private.',
      enabled: true,
      command: 'llama-server',
      args: ['-m', '<path/to/model.gguf>', '--host', '127.0.0.1', '--port', '5857', '-np', '4'],
      cwd: '.',
      env: {},
    },
    gateway: {
      '//': 'Reads .env in cwd like `npm start`; run `npm run build` after updating the code.',
      enabled: true,
      command: 'node',
      args: ['dist/server.js'],
      cwd: '.',
      env: {},
    },
    tunnel: {
      '//': 'Writes ./cloudflared-config.yml from a template if it is missing; README, Cloudflare Tunnel.',
      enabled: true,
      command: 'cloudflared',
      args: ['tunnel', '--config', DEFAULT_TUNNEL_FILE, 'run', '<tunnel-name>'],
      cwd: '.',
      env: {},
    },
  };
}

/** JSON with 2-space indents, short lists of plain values on one line (args read like a command). */
function formatJson(value: unknown, indent = ''): string {
  const inner = `${indent}  `;
  if (Array.isArray(value)) {
    const inline = `[${value.map((v) => JSON.stringify(v)).join(', ')}]`;
    if (value.every((v) => typeof v !== 'object' || v === null) && indent.length + inline.length <= 100) return inline;
    return `[\n${value.map((v) => inner + formatJson(v, inner)).join(',\n')}\n${indent}]`;
  }
  if (isRecord(value)) {
    const entries = Object.entries(value);
    if (entries.length === 0) return '{}';
    return `{\n${entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${formatJson(v, inner)}`).join(',\n')}\n${indent}}`;
  }
  return JSON.stringify(value);
}

/** The text of pm2-config.example.json (and of a new pm2-config.json). */
export function defaultStackConfigText(): string {
  return `${formatJson(defaultStackConfig())}\n`;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'object') return 'an object';
  return String(v);
}

function parseProcess(name: ProcessName, raw: unknown, root: string, problems: string[]): ProcessSpec | undefined {
  if (!isRecord(raw)) {
    problems.push(`${name} must be an object with "command", "args", "cwd", "env" and "enabled", got ${describeValue(raw)}`);
    return undefined;
  }
  const before = problems.length;
  for (const key of Object.keys(raw)) {
    if (key !== '//' && !(FIELDS as readonly string[]).includes(key)) problems.push(`${name}: unknown field "${key}" (expected ${FIELDS.join(', ')})`);
  }
  const enabled = raw.enabled ?? true;
  if (typeof enabled !== 'boolean') problems.push(`${name}.enabled must be true or false, got ${describeValue(raw.enabled)}`);

  const command = raw.command;
  if (typeof command !== 'string' || command.trim() === '') {
    problems.push(`${name}.command must be the program to run, such as "${name === 'gateway' ? 'node' : name === 'llama' ? 'llama-server' : 'cloudflared'}", got ${command === undefined ? 'nothing' : describeValue(command)}`);
  } else if (/\s/.test(command.trim()) && !existsSync(resolve(root, command))) {
    problems.push(`${name}.command ${JSON.stringify(command)} contains spaces: put only the program in "command" and each argument as its own string in "args"`);
  }

  const args = raw.args ?? [];
  if (!Array.isArray(args)) {
    problems.push(`${name}.args must be a list of strings such as ["--port", "5857"], got ${describeValue(args)}`);
  } else {
    args.forEach((a: unknown, i) => {
      if (typeof a !== 'string') problems.push(`${name}.args[${i}] must be a string, got ${describeValue(a)}${typeof a === 'number' ? ` (write "${a}" in quotes)` : ''}`);
    });
  }

  const cwdRaw = raw.cwd ?? '.';
  let cwd = root;
  if (typeof cwdRaw !== 'string' || cwdRaw.trim() === '') {
    problems.push(`${name}.cwd must be a folder (relative to ${basename(DEFAULT_STACK_FILE)}'s folder), got ${describeValue(cwdRaw)}`);
  } else {
    cwd = resolve(root, expandHome(cwdRaw));
    if (!isDirectory(cwd)) problems.push(`${name}.cwd ${JSON.stringify(cwdRaw)} is not a folder (${cwd})`);
  }

  const envRaw = raw.env ?? {};
  const env: Record<string, string> = {};
  if (!isRecord(envRaw)) {
    problems.push(`${name}.env must be an object of variables such as {"LOG_LEVEL": "info"}, got ${describeValue(envRaw)}`);
  } else {
    for (const [k, v] of Object.entries(envRaw)) {
      if (!ENV_NAME.test(k)) problems.push(`${name}.env: ${JSON.stringify(k)} is not a valid variable name`);
      else if (typeof v !== 'string') problems.push(`${name}.env.${k} must be a string, got ${describeValue(v)}${typeof v === 'number' || typeof v === 'boolean' ? ` (write "${String(v)}" in quotes)` : ''}`);
      else env[k] = v;
    }
  }
  if (problems.length > before) return undefined;
  return { name, enabled: enabled as boolean, command: (command as string).trim(), args: args as string[], cwd, env };
}

/** Checks every field of a parsed pm2-config.json; throws StackConfigError listing each problem. */
export function parseStackConfig(raw: unknown, file: string): StackConfig {
  const absolute = resolve(file);
  const root = dirname(absolute);
  if (!isRecord(raw)) throw new StackConfigError(absolute, [`must be a JSON object with "llama", "gateway" and "tunnel", got ${describeValue(raw)}`]);
  const problems: string[] = [];
  for (const key of Object.keys(raw)) {
    if (key !== '//' && !(PROCESS_NAMES as readonly string[]).includes(key)) problems.push(`unknown entry "${key}" (expected ${PROCESS_NAMES.join(', ')})`);
  }
  const processes: Partial<Record<ProcessName, ProcessSpec>> = {};
  for (const name of PROCESS_NAMES) {
    if (!(name in raw)) {
      problems.push(`"${name}" is missing (set "enabled": false in it to leave ${name} out)`);
      continue;
    }
    const spec = parseProcess(name, raw[name], root, problems);
    if (spec !== undefined) processes[name] = spec;
  }
  if (problems.length > 0) throw new StackConfigError(absolute, problems);
  return { file: absolute, root, processes: processes as Record<ProcessName, ProcessSpec> };
}

/** Reads and checks pm2-config.json. Throws StackConfigError (with `missing` set when there is no file). */
export function loadStackConfig(file: string): StackConfig {
  const absolute = resolve(file);
  let text: string;
  try {
    text = readFileSync(absolute, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new StackConfigError(absolute, [`not found: cp pm2-config.example.json ${basename(absolute)}, then fill in the model path`], true);
    throw new StackConfigError(absolute, [`cannot be read: ${(err as Error).message}`]);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new StackConfigError(absolute, [`is not valid JSON: ${(err as Error).message}`]);
  }
  return parseStackConfig(raw, absolute);
}

/** Writes a new pm2-config.json with the defaults; false if the file already exists. */
export function writeDefaultStackConfig(file: string): boolean {
  return writeNew(file, defaultStackConfigText());
}

/** The `<…>` placeholders still in a process's command, args or env. */
export function placeholdersOf(spec: ProcessSpec): string[] {
  const found = new Set<string>();
  for (const value of [spec.command, ...spec.args, ...Object.values(spec.env)]) {
    for (const m of value.matchAll(PLACEHOLDER)) found.add(m[0]);
  }
  return [...found];
}

// ---------------------------------------------------------------------------------------------
// Paths and commands

function expandHome(p: string): string {
  return p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p;
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function isExecutableFile(p: string): boolean {
  try {
    if (!statSync(p).isFile()) return false;
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/** Writes a file only if it does not exist yet (never overwrites); true if written. */
function writeNew(path: string, text: string): boolean {
  try {
    writeFileSync(path, text, { flag: 'wx' });
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  }
}

/** Where a command runs from: a path (relative to cwd) or the first match in PATH; null if not found. */
export function resolveCommand(command: string, cwd: string, pathVariable: string | undefined): string | null {
  const expanded = expandHome(command);
  if (expanded.includes('/')) {
    const p = resolve(cwd, expanded);
    return isExecutableFile(p) ? p : null;
  }
  for (const dir of (pathVariable ?? '').split(delimiter)) {
    if (dir === '') continue;
    const p = join(dir, expanded);
    if (isExecutableFile(p)) return p;
  }
  return null;
}

/** `node`, `nodejs` or this very Node binary: the program is a Node.js script, run with IPC. */
export function isNodeCommand(command: string): boolean {
  return /^node(js)?(\.exe)?$/.test(basename(command)) || command === process.execPath;
}

/** The script a Node.js command runs: its first argument that is not an option. */
export function nodeScript(spec: ProcessSpec): { nodeArgs: string[]; script: string | undefined; args: string[] } {
  const at = spec.args.findIndex((a) => !a.startsWith('-'));
  if (at < 0) return { nodeArgs: [...spec.args], script: undefined, args: [] };
  return { nodeArgs: spec.args.slice(0, at), script: spec.args[at], args: spec.args.slice(at + 1) };
}

/** The value of `--name V` or `--name=V` in a list of arguments (the last one wins, as in most CLIs). */
export function optionValue(args: readonly string[], ...names: string[]): string | undefined {
  let value: string | undefined;
  args.forEach((a, i) => {
    for (const n of names) {
      if (a === n && i + 1 < args.length) value = args[i + 1];
      else if (a.startsWith(`${n}=`)) value = a.slice(n.length + 1);
    }
  });
  return value;
}

// ---------------------------------------------------------------------------------------------
// Settings the pieces share

type Env = Readonly<Record<string, string | undefined>>;

/** `.env` in a folder, parsed the way the gateway reads it; {} when there is none. */
export function readDotEnv(dir: string): Record<string, string> {
  let text: string;
  try {
    text = readFileSync(join(dir, '.env'), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new Error(`could not read ${join(dir, '.env')}: ${(err as Error).message}`);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(parseEnv(text))) if (v !== undefined) out[k] = v;
  return out;
}

/**
 * The environment the gateway sees when PM2 starts it: pm2-config.json's gateway.env over the
 * starting process's environment, over .env in the gateway's folder (which the gateway reads
 * itself, keeping values already set).
 */
export function gatewayEnvironment(stack: StackConfig | null, env: Env, cwd = process.cwd()): Record<string, string | undefined> {
  const gateway = stack?.processes.gateway;
  return { ...readDotEnv(gateway?.cwd ?? cwd), ...env, ...(gateway?.env ?? {}) };
}

/** The gateway's settings, or the one-line reason they are wrong. */
export function gatewaySettings(env: Env): { config: Config; error?: undefined } | { config?: undefined; error: string } {
  try {
    return { config: loadConfig(env) };
  } catch (err) {
    return { error: (err as Error).message };
  }
}

function settingOr<T>(env: Env, s: { env: string; fallback: string; parse: (text: string, env: string) => T }): T {
  const raw = env[s.env];
  try {
    return s.parse(raw === undefined || raw.trim() === '' ? s.fallback : raw, s.env);
  } catch {
    return s.parse(s.fallback, s.env);
  }
}

/** Where llama-server will listen: --host/--port in its args, else LLAMA_ARG_HOST/PORT, else its defaults. */
export function llamaListen(spec: ProcessSpec): { host: string; port: number | null } {
  const host = optionValue(spec.args, '--host') ?? spec.env.LLAMA_ARG_HOST ?? LLAMA_DEFAULT_HOST;
  const portText = optionValue(spec.args, '--port') ?? spec.env.LLAMA_ARG_PORT ?? String(LLAMA_DEFAULT_PORT);
  const port = /^\d+$/.test(portText) && Number(portText) >= 1 && Number(portText) <= 65535 ? Number(portText) : null;
  return { host, port };
}

function urlPort(url: URL): number {
  return url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
}

const LOCAL_HOSTS = new Set(['localhost', '127.0.0.1', '::1', '[::1]', '0.0.0.0', '::', '[::]']);
export function isLocalHost(host: string): boolean {
  return LOCAL_HOSTS.has(host.toLowerCase()) || /^127\./.test(host);
}

// ---------------------------------------------------------------------------------------------
// PM2 app definitions

/** One app as PM2's start() and ecosystem files take it. */
export interface Pm2AppDefinition {
  name: string;
  script: string;
  args: string[];
  /** 'none' runs the program itself; a Node.js binary runs `script` with an IPC channel. */
  interpreter: string;
  node_args: string[];
  cwd: string;
  env: Record<string, string>;
  exec_mode: 'fork';
  autorestart: boolean;
  kill_timeout: number;
  wait_ready?: boolean;
  listen_timeout?: number;
  exp_backoff_restart_delay?: number;
}

/** PM2's definition of one process. `env` is the environment that settings are read from. */
export function pm2App(stack: StackConfig, name: ProcessName, env: Env): Pm2AppDefinition {
  const spec = stack.processes[name];
  const common = { name, cwd: spec.cwd, env: { ...spec.env }, exec_mode: 'fork' as const, autorestart: true };
  // The program as the checks found it (PATH here), so PM2 — which would search its own PATH — and a
  // boot-time `pm2 resurrect` run exactly that.
  const program = resolveCommand(spec.command, spec.cwd, env.PATH) ?? (spec.command.includes('/') ? resolve(spec.cwd, expandHome(spec.command)) : spec.command);
  let app: Pm2AppDefinition;
  if (isNodeCommand(spec.command)) {
    const { nodeArgs, script, args } = nodeScript(spec);
    app = { ...common, script: resolve(spec.cwd, script ?? ''), args, interpreter: program, node_args: nodeArgs, kill_timeout: 0 };
  } else {
    app = { ...common, script: program, args: [...spec.args], interpreter: 'none', node_args: [], kill_timeout: 0 };
  }
  if (name === 'gateway') {
    const grace = settingOr(gatewayEnvironment(stack, env), SETTINGS.shutdownGraceMs);
    // server.ts calls process.send('ready') once it listens; PM2 must outwait its shutdown grace.
    return { ...app, wait_ready: true, listen_timeout: GATEWAY_LISTEN_TIMEOUT_MS, kill_timeout: grace + GATEWAY_KILL_MARGIN_MS };
  }
  return { ...app, kill_timeout: name === 'tunnel' ? TUNNEL_KILL_TIMEOUT_MS : LLAMA_KILL_TIMEOUT_MS, exp_backoff_restart_delay: RESTART_BACKOFF_MS };
}

/**
 * Why a process cannot be started as configured, from pm2-config.json and the settings alone:
 * placeholders, program not found, gateway not built or misconfigured. Empty when it can.
 */
export function processBlockers(stack: StackConfig, name: ProcessName, env: Env, opts: { settings?: boolean } = {}): string[] {
  const spec = stack.processes[name];
  const out: string[] = [];
  const file = basename(stack.file);
  const holes = placeholdersOf(spec);
  if (holes.length > 0) out.push(`fill in ${holes.join(', ')} in ${file} (${name})`);
  if (resolveCommand(spec.command, spec.cwd, env.PATH) === null) {
    out.push(spec.command.includes('/') ? `${name}.command ${spec.command} is not an executable file` : `${spec.command} is not in PATH: install it, or set ${name}.command in ${file} to its full path`);
  } else if (isNodeCommand(spec.command)) {
    const { script } = nodeScript(spec);
    if (script === undefined) out.push(`${name}.args must name the script for ${spec.command} to run`);
    else if (!existsSync(resolve(spec.cwd, script))) out.push(`${resolve(spec.cwd, script)} does not exist${name === 'gateway' ? ': run `npm run build`' : ''}`);
  }
  if (name === 'gateway' && opts.settings !== false) {
    const settings = gatewaySettings(gatewayEnvironment(stack, env));
    if (settings.error !== undefined) out.push(`gateway setting: ${settings.error}`);
  }
  return out;
}

/** Everything that stops a process from starting, the tunnel's cloudflared file included. */
export function startBlockers(stack: StackConfig, name: ProcessName, env: Env): string[] {
  const out = processBlockers(stack, name, env);
  const path = name === 'tunnel' ? tunnelConfigPath(stack) : null;
  if (path !== null) {
    if (!existsSync(path)) {
      out.push(`${path} does not exist (${isInside(stack.root, path) ? '`llm-gateway tunnel init` writes a template' : `\`llm-gateway tunnel init --file ${path}\` writes a template`})`);
    } else {
      const holes = placeholdersIn(readFileSync(path, 'utf8'));
      if (holes.length > 0) out.push(`fill in ${holes.join(', ')} in ${path}`);
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Cloudflare Tunnel

/** The cloudflared config file the tunnel process uses (its --config), absolute; null if none is given. */
export function tunnelConfigPath(stack: StackConfig): string | null {
  const spec = stack.processes.tunnel;
  const p = optionValue(spec.args, '--config');
  return p === undefined ? null : resolve(spec.cwd, expandHome(p));
}

/** The tunnel name or id after `run` in the tunnel's args (null when not given or a placeholder). */
export function tunnelRunName(stack: StackConfig): string | null {
  const args = stack.processes.tunnel.args;
  const at = args.lastIndexOf('run');
  const name = at >= 0 ? args[at + 1] : undefined;
  return name === undefined || name.startsWith('-') || name.match(PLACEHOLDER) !== null ? null : name;
}

export function isInside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel !== '' && !rel.startsWith('..') && !isAbsolute(rel);
}

/** cloudflared-config.yml with placeholders, its ingress pointing at the gateway. */
export function tunnelTemplate(gatewayPort: number, home = homedir()): string {
  return `# Cloudflare Tunnel for LLM Gateway, written by llm-gateway (menu, or \`llm-gateway tunnel init\`).
# Fill in the three <…> values:
#   cloudflared tunnel login                        # once per machine
#   cloudflared tunnel create <tunnel-name>          # prints the tunnel id, writes the credentials file
#   cloudflared tunnel route dns <tunnel-name> <hostname>
# then put the same tunnel name after "run" in pm2-config.json (tunnel.args).
tunnel: <tunnel-name>
credentials-file: ${join(home, '.cloudflared')}/<tunnel-id>.json

ingress:
  # Only the gateway is published; llama-server stays private on 127.0.0.1.
  - hostname: <hostname>
    service: http://localhost:${gatewayPort}
  # Everything else: 404 (cloudflared needs a last rule without a hostname).
  - service: http_status:404
`;
}

/** What to tell the user after writing the template. */
export function tunnelTemplateHelp(path: string): string[] {
  return [
    `Wrote ${path}. Fill in:`,
    '  <tunnel-name>  the name from `cloudflared tunnel create <tunnel-name>`',
    '  <tunnel-id>    the id it printed (the credentials file ~/.cloudflared/<tunnel-id>.json)',
    '  <hostname>     your public name, e.g. api.example.com (`cloudflared tunnel route dns <tunnel-name> <hostname>`)',
    'and put the tunnel name after "run" in pm2-config.json (tunnel.args).',
  ];
}

export type TemplateOutcome =
  | { readonly status: 'written' | 'exists'; readonly path: string }
  | { readonly status: 'outside'; readonly path: string }
  | { readonly status: 'no-config' };

/**
 * Writes the cloudflared template when the tunnel's --config points inside the project and the file
 * is missing. Never overwrites an existing file; leaves paths outside the project alone.
 */
export function ensureTunnelTemplate(stack: StackConfig, gatewayPort: number): TemplateOutcome {
  const path = tunnelConfigPath(stack);
  if (path === null) return { status: 'no-config' };
  if (existsSync(path)) return { status: 'exists', path };
  if (!isInside(stack.root, path)) return { status: 'outside', path };
  return { status: writeNew(path, tunnelTemplate(gatewayPort)) ? 'written' : 'exists', path };
}

/** Writes the template at `path` if there is no file; false if one exists. */
export function writeTunnelTemplate(path: string, gatewayPort: number): boolean {
  return writeNew(path, tunnelTemplate(gatewayPort));
}

export interface IngressRule {
  readonly hostname?: string;
  readonly path?: string;
  readonly service?: string;
}

export interface TunnelFile {
  readonly tunnel?: string;
  readonly credentialsFile?: string;
  readonly ingress: readonly IngressRule[];
}

function unquote(v: string): string {
  const t = v.trim();
  return (t.startsWith('"') && t.endsWith('"')) || (t.startsWith("'") && t.endsWith("'")) ? t.slice(1, -1) : t;
}

function stripComment(line: string): string {
  const m = /(^|\s)#/.exec(line);
  return m === null ? line : line.slice(0, m.index);
}

/**
 * Reads what the checks need from a cloudflared config: `tunnel`, `credentials-file` and each
 * ingress rule's hostname, path and service. (The subset of YAML cloudflared's docs use; nested
 * originRequest settings are skipped.)
 */
export function parseTunnelFile(text: string): TunnelFile {
  let tunnel: string | undefined;
  let credentialsFile: string | undefined;
  const ingress: Record<string, string>[] = [];
  let inIngress = false;
  let itemIndent = -1;
  for (const rawLine of text.split(/\r?\n/)) {
    const line = stripComment(rawLine).replace(/\s+$/, '');
    if (line.trim() === '') continue;
    const indent = line.length - line.trimStart().length;
    const top = indent === 0 ? /^([A-Za-z0-9_-]+):\s*(.*)$/.exec(line) : null;
    if (top !== null) {
      inIngress = top[1] === 'ingress';
      if (top[1] === 'tunnel') tunnel = unquote(top[2] ?? '');
      if (top[1] === 'credentials-file') credentialsFile = unquote(top[2] ?? '');
      continue;
    }
    if (!inIngress) continue;
    const item = /^(\s*)-\s+([A-Za-z0-9_-]+):\s*(.*)$/.exec(line);
    if (item !== null) {
      itemIndent = (item[1] ?? '').length + 2;
      ingress.push({ [item[2] ?? '']: unquote(item[3] ?? '') });
      continue;
    }
    const field = /^(\s*)([A-Za-z0-9_-]+):\s*(.*)$/.exec(line);
    const current = ingress[ingress.length - 1];
    // Only keys at the rule's own indentation (not originRequest's children).
    if (field !== null && current !== undefined && (field[1] ?? '').length === itemIndent) current[field[2] ?? ''] = unquote(field[3] ?? '');
  }
  return {
    ...(tunnel === undefined ? {} : { tunnel }),
    ...(credentialsFile === undefined ? {} : { credentialsFile }),
    ingress: ingress.map((r) => ({
      ...(r.hostname === undefined ? {} : { hostname: r.hostname }),
      ...(r.path === undefined ? {} : { path: r.path }),
      ...(r.service === undefined ? {} : { service: r.service }),
    })),
  };
}

export function placeholdersIn(text: string): string[] {
  const found = new Set<string>();
  for (const line of text.split(/\r?\n/)) {
    for (const m of stripComment(line).matchAll(PLACEHOLDER)) found.add(m[0]);
  }
  return [...found];
}

/** The local port an ingress service points at (http://localhost:8787 → 8787); null otherwise. */
export function localServicePort(service: string): number | null {
  let url: URL;
  try {
    url = new URL(service);
  } catch {
    return null;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
  return isLocalHost(url.hostname) ? urlPort(url) : null;
}

// ---------------------------------------------------------------------------------------------
// Consistency checks

export type FindingLevel = 'ok' | 'warn' | 'fail';

export interface Finding {
  readonly level: FindingLevel;
  readonly topic: ProcessName;
  readonly text: string;
}

const ok = (topic: ProcessName, text: string): Finding => ({ level: 'ok', topic, text });
const warn = (topic: ProcessName, text: string): Finding => ({ level: 'warn', topic, text });
const fail = (topic: ProcessName, text: string): Finding => ({ level: 'fail', topic, text });

/** The checks on a cloudflared config file: present, filled in, ingress to the gateway, 404 last. */
export function tunnelFindings(path: string, opts: { gatewayPort: number; llamaPort: number | null; runName: string | null }): Finding[] {
  if (!existsSync(path)) return [fail('tunnel', `${path} does not exist (\`llm-gateway tunnel init\` writes a template)`)];
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    return [fail('tunnel', `${path} cannot be read: ${(err as Error).message}`)];
  }
  const holes = placeholdersIn(text);
  if (holes.length > 0) return [fail('tunnel', `${path} still has placeholders: fill in ${holes.join(', ')}`)];
  const file = parseTunnelFile(text);
  const out: Finding[] = [];
  if (file.tunnel === undefined || file.tunnel === '') out.push(fail('tunnel', `${path} names no tunnel (tunnel: <name or id>)`));
  else if (opts.runName !== null && opts.runName !== file.tunnel) {
    out.push(warn('tunnel', `pm2-config.json runs tunnel "${opts.runName}" but ${basename(path)} says tunnel: ${file.tunnel}; cloudflared uses "${opts.runName}"`));
  }
  if (file.credentialsFile === undefined) out.push(warn('tunnel', `${path} has no credentials-file (cloudflared then looks in ~/.cloudflared/)`));
  else if (!existsSync(expandHome(file.credentialsFile))) {
    out.push(fail('tunnel', `credentials file ${file.credentialsFile} not found: \`cloudflared tunnel create <name>\` writes it`));
  } else out.push(ok('tunnel', `credentials file ${file.credentialsFile} present`));

  const rules = file.ingress;
  if (rules.length === 0) return [...out, fail('tunnel', `${path} has no ingress rules; the gateway needs one: service: http://localhost:${opts.gatewayPort}`)];
  const toGateway = rules.filter((r) => r.service !== undefined && localServicePort(r.service) === opts.gatewayPort);
  const toLlama = opts.llamaPort === null ? [] : rules.filter((r) => r.service !== undefined && localServicePort(r.service) === opts.llamaPort);
  for (const r of toLlama) {
    out.push(fail('tunnel', `ingress ${r.hostname ?? '(any host)'} → ${r.service} goes straight to llama-server (port ${opts.llamaPort}), around the gateway's keys: point it at http://localhost:${opts.gatewayPort}`));
  }
  if (toGateway.length === 0) {
    const seen = rules.map((r) => r.service ?? '?').join(', ');
    out.push(fail('tunnel', `no ingress rule points at the gateway (GATEWAY_PORT ${opts.gatewayPort}); found: ${seen}. Use service: http://localhost:${opts.gatewayPort}`));
  } else {
    out.push(ok('tunnel', `ingress ${toGateway.map((r) => `${r.hostname ?? '(any host)'} → ${r.service}`).join(', ')} (the gateway)`));
  }
  const last = rules[rules.length - 1]!;
  if (last.hostname !== undefined || last.path !== undefined) {
    out.push(fail('tunnel', `the last ingress rule must match everything, e.g. "- service: http_status:404" (cloudflared refuses the file otherwise)`));
  } else if (last.service !== 'http_status:404') {
    out.push(warn('tunnel', `the last ingress rule sends every other hostname to ${last.service}; "- service: http_status:404" is safer`));
  }
  return out;
}

/**
 * How the three pieces fit together: llama-server's port vs LLM_UPSTREAM, the tunnel's ingress vs
 * GATEWAY_PORT, placeholders, programs found. `env` is the environment the stack is started from.
 */
export function stackFindings(stack: StackConfig, env: Env, opts: { settings?: boolean } = {}): Finding[] {
  const out: Finding[] = [];
  const gwEnv = gatewayEnvironment(stack, env);
  const upstream = new URL(settingOr(gwEnv, SETTINGS.upstream));
  const gatewayPort = settingOr(gwEnv, SETTINGS.port);
  const { llama, gateway, tunnel } = stack.processes;
  const file = basename(stack.file);

  for (const spec of [llama, gateway, tunnel]) {
    if (!spec.enabled) continue;
    for (const b of processBlockers(stack, spec.name, env, opts)) out.push(fail(spec.name, b));
  }

  const listen = llamaListen(llama);
  if (llama.enabled) {
    if (listen.port === null) out.push(fail('llama', `llama-server's --port in ${file} is not a port number`));
    else if (!isLocalHost(upstream.hostname)) {
      out.push(warn('llama', `LLM_UPSTREAM is ${settingOr(gwEnv, SETTINGS.upstream)} (another machine), but ${file} also starts llama-server here on port ${listen.port}`));
    } else if (urlPort(upstream) !== listen.port) {
      out.push(fail('llama', `port mismatch: LLM_UPSTREAM is ${settingOr(gwEnv, SETTINGS.upstream)} but llama-server is started with --port ${listen.port} (${file}); make them the same`));
    } else out.push(ok('llama', `llama-server port ${listen.port} matches LLM_UPSTREAM`));
    if (!isLocalHost(listen.host) || listen.host === '0.0.0.0' || listen.host === '::') {
      out.push(warn('llama', `llama-server listens on ${listen.host}: anyone on your network can use it without a key; --host 127.0.0.1 keeps it behind the gateway`));
    }
  }

  if (tunnel.enabled) {
    const path = tunnelConfigPath(stack);
    if (path === null) out.push(warn('tunnel', `the tunnel has no --config in ${file}; cloudflared reads ~/.cloudflared/config.yml, which is not checked`));
    else {
      // A rule to llama-server's port would publish it without keys.
      const llamaPort = llama.enabled ? listen.port : isLocalHost(upstream.hostname) ? urlPort(upstream) : null;
      out.push(...tunnelFindings(path, { gatewayPort, llamaPort, runName: tunnelRunName(stack) }));
    }
    if (!gateway.enabled) out.push(warn('tunnel', `the tunnel is on but the gateway is off in ${file}`));
  }
  return out;
}

/**
 * What ecosystem.config.cjs hands PM2: every enabled process of pm2-config.json. Throws a
 * StackConfigError naming each process that could not start as configured.
 */
export function ecosystemApps(file: string, env: Env): Pm2AppDefinition[] {
  const stack = loadStackConfig(file);
  const enabled = PROCESS_NAMES.filter((n) => stack.processes[n].enabled);
  const problems = enabled.flatMap((n) => startBlockers(stack, n, env).map((b) => `${n}: ${b}`));
  if (problems.length > 0) throw new StackConfigError(stack.file, problems);
  return enabled.map((n) => pm2App(stack, n, env));
}
