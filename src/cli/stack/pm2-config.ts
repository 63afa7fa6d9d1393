// pm2-config.json, the file that describes the stack `llm-gateway menu` and `ecosystem.config.cjs`
// run under PM2 (one or several llama-servers, the gateway, a Cloudflare Tunnel): its defaults, and
// the check of every field, one line per problem. What is built from it lives next door: the gateway's settings
// (settings.ts), PM2's app definitions (pm2-apps.ts), the cloudflared file (tunnel-file.ts) and the
// consistency checks (findings.ts). PM2 itself is driven elsewhere (src/cli/pm2.ts).
import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { expandHome, isDirectory, isNodeCommand, writeNew } from './paths.js';

export const PROCESS_NAMES = ['llama', 'gateway', 'tunnel'] as const;
export type ProcessName = (typeof PROCESS_NAMES)[number];

export const DEFAULT_STACK_FILE = 'pm2-config.json';
export const DEFAULT_TUNNEL_FILE = './cloudflared-config.yml';

/** `<something>` in a value: a placeholder the user still has to fill in. */
export const PLACEHOLDER = /<[^<>\s][^<>]*>/g;
const ENV_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;
const FIELDS = ['enabled', 'command', 'args', 'cwd', 'env'] as const;
const LLAMA_FIELDS = ['name', ...FIELDS] as const;
const GATEWAY_FIELDS = [...FIELDS, 'instances'] as const;
/**
 * The most gateway processes one pm2-config.json may ask for. Far above what a box needs (the
 * gateway waits on llama-server, not on its CPU); a typo such as 40 instead of 4 is refused.
 */
export const MAX_GATEWAY_INSTANCES = 32;
/** A llama process's "name": what PM2 calls it after "llama-" (also its log files' names). */
const LLAMA_NAME = /^[A-Za-z0-9][A-Za-z0-9_.]*$/;

export interface ProcessSpec {
  /** Which piece of the stack it is. */
  readonly name: ProcessName;
  /** What PM2 calls it: llama (one llama-server), llama-1, llama-2 … or llama-<name> (a list), gateway, tunnel. */
  readonly app: string;
  /** Where it is in pm2-config.json, for messages: llama, llama[1], gateway, tunnel. */
  readonly path: string;
  readonly enabled: boolean;
  readonly command: string;
  readonly args: readonly string[];
  /** Absolute: relative paths in the file are taken from the file's folder. */
  readonly cwd: string;
  readonly env: Readonly<Record<string, string>>;
  /**
   * How many processes PM2 runs of it: 1 (fork mode), or for the gateway N ≥ 2 in PM2 cluster mode
   * (all share GATEWAY_PORT through Node's cluster module). Always 1 for llama-server and the tunnel.
   */
  readonly instances: number;
}

export interface StackConfig {
  /** Absolute path of pm2-config.json. */
  readonly file: string;
  /** Its folder: the project the stack lives in. */
  readonly root: string;
  readonly processes: StackProcesses;
  /** Every process, in start order: the llama-servers, the gateway, the tunnel. */
  readonly apps: readonly ProcessSpec[];
}

