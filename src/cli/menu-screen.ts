// What the menu shows: the screen it writes to (cleared between redraws on a terminal, plain lines
// from a pipe), the status page (the PM2 table, the health lines, the problems of the stack, the
// keys), and the health lines themselves (each llama-server's state, models and slots, the
// gateway's /healthz, and the Redis and PostgreSQL several gateways share when they are set).
import { basename } from 'node:path';
import { paint, table, type Color } from './format.js';
import { httpGet, localUrl } from './http-probe.js';
import { formatBytes, formatUptime, instanceLabel, instancesOf, type ProcessState } from './pm2.js';
import type { Finding } from './stack/findings.js';
import { PROCESS_NAMES, isLlamaApp, type StackConfig, type StackConfigError } from './stack/pm2-config.js';
import { gatewayEnvironment, gatewaySettings, upstreamTargets, type Env } from './stack/settings.js';
import { probeSharedServices, type ServiceState } from './stack/shared-services.js';
import { modelsOf, modelsText, probeUpstream, propsOf, upstreamState, type UpstreamProbe } from './upstream-probe.js';

const HEALTH_TIMEOUT_MS = 1500;

export const KEY_HELP = [
  'a/7 start all      1 start llama     4 stop llama     l restart llama',
  'k/8 stop all       2 start gateway   5 stop gateway   g restart gateway',
  '0   refresh        3 start tunnel    6 stop tunnel    t restart tunnel',
  '9   gateway logs   L llama logs      T tunnel logs    d doctor    q quit',
];

export interface MenuOutput extends NodeJS.WritableStream {
  isTTY?: boolean;
}

