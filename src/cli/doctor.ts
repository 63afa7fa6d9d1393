// `llm-gateway doctor`: one checklist for the whole set-up — settings, keys, llama-server (called
// directly: the gateway never exposes /props), the Cloudflare Tunnel's config and the PM2
// processes. Exit 0 only when nothing failed. It starts nothing and writes nothing: no PM2 daemon
// is spawned, no key database is created, .env is read without touching this process's environment.
// Over 300 lines on purpose: one section per part of the set-up, read top to bottom as the report
// prints; each section is a short function of its own.
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { NO_KEYS_MESSAGE, type Config } from '../config.js';
import { KeyStore } from '../keys/key-store.js';
import { commandLine, run } from './common.js';
import { paint, wantsColor, type Color } from './format.js';
import { httpGet, localUrl, type HttpAnswer } from './http-probe.js';
import { Pm2, daemonRunning, defaultPm2Home, formatUptime } from './pm2.js';
import { stackFindings, tunnelFindings, type Finding } from './stack/findings.js';
import {
  DEFAULT_STACK_FILE,
  DEFAULT_TUNNEL_FILE,
  PROCESS_NAMES,
  StackConfigError,
  loadStackConfig,
  type StackConfig,
} from './stack/pm2-config.js';
import { gatewayEnvironment, gatewaySettings, llamaPortToGuard, type Env } from './stack/settings.js';
import { tunnelConfigPath, tunnelRunName } from './stack/tunnel-file.js';

type Mark = 'pass' | 'warn' | 'fail' | 'skip';

interface Check {
  readonly mark: Mark;
  readonly text: string;
}

export interface Section {
  readonly title: string;
  readonly checks: readonly Check[];
}