interface StackProcesses {
  /** One (the "llama" object) or several ("llama" as a list), in the file's order. */
  readonly llama: readonly ProcessSpec[];
  readonly gateway: ProcessSpec;
  readonly tunnel: ProcessSpec;
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

/** pm2-config.json as committed in pm2-config.example.json ("//" keys are comments). */
export function defaultStackConfig(): Record<string, unknown> {
  return {
    '//': [
      'The processes that `llm-gateway menu` (npm run menu) and `pm2 start ecosystem.config.cjs` run.',
      'pm2-config.json is yours (git ignores it): the menu writes it from these defaults on first run,',
      'or: cp pm2-config.example.json pm2-config.json. Put your model file where it says',
      '<path/to/model.gguf> and your tunnel where it says <tunnel-name>. Each process has "enabled"',
      '(false leaves it out), "command" (a program in PATH, or a path), "args" (one string per',
      'argument), "cwd" (relative to this file) and "env" (extra variables). Keys that start with "//"',
      'are comments.',
    ],
    llama: {
      '//': 'Add your usual options (-c, -ngl, -a …). --port must match LLM_UPSTREAM in .env; --host 127.0.0.1 keeps it private.',
      enabled: true,
      command: 'llama-server',
      args: ['-m', '<path/to/model.gguf>', '--host', '127.0.0.1', '--port', '5857', '-np', '4'],
      cwd: '.',
      env: {},
    },
    '//llama as a list': {
      '//': [
        'Several llama-servers (a chat model and an embedding model, one per GPU …): make "llama" a list',
        'like the one below, each process with its own --port and the fields above, and list every URL in',
        'LLM_UPSTREAM (LLM_UPSTREAM=http://127.0.0.1:5857,http://127.0.0.1:5858). PM2 names them',
        'llama-<name>, or llama-1, llama-2 … without "name". The menu starts, stops and shows them all.',
      ],
      llama: [
        {
          name: 'chat',
          command: 'llama-server',
          args: ['-m', '<path/to/model.gguf>', '--host', '127.0.0.1', '--port', '5857', '-np', '4'],
        },
        {
          name: 'embed',
          command: 'llama-server',
          args: ['-m', '<path/to/embed.gguf>', '--embeddings', '--host', '127.0.0.1', '--port', '5858'],
        },
      ],
    },
    gateway: {
      '//': [
        'Reads .env in cwd like `npm start`; run `npm run build` after updating the code.',
        'instances: 2 or more runs that many gateways on GATEWAY_PORT (PM2 cluster mode); they need',
        'GATEWAY_REDIS_URL to share limits and slots (README, Running several gateways).',
      ],
      enabled: true,
      command: 'node',
      args: ['dist/server.js'],
      cwd: '.',
      env: {},
      instances: 1,
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

/** llama, llama-1, llama-chat: a name the stack gives llama-servers under PM2. */
export function isLlamaApp(name: string): boolean {
  return /^llama(-|$)/.test(name);
}

/** "//", "//llama as a list" …: a comment, skipped by the checks. */
function isComment(key: string): boolean {
  return key.startsWith('//');
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'string') return JSON.stringify(v);
  if (typeof v === 'object') return 'an object';
  return typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint' ? String(v) : typeof v;
}

/** The program a process usually runs, for messages. */
const USUAL_COMMAND: Readonly<Record<ProcessName, string>> = { llama: 'llama-server', gateway: 'node', tunnel: 'cloudflared' };

/**
 * One process's fields. `path` names it in messages (llama, llama[1], gateway); `app` is its PM2
 * name. A llama process may have a "name" (it is then llama-<name> under PM2).
 */
function parseProcess(
  name: ProcessName,
  at: { path: string; app: string },
  raw: unknown,
  root: string,
  problems: string[],
): ProcessSpec | undefined {
  const { path } = at;
  const fields: readonly string[] = name === 'llama' ? LLAMA_FIELDS : name === 'gateway' ? GATEWAY_FIELDS : FIELDS;
  if (!isRecord(raw)) {
    problems.push(`${path} must be an object with "command", "args", "cwd", "env" and "enabled", got ${describeValue(raw)}`);
    return undefined;
  }
  const before = problems.length;
  for (const key of Object.keys(raw)) {
    if (!isComment(key) && !fields.includes(key)) problems.push(`${path}: unknown field "${key}" (expected ${fields.join(', ')})`);
  }
  let app = at.app;
  if (name === 'llama' && raw.name !== undefined) {
    if (typeof raw.name !== 'string' || !LLAMA_NAME.test(raw.name))
      problems.push(
        `${path}.name must be a short name of letters, digits, "_" and "." such as "chat" (PM2 calls it llama-<name>), got ${describeValue(raw.name)}`,
      );
    else app = `llama-${raw.name}`;
  }
  const enabled = raw.enabled ?? true;
  if (typeof enabled !== 'boolean') problems.push(`${path}.enabled must be true or false, got ${describeValue(raw.enabled)}`);

  const command = raw.command;
  if (typeof command !== 'string' || command.trim() === '') {
    problems.push(
      `${path}.command must be the program to run, such as "${USUAL_COMMAND[name]}", got ${command === undefined ? 'nothing' : describeValue(command)}`,
    );
  } else if (/\s/.test(command.trim()) && !existsSync(resolve(root, command))) {
    problems.push(
      `${path}.command ${JSON.stringify(command)} contains spaces: put only the program in "command" and each argument as its own string in "args"`,
    );
  }

  const args = raw.args ?? [];
  if (!Array.isArray(args)) {
    problems.push(`${path}.args must be a list of strings such as ["--port", "5857"], got ${describeValue(args)}`);
  } else {
    args.forEach((a: unknown, i) => {
      if (typeof a !== 'string')
        problems.push(
          `${path}.args[${i}] must be a string, got ${describeValue(a)}${typeof a === 'number' ? ` (write "${a}" in quotes)` : ''}`,
        );
    });
  }

  const cwdRaw = raw.cwd ?? '.';
  let cwd = root;
  if (typeof cwdRaw !== 'string' || cwdRaw.trim() === '') {
    problems.push(`${path}.cwd must be a folder (relative to ${basename(DEFAULT_STACK_FILE)}'s folder), got ${describeValue(cwdRaw)}`);
  } else {
    cwd = resolve(root, expandHome(cwdRaw));
    if (!isDirectory(cwd)) problems.push(`${path}.cwd ${JSON.stringify(cwdRaw)} is not a folder (${cwd})`);
  }

  const envRaw = raw.env ?? {};
  const env: Record<string, string> = {};
  if (!isRecord(envRaw)) {
    problems.push(`${path}.env must be an object of variables such as {"LOG_LEVEL": "info"}, got ${describeValue(envRaw)}`);
  } else {
    for (const [k, v] of Object.entries(envRaw)) {
      if (!ENV_NAME.test(k)) problems.push(`${path}.env: ${JSON.stringify(k)} is not a valid variable name`);
      else if (typeof v !== 'string')
        problems.push(
          `${path}.env.${k} must be a string, got ${describeValue(v)}${typeof v === 'number' || typeof v === 'boolean' ? ` (write "${String(v)}" in quotes)` : ''}`,
        );
      else env[k] = v;
    }
  }
  const instances = name === 'gateway' ? parseInstances(path, raw.instances, command, problems) : 1;
  if (problems.length > before) return undefined;
  return { name, app, path, enabled: enabled as boolean, command: (command as string).trim(), args: args as string[], cwd, env, instances };
}

/**
 * The gateway's "instances": a whole number from 1 to MAX_GATEWAY_INSTANCES (default 1). Two or
 * more run in PM2 cluster mode, which forks Node.js workers itself: the command must be node.
 */
function parseInstances(path: string, raw: unknown, command: unknown, problems: string[]): number {
  if (raw === undefined) return 1;
  const wants = `a whole number of gateway processes from 1 to ${MAX_GATEWAY_INSTANCES}, such as 4`;
  if (typeof raw === 'string' && /^\d+$/.test(raw.trim())) {
    problems.push(`${path}.instances must be ${wants}, got ${describeValue(raw)} (write ${raw.trim()} without quotes)`);
    return 1;
  }
  if (typeof raw !== 'number' || !Number.isInteger(raw) || raw < 1 || raw > MAX_GATEWAY_INSTANCES) {
    problems.push(`${path}.instances must be ${wants}, got ${describeValue(raw)}`);
    return 1;
  }
  if (raw > 1 && typeof command === 'string' && command.trim() !== '' && !isNodeCommand(command.trim()))
    problems.push(
      `${path}.instances ${raw} needs "command": "node": PM2 runs several instances in cluster mode, which starts Node.js scripts only (got ${JSON.stringify(command)})`,
    );
  return raw;
}

/**
 * "llama": one process (an object, PM2's "llama") or a list of them (llama-1, llama-2 … or
 * llama-<name>), each checked field by field; two with the same PM2 name are refused.
 */
function parseLlamas(raw: unknown, root: string, problems: string[]): ProcessSpec[] | undefined {
  if (!Array.isArray(raw)) {
    const one = parseProcess('llama', { path: 'llama', app: 'llama' }, raw, root, problems);
    return one === undefined ? undefined : [one];
  }
  if (raw.length === 0) {
    problems.push('llama is an empty list: give it one process or more (or one with "enabled": false to run no llama-server)');
    return undefined;
  }
  const before = problems.length;
  const specs = raw.map((entry: unknown, i) =>
    parseProcess('llama', { path: `llama[${i}]`, app: `llama-${i + 1}` }, entry, root, problems),
  );
  const seen = new Map<string, string>();
  for (const spec of specs) {
    if (spec === undefined) continue;
    const first = seen.get(spec.app);
    if (first !== undefined) problems.push(`${spec.path}: PM2 would call it ${spec.app} like ${first}; give each a different "name"`);
    else seen.set(spec.app, spec.path);
  }
  return problems.length > before ? undefined : (specs as ProcessSpec[]);
}

/** Checks every field of a parsed pm2-config.json; throws StackConfigError listing each problem. */
export function parseStackConfig(raw: unknown, file: string): StackConfig {
  const absolute = resolve(file);
  const root = dirname(absolute);
  if (!isRecord(raw))
    throw new StackConfigError(absolute, [`must be a JSON object with "llama", "gateway" and "tunnel", got ${describeValue(raw)}`]);
  const problems: string[] = [];
  for (const key of Object.keys(raw)) {
    if (!isComment(key) && !(PROCESS_NAMES as readonly string[]).includes(key))
      problems.push(`unknown entry "${key}" (expected ${PROCESS_NAMES.join(', ')})`);
  }
  const missing = (name: ProcessName): boolean => {
    if (name in raw) return false;
    problems.push(`"${name}" is missing (set "enabled": false in it to leave ${name} out)`);
    return true;
  };
  const llama = missing('llama') ? undefined : parseLlamas(raw.llama, root, problems);
  const [gateway, tunnel] = (['gateway', 'tunnel'] as const).map((name) =>
    missing(name) ? undefined : parseProcess(name, { path: name, app: name }, raw[name], root, problems),
  );
  if (problems.length > 0 || llama === undefined || gateway === undefined || tunnel === undefined)
    throw new StackConfigError(absolute, problems);
  return { file: absolute, root, processes: { llama, gateway, tunnel }, apps: [...llama, gateway, tunnel] };
}

/** Reads and checks pm2-config.json. Throws StackConfigError (with `missing` set when there is no file). */
export function loadStackConfig(file: string): StackConfig {
  const absolute = resolve(file);
  let text: string;
  try {
    text = readFileSync(absolute, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT')
      throw new StackConfigError(
        absolute,
        [`not found: cp pm2-config.example.json ${basename(absolute)}, then fill in the model path`],
        true,
      );
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
