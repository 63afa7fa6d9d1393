// `llm-gateway doctor`: one checklist for the whole set-up — settings, keys, each llama-server
// (called directly: the gateway never exposes /props), what the running gateway says of them, the
// Cloudflare Tunnel's config, the services several gateways share (Redis, PostgreSQL) and the PM2
// processes, each instance of a gateway in cluster mode. Exit 0 only when nothing failed. It starts
// nothing and writes nothing: no PM2 daemon is spawned, no key database is created, .env is read
// without touching this process's environment.
// Over 400 lines on purpose: one section per part of the set-up, read top to bottom as the report
// prints; each section is a short function of its own (the probing of llama-servers is apart, in
// upstream-probe.ts, of Redis and PostgreSQL in stack/shared-services.ts).
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { NO_KEYS_MESSAGE, type Config } from '../config.js';
import { KeyStore } from '../keys/key-store.js';
import { auditUploadChecks } from './audit.js';
import { commandLine, run } from './common.js';
import { paint, wantsColor, type Color } from './format.js';
import { getOrReason, jsonObject, localUrl } from './http-probe.js';
import { Pm2, daemonRunning, defaultPm2Home, formatBytes, formatUptime, instanceLabel, instancesOf, type ProcessState } from './pm2.js';
import { stackFindings, tunnelFindings, type Finding } from './stack/findings.js';
import {
  DEFAULT_STACK_FILE,
  DEFAULT_TUNNEL_FILE,
  StackConfigError,
  isLlamaApp,
  loadStackConfig,
  type StackConfig,
} from './stack/pm2-config.js';
import {
  gatewayEnvironment,
  gatewaySettings,
  llamaPortsToGuard,
  upstreamTargets,
  type Env,
  type UpstreamTarget,
} from './stack/settings.js';
import { probeSharedServices, serviceFix, type ServiceState } from './stack/shared-services.js';
import { tunnelConfigPath, tunnelRunName } from './stack/tunnel-file.js';
import { modelsOf, modelsText, probeUpstream, propsOf, upstreamState } from './upstream-probe.js';

type Mark = 'pass' | 'warn' | 'fail' | 'skip';

/** The menu key that shows a process's log. */
const LOG_KEY = { llama: 'L', gateway: '9', tunnel: 'T' } as const;

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