export class Screen {
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
    return paint(this.color, color, text);
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

/** What the status page shows, gathered before it is drawn. */
export interface Status {
  readonly configPath: string;
  readonly pm2Home: string;
  readonly states: readonly ProcessState[];
  readonly health: readonly string[];
  /** pm2-config.json as read; null with `error` when it has problems. */
  readonly stack: StackConfig | null;
  readonly error: StackConfigError | undefined;
  /** The stack's findings that are not ok (for a config without problems). */
  readonly findings: readonly Pick<Finding, 'level' | 'text'>[];
}

/** The status page: processes, health, problems, the notes of the last action and the keys. */
export function drawStatus(s: Screen, status: Status): void {
  const { stack, error, states } = status;
  s.clear();
  if (!s.clears) s.line();
  s.line(s.paint('bold', 'LLM Gateway · PM2 menu'));
  s.line(s.paint('dim', `config ${status.configPath} · PM2_HOME ${status.pm2Home}`));
  s.line();
  const rows = [['NAME', 'STATE', 'PID', 'UPTIME', 'RESTARTS', 'MEMORY', 'CPU']];
  const now = Date.now();
  const stateColors: Color[] = [];
  // The file's processes (every llama-server of a list), then a llama-server PM2 still runs under a
  // name the file no longer has.
  const listed = (stack?.apps ?? PROCESS_NAMES.map((app) => ({ app, enabled: true }))).map((p) => ({
    app: p.app,
    enabled: p.enabled,
    stale: false,
  }));
  const left = states.filter((p) => isLlamaApp(p.name) && !listed.some((l) => l.app === p.name));
  // A gateway in cluster mode is one row per instance: gateway:0, gateway:1 … (PM2 id in `pm2 ls`).
  type Line = { name: string; enabled: boolean; stale: boolean; p: ProcessState | undefined };
  const lines = [...listed, ...left.map((p) => ({ app: p.name, enabled: true, stale: true }))].flatMap((l): Line[] => {
    const ps = instancesOf(states, l.app);
    return ps.length === 0 ? [{ ...l, name: l.app, p: undefined }] : ps.map((p) => ({ ...l, name: instanceLabel(p, ps.length), p }));
  });
  for (const { name, enabled, stale, p } of lines) {
    const state = p?.status ?? (enabled ? 'not started' : 'off');
    stateColors.push(
      state === 'online' ? 'green' : state === 'errored' ? 'red' : p === undefined || state === 'stopped' ? 'dim' : 'yellow',
    );
    rows.push([
      name,
      stale ? `${state} (not in config)` : p !== undefined && !enabled ? `${state} (off)` : state,
      p?.pid === null || p === undefined ? '-' : String(p.pid),
      p?.startedAt === null || p === undefined ? '-' : formatUptime(now - p.startedAt),
      p === undefined ? '-' : String(p.restarts),
      p?.memory === null || p === undefined ? '-' : formatBytes(p.memory),
      p?.cpu === null || p === undefined ? '-' : `${p.cpu}%`,
    ]);
  }
  const cellPaint = (r: number, c: number, cell: string): string =>
    r === 0 ? s.paint('dim', cell) : c === 1 ? s.paint(stateColors[r - 1]!, cell) : cell;
  for (const l of table(rows, { indent: '  ', paint: cellPaint })) s.line(l);
  s.line();
  for (const h of status.health) s.line(`  ${h}`);
  if (error !== undefined) {
    s.line();
    s.line(`  ${s.paint('red', '✘')} ${basename(error.file)} has problems:`);
    for (const p of error.problems) s.line(`      ${p}`);
  } else {
    if (status.findings.length > 0) s.line();
    for (const f of status.findings) s.line(`  ${f.level === 'fail' ? s.paint('red', '✘') : s.paint('yellow', '⚠')} ${f.text}`);
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

/** The status code, or why there was none (a socket error's code, or the error's name). */
async function probe(url: string): Promise<number | string> {
  const answer = await httpGet(url, HEALTH_TIMEOUT_MS);
  return 'status' in answer ? answer.status : (answer.error.cause?.code ?? answer.error.name);
}

/** A llama-server's line: ready · its models · its slots, loading, or why it does not answer. */
function upstreamText(s: Screen, p: UpstreamProbe): string {
  const state = upstreamState(p);
  if (state === 'down') return s.paint('dim', `not reachable (${typeof p.health === 'string' ? p.health : '?'})`);
  const head =
    state === 'ready'
      ? s.paint('green', 'ready')
      : state === 'loading'
        ? s.paint('yellow', 'loading the model')
        : s.paint('yellow', `answers ${state}`);
  const parts = [head];
  const models = modelsOf(p.models);
  if (typeof p.models === 'object' && p.models.status === 401) parts.push(s.paint('yellow', 'wants an API key (LLM_UPSTREAM_API_KEY)'));
  else if (models !== undefined && models.length > 0) parts.push(modelsText(models));
  const slots = propsOf(p.props)?.slots;
  if (slots !== undefined) parts.push(`${slots} slot${slots === 1 ? '' : 's'}`);
  return parts.join(' · ');
}

/** One line per llama-server (LLM_UPSTREAM, or the upstreams file) and one for the gateway's /healthz. */
export async function healthLines(s: Screen, stack: StackConfig | null, env: Env): Promise<string[]> {
  let settings: ReturnType<typeof gatewaySettings>;
  let targets: ReturnType<typeof upstreamTargets>;
  try {
    const gwEnv = gatewayEnvironment(stack, env);
    settings = gatewaySettings(gwEnv);
    targets = settings.config === undefined ? [] : upstreamTargets(gwEnv, stack?.processes.gateway.cwd ?? process.cwd());
  } catch (err) {
    return [`${s.paint('red', '✘')} ${(err as Error).message}`];
  }
  if (settings.config === undefined) return [`${s.paint('red', '✘')} gateway settings: ${settings.error}`];
  const { host, port } = settings.config;
  const gateway = localUrl(host, port);
  const [gw, upstreams, services] = await Promise.all([
    probe(`${gateway}/healthz`),
    Promise.all(targets.map((target) => probeUpstream(target, HEALTH_TIMEOUT_MS))),
    probeSharedServices(settings.config, HEALTH_TIMEOUT_MS),
  ]);
  const gwText =
    gw === 200
      ? s.paint('green', 'answering')
      : typeof gw === 'number'
        ? s.paint('yellow', `answers ${gw}`)
        : s.paint('dim', `not reachable (${gw})`);
  const rows = [
    ...upstreams.map((p) => [p.target.name ?? 'llama-server', p.target.url, upstreamText(s, p)]),
    ['gateway', gateway, gwText],
    ...services.map((v) => [v.service === 'Redis' ? 'redis' : 'postgresql', v.where, serviceText(s, v)]),
  ];
  return table(rows);
}

/** A shared service's line: up · latency · prefix or schema, or why it cannot be reached (with the setting to check). */
function serviceText(s: Screen, v: ServiceState): string {
  if (!v.up) return s.paint('red', `not reachable (${v.detail}): start it or fix ${v.setting}`);
  return `${s.paint(v.level === 'ok' ? 'green' : v.level === 'warn' ? 'yellow' : 'red', 'up')} · ${v.detail}`;
}