export interface DoctorOptions {
  /** The environment (without .env, which is read the way the gateway reads it). */
  readonly env: Env;
  /** Where .env, the key database and cloudflared-config.yml are looked for without pm2-config.json. */
  readonly cwd: string;
  /** pm2-config.json; when it does not exist, the PM2 checks are skipped. */
  readonly configPath: string;
  readonly pm2Home: string;
  /** An open PM2 connection to use (the menu's); otherwise one is opened only if a daemon runs. */
  readonly pm2?: Pm2;
  /** Per HTTP call to llama-server or the gateway. */
  readonly timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 5000;

const pass = (text: string): Check => ({ mark: 'pass', text });
const warn = (text: string): Check => ({ mark: 'warn', text });
const fail = (text: string): Check => ({ mark: 'fail', text });
const skip = (text: string): Check => ({ mark: 'skip', text });

function fromFinding(f: Finding): Check {
  return { mark: f.level === 'ok' ? 'pass' : f.level, text: f.text };
}

/** GET url; a string is the reason it could not be reached. */
async function get(url: string, timeoutMs: number, authorization?: string): Promise<HttpAnswer | string> {
  const answer = await httpGet(url, timeoutMs, authorization);
  if ('status' in answer) return answer;
  if (answer.timedOut) return `no answer within ${timeoutMs} ms`;
  const cause = answer.error.cause;
  return cause?.code ?? cause?.message ?? answer.error.message;
}

function json(body: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(body);
    return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function keyChecks(config: Config, dbPath: string): Check[] {
  const envKeys = config.apiKeys.length;
  let dbText: string;
  let dbUsable = 0;
  if (!existsSync(dbPath)) dbText = `no key database yet (${config.db})`;
  else {
    let store: KeyStore;
    try {
      store = KeyStore.open(dbPath);
    } catch (err) {
      return [fail((err as Error).message)];
    }
    try {
      const now = Date.now();
      const all = store.list();
      dbUsable = all.filter((k) => k.enabled && (k.expiresAt === null || k.expiresAt > now)).length;
      const held = all.length - dbUsable;
      dbText = `${dbUsable} of ${all.length} in the key database (${config.db})${held > 0 ? `; ${held} disabled or expired` : ''}`;
    } finally {
      store.close();
    }
  }
  const total = envKeys + dbUsable;
  const text = `${plural(total, 'key')} accepted: ${envKeys} in LLM_API_KEYS, ${dbText}`;
  return [
    total > 0 ? pass(text) : fail(`${text}. ${NO_KEYS_MESSAGE}`),
    pass(config.adminKey === '' ? 'admin API off (GATEWAY_ADMIN_KEY empty)' : 'admin API on under /admin (GATEWAY_ADMIN_KEY set)'),
  ];
}

async function upstreamChecks(config: Config, timeoutMs: number): Promise<Check[]> {
  const base = config.upstreams[0]!;
  const auth = config.upstreamApiKey === '' ? undefined : `Bearer ${config.upstreamApiKey}`;
  const health = await get(`${base}/health`, timeoutMs);
  if (typeof health === 'string') {
    return [
      fail(`not reachable at ${base} (${health}): is llama-server running, and is LLM_UPSTREAM its address? (llm-gateway menu, key 1)`),
      skip('model and slots: skipped, llama-server is not reachable'),
    ];
  }
  const out: Check[] = [];
  if (health.status === 200) out.push(pass('reachable and ready (GET /health → 200)'));
  else if (health.status === 503)
    out.push(fail('reachable but not ready: still loading the model (GET /health → 503); try again in a moment'));
  else out.push(fail(`reachable but GET /health answered ${health.status}: is LLM_UPSTREAM llama-server's address?`));

  const models = await get(`${base}/v1/models`, timeoutMs, auth);
  if (typeof models === 'string') out.push(fail(`GET /v1/models failed (${models})`));
  else if (models.status === 401)
    out.push(fail(`llama-server wants an API key (GET /v1/models → 401): set LLM_UPSTREAM_API_KEY to its --api-key`));
  else if (models.status !== 200) out.push(fail(`GET /v1/models answered ${models.status}`));
  else {
    const data = json(models.body)?.data;
    const ids = Array.isArray(data) ? data.map((m: unknown) => idText((m as { id?: unknown }).id)) : [];
    out.push(ids.length > 0 ? pass(`model: ${ids.join(', ')} (GET /v1/models)`) : fail('GET /v1/models lists no model'));
  }

  const props = await get(`${base}/props`, timeoutMs, auth);
  if (typeof props === 'string') out.push(fail(`GET /props failed (${props})`));
  else if (props.status !== 200)
    out.push(warn(`slot count unknown: GET /props answered ${props.status} (llama-server started without its props endpoint?)`));
  else {
    const p = json(props.body) ?? {};
    const slots = p.total_slots;
    const file = typeof p.model_path === 'string' ? `, model file ${p.model_path}` : '';
    out.push(
      typeof slots === 'number'
        ? pass(`${plural(slots, 'slot')}: ${slots} requests at once (GET /props total_slots; -np)${file}`)
        : warn(`GET /props has no total_slots${file}`),
    );
  }
  return out;
}

function tunnelChecks(
  stack: StackConfig | null,
  stackMissing: boolean,
  config: Config,
  cwd: string,
): { path: string | null; checks: Check[] } {
  if (stack !== null && !stack.processes.tunnel.enabled)
    return { path: null, checks: [skip(`the tunnel is off in ${DEFAULT_STACK_FILE}`)] };
  let path: string | null;
  if (stack !== null) path = tunnelConfigPath(stack);
  else if (stackMissing) path = existsSync(resolve(cwd, DEFAULT_TUNNEL_FILE)) ? resolve(cwd, DEFAULT_TUNNEL_FILE) : null;
  else return { path: null, checks: [skip(`skipped: ${DEFAULT_STACK_FILE} has problems (see PM2)`)] };
  if (path === null) {
    return {
      path: null,
      checks: [
        skip(
          stack === null
            ? `no ${DEFAULT_TUNNEL_FILE} here (llm-gateway tunnel init writes one)`
            : `the tunnel has no --config in ${DEFAULT_STACK_FILE}; ~/.cloudflared/config.yml is not checked`,
        ),
      ],
    };
  }
  const llamaPort = llamaPortToGuard(stack?.processes.llama, new URL(config.upstreams[0]!));
  const findings = tunnelFindings(path, { gatewayPort: config.port, llamaPort, runName: stack === null ? null : tunnelRunName(stack) });
  const present = existsSync(path) ? [pass(`config present: ${path}`)] : [];
  return { path, checks: [...present, ...findings.map(fromFinding)] };
}

async function pm2Checks(stack: StackConfig, opts: DoctorOptions, config: Config | undefined, timeoutMs: number): Promise<Check[]> {
  const out = stackFindings(stack, opts.env, { settings: false })
    .filter((f) => f.topic !== 'tunnel')
    .map(fromFinding);
  let pm2 = opts.pm2;
  if (pm2 === undefined) {
    if (!daemonRunning(opts.pm2Home)) {
      return [
        ...out,
        fail(
          `the PM2 daemon is not running (PM2_HOME ${opts.pm2Home}): start the stack with \`llm-gateway menu\` (key a) or \`pm2 start ecosystem.config.cjs\``,
        ),
      ];
    }
    pm2 = await Pm2.connect(opts.pm2Home);
  }
  try {
    const states = await pm2.list();
    for (const name of PROCESS_NAMES) {
      if (!stack.processes[name].enabled) {
        out.push(skip(`${name}: off in ${DEFAULT_STACK_FILE}`));
        continue;
      }
      const p = states.find((s) => s.name === name);
      if (p === undefined) out.push(fail(`${name} is not started under PM2 (llm-gateway menu, key a)`));
      else if (p.status !== 'online')
        out.push(
          fail(
            `${name} is ${p.status} under PM2${p.restarts > 0 ? ` (${plural(p.restarts, 'restart')})` : ''}: see its log (menu key ${name === 'gateway' ? '9' : name === 'llama' ? 'L' : 'T'}, or pm2 logs ${name})`,
          ),
        );
      else {
        const up = p.startedAt === null ? '' : `, up ${formatUptime(Date.now() - p.startedAt)}`;
        out.push(pass(`${name} online (pid ${p.pid ?? '?'}${up}, ${plural(p.restarts, 'restart')})`));
        if (name === 'gateway' && config !== undefined) {
          const url = `${localUrl(config.host, config.port)}/healthz`;
          const answer = await get(url, timeoutMs);
          out.push(
            typeof answer !== 'string' && answer.status === 200
              ? pass(`gateway answers on ${url}`)
              : fail(`gateway does not answer on ${url} (${typeof answer === 'string' ? answer : answer.status})`),
          );
        }
      }
    }
  } finally {
    if (opts.pm2 === undefined) await pm2.disconnect();
  }
  return out;
}

/** Runs every check; nothing is started or written. */
export async function doctor(opts: DoctorOptions): Promise<Section[]> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const sections: Section[] = [];
  const configFile = resolve(opts.cwd, opts.configPath);

  let stack: StackConfig | null = null;
  let stackError: StackConfigError | undefined;
  const stackMissing = !existsSync(configFile);
  if (!stackMissing) {
    try {
      stack = loadStackConfig(configFile);
    } catch (err) {
      if (!(err instanceof StackConfigError)) throw err;
      stackError = err;
    }
  }

  // Settings as the gateway will see them (under PM2: its cwd's .env and pm2-config.json's env).
  let config: Config | undefined;
  let settingsCheck: Check;
  try {
    const env = gatewayEnvironment(stack, opts.env, opts.cwd);
    const settings = gatewaySettings(env);
    config = settings.config;
    settingsCheck =
      settings.config === undefined
        ? fail(settings.error)
        : pass(
            `valid: GATEWAY_HOST ${settings.config.host}, GATEWAY_PORT ${settings.config.port}, LLM_UPSTREAM ${settings.config.upstreams.join(', ')}`,
          );
  } catch (err) {
    settingsCheck = fail((err as Error).message);
  }
  const where =
    stack === null ? '.env and environment' : `.env in ${stack.processes.gateway.cwd}, environment, ${DEFAULT_STACK_FILE} gateway.env`;
  sections.push({ title: `Settings (${where})`, checks: [settingsCheck] });

  const skipped = skip('skipped: the settings are not valid');
  if (config === undefined) {
    sections.push(
      { title: 'Keys', checks: [skipped] },
      { title: 'llama-server', checks: [skipped] },
      { title: 'Cloudflare Tunnel', checks: [skipped] },
    );
  } else {
    const dbPath = resolve(stack?.processes.gateway.cwd ?? opts.cwd, config.db);
    sections.push({ title: 'Keys', checks: keyChecks(config, dbPath) });
    sections.push({ title: `llama-server (${config.upstreams.join(', ')}, called directly)`, checks: await upstreamChecks(config, timeoutMs) });
    const tunnel = tunnelChecks(stack, stackMissing, config, opts.cwd);
    sections.push({ title: 'Cloudflare Tunnel', checks: tunnel.checks });
  }

  const pm2Title = `PM2 (${configFile}, PM2_HOME ${opts.pm2Home})`;
  if (stackMissing)
    sections.push({
      title: 'PM2',
      checks: [skip(`no ${DEFAULT_STACK_FILE}: the stack is not run by PM2 here (llm-gateway menu writes one)`)],
    });
  else if (stackError !== undefined)
    sections.push({ title: pm2Title, checks: stackError.problems.map((p) => fail(`${DEFAULT_STACK_FILE}: ${p}`)) });
  else if (stack !== null) sections.push({ title: pm2Title, checks: await pm2Checks(stack, opts, config, timeoutMs) });
  return sections;
}

function failures(sections: readonly Section[]): number {
  return sections.reduce((n, s) => n + s.checks.filter((c) => c.mark === 'fail').length, 0);
}

/** The checklist as text, ending with the verdict. */
export function formatDoctor(sections: readonly Section[], color: boolean): string {
  const p = (c: Color, text: string): string => paint(color, c, text);
  const marks: Record<Mark, string> = { pass: p('green', '✔'), warn: p('yellow', '⚠'), fail: p('red', '✘'), skip: p('dim', '–') };
  const lines = [p('bold', 'LLM Gateway doctor'), ''];
  for (const s of sections) {
    lines.push(p('bold', s.title));
    for (const c of s.checks) lines.push(`  ${marks[c.mark]} ${c.text}`);
    lines.push('');
  }
  const all = sections.flatMap((s) => s.checks);
  const counted = all.filter((c) => c.mark !== 'skip').length;
  const failed = failures(sections);
  const warned = all.filter((c) => c.mark === 'warn').length;
  const warnings = warned > 0 ? ` (${plural(warned, 'warning')})` : '';
  lines.push(
    failed === 0
      ? p('green', `✔ All ${counted} checks passed${warnings}.`)
      : p('red', `✘ ${failed} of ${counted} checks failed${warnings}.`),
  );
  return `${lines.join('\n')}\n`;
}

const DOCTOR_HELP = `Usage: llm-gateway doctor [--config FILE]

Checks the whole set-up and prints a checklist: settings (.env and environment), keys
(LLM_API_KEYS and the key database), llama-server (reachable, ready, its model and slot count,
asked directly), the Cloudflare Tunnel's config (present, pointing at the gateway) and, when
pm2-config.json exists, the PM2 processes. Starts nothing, changes nothing, never prints a key.

Exit codes: 0 every check passed, 1 something failed, 2 usage.

Options:
  --config FILE   the PM2 stack's config (default ./${DEFAULT_STACK_FILE})
  -h, --help      show help
`;

export function doctorCommand(argv: string[]): Promise<number> {
  return run('llm-gateway doctor --help', async () => {
    const args = commandLine(argv, { config: { type: 'string' } }, DOCTOR_HELP);
    if (args === null) return 0;
    const sections = await doctor({
      env: process.env,
      cwd: process.cwd(),
      configPath: args.values.config ?? DEFAULT_STACK_FILE,
      pm2Home: defaultPm2Home(),
    });
    process.stdout.write(formatDoctor(sections, wantsColor(process.stdout, process.env)));
    return failures(sections) === 0 ? 0 : 1;
  });
}

/** A model id as llama-server lists it (a string), or '?' for anything else. */
function idText(id: unknown): string {
  return typeof id === 'string' || typeof id === 'number' ? String(id) : '?';
}
