// pm2-config.json, the file that describes the stack `llm-gateway menu` and `ecosystem.config.cjs`
// run under PM2 (llama-server, the gateway, a Cloudflare Tunnel): its defaults, and the check of
// every field, one line per problem. What is built from it lives next door: the gateway's settings
// (settings.ts), PM2's app definitions (pm2-apps.ts), the cloudflared file (tunnel-file.ts) and the
// consistency checks (findings.ts). PM2 itself is driven elsewhere (src/cli/pm2.ts).
import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { expandHome, isDirectory, writeNew } from './paths.js';

export const PROCESS_NAMES = ['llama', 'gateway', 'tunnel'] as const;
export type ProcessName = (typeof PROCESS_NAMES)[number];

export const DEFAULT_STACK_FILE = 'pm2-config.json';
export const DEFAULT_TUNNEL_FILE = './cloudflared-config.yml';

/** `<something>` in a value: a placeholder the user still has to fill in. */
export const PLACEHOLDER = /<[^<>\s][^<>]*>/g;
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
  return typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint' ? String(v) : typeof v;
}

function parseProcess(name: ProcessName, raw: unknown, root: string, problems: string[]): ProcessSpec | undefined {
  if (!isRecord(raw)) {
    problems.push(`${name} must be an object with "command", "args", "cwd", "env" and "enabled", got ${describeValue(raw)}`);
    return undefined;
  }
  const before = problems.length;
  for (const key of Object.keys(raw)) {
    if (key !== '//' && !(FIELDS as readonly string[]).includes(key))
      problems.push(`${name}: unknown field "${key}" (expected ${FIELDS.join(', ')})`);
  }
  const enabled = raw.enabled ?? true;
  if (typeof enabled !== 'boolean') problems.push(`${name}.enabled must be true or false, got ${describeValue(raw.enabled)}`);

  const command = raw.command;
  if (typeof command !== 'string' || command.trim() === '') {
    problems.push(
      `${name}.command must be the program to run, such as "${name === 'gateway' ? 'node' : name === 'llama' ? 'llama-server' : 'cloudflared'}", got ${command === undefined ? 'nothing' : describeValue(command)}`,
    );
  } else if (/\s/.test(command.trim()) && !existsSync(resolve(root, command))) {
    problems.push(
      `${name}.command ${JSON.stringify(command)} contains spaces: put only the program in "command" and each argument as its own string in "args"`,
    );
  }

  const args = raw.args ?? [];
  if (!Array.isArray(args)) {
    problems.push(`${name}.args must be a list of strings such as ["--port", "5857"], got ${describeValue(args)}`);
  } else {
    args.forEach((a: unknown, i) => {
      if (typeof a !== 'string')
        problems.push(
          `${name}.args[${i}] must be a string, got ${describeValue(a)}${typeof a === 'number' ? ` (write "${a}" in quotes)` : ''}`,
        );
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
      else if (typeof v !== 'string')
        problems.push(
          `${name}.env.${k} must be a string, got ${describeValue(v)}${typeof v === 'number' || typeof v === 'boolean' ? ` (write "${String(v)}" in quotes)` : ''}`,
        );
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
  if (!isRecord(raw))
    throw new StackConfigError(absolute, [`must be a JSON object with "llama", "gateway" and "tunnel", got ${describeValue(raw)}`]);
  const problems: string[] = [];
  for (const key of Object.keys(raw)) {
    if (key !== '//' && !(PROCESS_NAMES as readonly string[]).includes(key))
      problems.push(`unknown entry "${key}" (expected ${PROCESS_NAMES.join(', ')})`);
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