function plural(n: number, word: string): string {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function keyChecks(config: Config, dbPath: string): Check[] {
  const envKeys = config.apiKeys.length;
  let dbText: string;
  let dbUsable = 0;
  if (config.databaseUrl !== '') {
    // Keys live in PostgreSQL: the Shared services section says whether it answers.
    const text = `${plural(envKeys, 'key')} in LLM_API_KEYS; the key database is PostgreSQL (GATEWAY_DATABASE_URL, see Shared services)`;
    return [pass(text), adminCheck(config)];
  }
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
  return [total > 0 ? pass(text) : fail(`${text}. ${NO_KEYS_MESSAGE}`), adminCheck(config)];
}

function adminCheck(config: Config): Check {
  return pass(config.adminKey === '' ? 'admin API off (GATEWAY_ADMIN_KEY empty)' : 'admin API on under /admin (GATEWAY_ADMIN_KEY set)');
}

/** Redis and PostgreSQL when set: each answers (latency, prefix, schema) or is a failure with its fix. */
function serviceChecks(states: readonly ServiceState[], config: Config): Check[] {
  return states.map((s) => {
    const head = `${s.service} at ${s.where} (${s.setting})`;
    if (!s.up) return fail(`${head} cannot be reached (${s.detail}): ${serviceFix(s, config)}`);
    return s.level === 'ok'
      ? pass(`${head}: ${s.detail}`)
      : s.level === 'warn'
        ? warn(`${head}: ${s.detail}`)
        : fail(`${head}: ${s.detail}`);
  });
}

/** One line per process of a gateway in cluster mode: PM2 id, pid, state, restarts, uptime, memory. */
function instanceChecks(app: string, wanted: number, ps: readonly ProcessState[]): Check[] {
  const now = Date.now();
  const out = ps.map((p) => {
    const label = instanceLabel(p, ps.length);
    const facts = [`pm2 id ${p.pmId ?? '?'}`, `pid ${p.pid ?? '-'}`, plural(p.restarts, 'restart')];
    if (p.startedAt !== null) facts.push(`up ${formatUptime(now - p.startedAt)}`);
    if (p.memory !== null) facts.push(formatBytes(p.memory));
    const text = `${label} ${p.status} (${facts.join(', ')})`;
    return p.status === 'online' ? pass(text) : fail(`${text}: see its log (pm2 logs ${p.pmId ?? app})`);
  });
  const online = ps.filter((p) => p.status === 'online').length;
  if (ps.length !== wanted)
    out.push(
      warn(
        `${app} runs ${plural(ps.length, 'instance')} under PM2 but ${DEFAULT_STACK_FILE} asks for ${wanted}: restart it to apply (menu key g)`,
      ),
    );
  else if (online === wanted && wanted > 1) out.push(pass(`${app}: all ${wanted} instances online, sharing one port (PM2 cluster mode)`));
  return out;
}

/** One llama-server, asked directly: reachable, ready or loading, its models, slots and context. */
async function upstreamChecks(target: UpstreamTarget, timeoutMs: number): Promise<Check[]> {
  const probe = await probeUpstream(target, timeoutMs);
  const { url } = target;
  const state = upstreamState(probe);
  if (typeof probe.health === 'string') {
    return [
      fail(
        `not reachable at ${url} (${probe.health}): is llama-server running, and is ${target.source} its address? (llm-gateway menu, key 1)`,
      ),
      skip('model and slots: skipped, llama-server is not reachable'),
    ];
  }
  const out: Check[] = [];
  if (state === 'ready') out.push(pass('reachable and ready (GET /health → 200)'));
  else if (state === 'loading')
    out.push(fail('reachable but not ready: still loading the model (GET /health → 503); try again in a moment'));
  else out.push(fail(`reachable but GET /health answered ${probe.health.status}: is ${target.source} llama-server's address?`));

  const { models: answer, props: propsAnswer } = probe;
  const models = modelsOf(answer);
  if (answer === undefined || typeof answer === 'string') out.push(fail(`GET /v1/models failed (${answer ?? 'not asked'})`));
  else if (answer.status === 401)
    out.push(fail(`llama-server wants an API key (GET /v1/models → 401): set ${keySetting(target)} to its --api-key`));
  else if (answer.status !== 200) out.push(fail(`GET /v1/models answered ${answer.status}`));
  else if (models === undefined || models.length === 0) out.push(fail('GET /v1/models lists no model'));
  else out.push(pass(`${models.length === 1 ? 'model' : 'models'}: ${modelsText(models)} (GET /v1/models)`));

  const props = propsOf(propsAnswer);
  if (propsAnswer === undefined || typeof propsAnswer === 'string') out.push(fail(`GET /props failed (${propsAnswer ?? 'not asked'})`));
  else if (props === undefined)
    out.push(warn(`slot count unknown: GET /props answered ${propsAnswer.status} (llama-server started without its props endpoint?)`));
  else {
    const file = props.modelPath === undefined ? '' : `, model file ${props.modelPath}`;
    const ctx = props.nCtx === undefined ? '' : `, ${props.nCtx} tokens of context each`;
    const from = props.nCtx === undefined ? '(GET /props total_slots; -np)' : '(GET /props total_slots, n_ctx; -np, -c)';
    out.push(
      props.slots !== undefined
        ? pass(`${plural(props.slots, 'slot')}: ${plural(props.slots, 'request')} at once${ctx} ${from}${file}`)
        : warn(`GET /props has no total_slots${file}`),
    );
  }
  return out;
}

/** Where the key for a llama-server's --api-key is set. */
function keySetting(target: UpstreamTarget): string {
  return target.source === 'LLM_UPSTREAM' ? 'LLM_UPSTREAM_API_KEY' : `its "api_key" in ${target.source} (or LLM_UPSTREAM_API_KEY)`;
}

/** The running gateway's GET /health: its own view of each llama-server (state, slots, models). */
async function gatewayHealthChecks(config: Config, timeoutMs: number): Promise<Check[]> {
  const url = `${localUrl(config.host, config.port)}/health`;
  const answer = await getOrReason(url, timeoutMs);
  if (typeof answer === 'string') return [skip(`not running here (${answer}): its view of the llama-servers is skipped`)];
  const body = jsonObject(answer.body);
  const upstreams = body?.upstreams;
  const status = typeof body?.status === 'string' ? `: ${body.status}` : '';
  const head = answer.status === 200 ? pass(`answers GET /health → 200${status}`) : warn(`answers GET /health → ${answer.status}${status}`);
  if (!Array.isArray(upstreams)) return [head, skip('it does not list its llama-servers (an older build? npm run build)')];
  return [
    head,
    ...upstreams.map((u: unknown) => {
      const e = (typeof u === 'object' && u !== null ? u : {}) as Record<string, unknown>;
      const name = typeof e.name === 'string' ? e.name : '?';
      const state = typeof e.state === 'string' ? e.state : '?';
      const slots = typeof e.slots === 'number' ? `, ${plural(e.slots, 'slot')}` : '';
      const names = Array.isArray(e.models)
        ? e.models.map((m: unknown) =>
            typeof m === 'string' ? m : typeof (m as { id?: unknown } | null)?.id === 'string' ? (m as { id: string }).id : '?',
          )
        : [];
      const text = `${name}: ${state}${slots}${names.length > 0 ? `, ${names.length === 1 ? 'model' : 'models'} ${names.join(', ')}` : ''}`;
      return state === 'ready' ? pass(text) : state === 'down' ? fail(text) : warn(text);
    }),
  ];
}

function tunnelChecks(
  stack: StackConfig | null,
  stackMissing: boolean,
  config: Config,
  upstreams: readonly string[],
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
  const llamaPorts = llamaPortsToGuard(stack?.processes.llama, upstreams);
  const findings = tunnelFindings(path, { gatewayPort: config.port, llamaPorts, runName: stack === null ? null : tunnelRunName(stack) });
  const present = existsSync(path) ? [pass(`config present: ${path}`)] : [];
  return { path, checks: [...present, ...findings.map(fromFinding)] };
}

async function gatewayAnswers(config: Config, timeoutMs: number): Promise<Check> {
  const url = `${localUrl(config.host, config.port)}/healthz`;
  const answer = await getOrReason(url, timeoutMs);
  return typeof answer !== 'string' && answer.status === 200
    ? pass(`gateway answers on ${url}`)
    : fail(`gateway does not answer on ${url} (${typeof answer === 'string' ? answer : answer.status})`);
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
    for (const spec of stack.apps) {
      const { app } = spec;
      if (!spec.enabled) {
        out.push(skip(`${app}: off in ${DEFAULT_STACK_FILE}`));
        continue;
      }
      const ps = instancesOf(states, app);
      const p = ps[0];
      if (p === undefined) out.push(fail(`${app} is not started under PM2 (llm-gateway menu, key a)`));
      else if (ps.length > 1 || spec.instances > 1 || p.cluster) {
        out.push(...instanceChecks(app, spec.instances, ps));
        if (ps.some((x) => x.status === 'online') && config !== undefined) out.push(await gatewayAnswers(config, timeoutMs));
      } else if (p.status !== 'online')
        out.push(
          fail(
            `${app} is ${p.status} under PM2${p.restarts > 0 ? ` (${plural(p.restarts, 'restart')})` : ''}: see its log (menu key ${LOG_KEY[spec.name]}, or pm2 logs ${app})`,
          ),
        );
      else {
        const up = p.startedAt === null ? '' : `, up ${formatUptime(Date.now() - p.startedAt)}`;
        out.push(pass(`${app} online (pid ${p.pid ?? '?'}${up}, ${plural(p.restarts, 'restart')})`));
        if (spec.name === 'gateway' && config !== undefined) out.push(await gatewayAnswers(config, timeoutMs));
      }
    }
    // A llama-server PM2 still runs under a name the file no longer has (say "llama", after the
    // file switched to a list): it holds its port and its memory.
    for (const p of states) {
      if (!isLlamaApp(p.name) || stack.apps.some((spec) => spec.app === p.name) || p.status === 'stopped') continue;
      out.push(warn(`${p.name} is ${p.status} under PM2 but not in ${DEFAULT_STACK_FILE} any more: pm2 delete ${p.name} (or menu key 4)`));
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
  let targets: UpstreamTarget[] = [];
  let settingsCheck: Check;
  try {
    const env = gatewayEnvironment(stack, opts.env, opts.cwd);
    const settings = gatewaySettings(env);
    config = settings.config;
    if (config !== undefined) targets = upstreamTargets(env, stack?.processes.gateway.cwd ?? opts.cwd);
    settingsCheck =
      settings.config === undefined
        ? fail(settings.error)
        : pass(
            `valid: GATEWAY_HOST ${settings.config.host}, GATEWAY_PORT ${settings.config.port}, ${targets[0]?.source ?? 'LLM_UPSTREAM'} ${targets.map((u) => u.url).join(', ')}`,
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
    const services = await probeSharedServices(config, timeoutMs);
    if (services.length > 0) sections.push({ title: 'Shared services (several gateways)', checks: serviceChecks(services, config) });
    const auditChecks = await auditUploadChecks(config, stack?.processes.gateway.cwd ?? opts.cwd, timeoutMs);
    if (auditChecks.length > 0) sections.push({ title: 'Audit to object storage', checks: auditChecks });
    // One section per llama-server, asked at the same time (each has its own deadline).
    const checks = await Promise.all(targets.map((target) => upstreamChecks(target, timeoutMs)));
    targets.forEach((target, i) => {
      const name = target.name === undefined ? '' : ` ${target.name}`;
      sections.push({ title: `llama-server${name} (${target.url}, called directly)`, checks: checks[i]! });
    });
    const gateway = `${localUrl(config.host, config.port)}/health`;
    sections.push({ title: `Gateway (${gateway}, its view of the llama-servers)`, checks: await gatewayHealthChecks(config, timeoutMs) });
    const upstreamUrls = targets.map((target) => target.url);
    const tunnel = tunnelChecks(stack, stackMissing, config, upstreamUrls, opts.cwd);
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
(LLM_API_KEYS and the key database), each llama-server of LLM_UPSTREAM (reachable, ready or
loading, its models, slots and context, asked directly), the running gateway's view of them (its
GET /health), the audit upload to object storage when GATEWAY_AUDIT_S3_* are set (storage
reachable with the credentials, finished days waiting), the Cloudflare Tunnel's config (present,
pointing at the gateway), the Redis and PostgreSQL several gateways share when GATEWAY_REDIS_URL
or GATEWAY_DATABASE_URL is set (latency, key prefix, schema version; host:port only) and, when
pm2-config.json exists, the PM2 processes (each instance of a gateway in cluster mode). Starts
nothing, changes nothing, never prints a key or a password.

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
