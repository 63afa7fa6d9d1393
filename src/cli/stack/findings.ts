// How the pieces of the stack fit together, as findings (ok, warn, fail) for the menu and `doctor`:
// what stops a process from starting as configured, the cloudflared file's checks, and the
// comparisons across pieces (each llama-server's port vs LLM_UPSTREAM's URLs, the tunnel's ingress
// vs GATEWAY_PORT).
import { existsSync, readFileSync } from 'node:fs';
import { basename, resolve } from 'node:path';
import { SETTINGS } from '../../config.js';
import { expandHome, isInside, isNodeCommand, nodeScript, resolveCommand } from './paths.js';
import { placeholdersOf, type ProcessName, type ProcessSpec, type StackConfig } from './pm2-config.js';
import {
  gatewayEnvironment,
  gatewaySettings,
  isLocalHost,
  llamaListen,
  llamaPortsToGuard,
  settingOr,
  upstreamUrlsOr,
  urlPort,
  type Env,
} from './settings.js';
import { localServicePort, parseTunnelFile, placeholdersIn, tunnelConfigPath, tunnelRunName } from './tunnel-file.js';

/**
 * Why a process cannot be started as configured, from pm2-config.json and the settings alone:
 * placeholders, program not found, gateway not built or misconfigured. Empty when it can.
 */
function processBlockers(stack: StackConfig, spec: ProcessSpec, env: Env, opts: { settings?: boolean } = {}): string[] {
  const { name, path } = spec;
  const out: string[] = [];
  const file = basename(stack.file);
  const holes = placeholdersOf(spec);
  if (holes.length > 0) out.push(`fill in ${holes.join(', ')} in ${file} (${path})`);
  if (resolveCommand(spec.command, spec.cwd, env.PATH) === null) {
    out.push(
      spec.command.includes('/')
        ? `${path}.command ${spec.command} is not an executable file`
        : `${spec.command} is not in PATH: install it, or set ${path}.command in ${file} to its full path`,
    );
  } else if (isNodeCommand(spec.command)) {
    const { script } = nodeScript(spec);
    if (script === undefined) out.push(`${path}.args must name the script for ${spec.command} to run`);
    else if (!existsSync(resolve(spec.cwd, script)))
      out.push(`${resolve(spec.cwd, script)} does not exist${name === 'gateway' ? ': run `npm run build`' : ''}`);
  }
  if (name === 'gateway' && opts.settings !== false) {
    const settings = gatewaySettings(gatewayEnvironment(stack, env));
    if (settings.error !== undefined) out.push(`gateway setting: ${settings.error}`);
  }
  if (name === 'gateway') {
    const alone = unsharedInstances(stack, spec, env);
    if (alone !== null) out.push(alone);
  }
  return out;
}

/**
 * Several gateway instances without GATEWAY_REDIS_URL: refused, not just warned about. Each process
 * would count alone, so every key's limits, budgets and the failed-auth brake would be N times what
 * was set (the well-known LiteLLM bug), and each would fill llama-server's slots as if it were the
 * only one (the fair queue defeated). Nothing would look wrong until a key used N times its quota.
 */
function unsharedInstances(stack: StackConfig, spec: ProcessSpec, env: Env): string | null {
  // Set but wrong is the settings' own error (said elsewhere), not this one.
  if (spec.instances < 2 || (gatewayEnvironment(stack, env)[SETTINGS.redisUrl.env] ?? '').trim() !== '') return null;
  const n = spec.instances;
  return `${spec.path}.instances ${n} without GATEWAY_REDIS_URL: each of the ${n} gateways would keep its own limits, budgets, failed-auth brake and llama-server slots (${n}× what you set); set GATEWAY_REDIS_URL (README, Running several gateways) or "instances": 1`;
}

/** Everything that stops a process from starting, the tunnel's cloudflared file included. */
export function startBlockers(stack: StackConfig, spec: ProcessSpec, env: Env): string[] {
  const out = processBlockers(stack, spec, env);
  const path = spec.name === 'tunnel' ? tunnelConfigPath(stack) : null;
  if (path !== null) {
    if (!existsSync(path)) {
      out.push(
        `${path} does not exist (${isInside(stack.root, path) ? '`llm-gateway tunnel init` writes a template' : `\`llm-gateway tunnel init --file ${path}\` writes a template`})`,
      );
    } else {
      const holes = placeholdersIn(readFileSync(path, 'utf8'));
      if (holes.length > 0) out.push(`fill in ${holes.join(', ')} in ${path}`);
    }
  }
  return out;
}

type FindingLevel = 'ok' | 'warn' | 'fail';

export interface Finding {
  readonly level: FindingLevel;
  readonly topic: ProcessName;
  readonly text: string;
}

const ok = (topic: ProcessName, text: string): Finding => ({ level: 'ok', topic, text });
const warn = (topic: ProcessName, text: string): Finding => ({ level: 'warn', topic, text });
const fail = (topic: ProcessName, text: string): Finding => ({ level: 'fail', topic, text });

/** The checks on a cloudflared config file: present, filled in, ingress to the gateway, 404 last. */
export function tunnelFindings(
  path: string,
  opts: { gatewayPort: number; llamaPorts: readonly number[]; runName: string | null },
): Finding[] {
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
    out.push(
      warn(
        'tunnel',
        `pm2-config.json runs tunnel "${opts.runName}" but ${basename(path)} says tunnel: ${file.tunnel}; cloudflared uses "${opts.runName}"`,
      ),
    );
  }
  if (file.credentialsFile === undefined)
    out.push(warn('tunnel', `${path} has no credentials-file (cloudflared then looks in ~/.cloudflared/)`));
  else if (!existsSync(expandHome(file.credentialsFile))) {
    out.push(fail('tunnel', `credentials file ${file.credentialsFile} not found: \`cloudflared tunnel create <name>\` writes it`));
  } else out.push(ok('tunnel', `credentials file ${file.credentialsFile} present`));

  const rules = file.ingress;
  if (rules.length === 0)
    return [...out, fail('tunnel', `${path} has no ingress rules; the gateway needs one: service: http://localhost:${opts.gatewayPort}`)];
  const toGateway = rules.filter((r) => r.service !== undefined && localServicePort(r.service) === opts.gatewayPort);
  for (const r of rules) {
    const port = r.service === undefined ? null : localServicePort(r.service);
    if (port === null || !opts.llamaPorts.includes(port)) continue;
    out.push(
      fail(
        'tunnel',
        `ingress ${r.hostname ?? '(any host)'} → ${r.service} goes straight to llama-server (port ${port}), around the gateway's keys: point it at http://localhost:${opts.gatewayPort}`,
      ),
    );
  }
  if (toGateway.length === 0) {
    const seen = rules.map((r) => r.service ?? '?').join(', ');
    out.push(
      fail(
        'tunnel',
        `no ingress rule points at the gateway (GATEWAY_PORT ${opts.gatewayPort}); found: ${seen}. Use service: http://localhost:${opts.gatewayPort}`,
      ),
    );
  } else {
    out.push(ok('tunnel', `ingress ${toGateway.map((r) => `${r.hostname ?? '(any host)'} → ${r.service}`).join(', ')} (the gateway)`));
  }
  const last = rules[rules.length - 1]!;
  if (last.hostname !== undefined || last.path !== undefined) {
    out.push(
      fail(
        'tunnel',
        `the last ingress rule must match everything, e.g. "- service: http_status:404" (cloudflared refuses the file otherwise)`,
      ),
    );
  } else if (last.service !== 'http_status:404') {
    out.push(warn('tunnel', `the last ingress rule sends every other hostname to ${last.service}; "- service: http_status:404" is safer`));
  }
  return out;
}

/**
 * How the pieces fit together: each llama-server's port vs LLM_UPSTREAM's URLs (both ways), the
 * tunnel's ingress vs GATEWAY_PORT, placeholders, programs found. `env` is the environment the
 * stack is started from.
 */
export function stackFindings(stack: StackConfig, env: Env, opts: { settings?: boolean } = {}): Finding[] {
  const out: Finding[] = [];
  const gwEnv = gatewayEnvironment(stack, env);
  const { urls: upstreams, source } = upstreamUrlsOr(gwEnv, stack.processes.gateway.cwd);
  const gatewayPort = settingOr(gwEnv, SETTINGS.port);
  const { llama, gateway, tunnel } = stack.processes;
  const file = basename(stack.file);

  for (const spec of stack.apps) {
    if (!spec.enabled) continue;
    for (const b of processBlockers(stack, spec, env, opts)) out.push(fail(spec.name, b));
  }

  out.push(...llamaFindings(llama, upstreams, source, file));

  if (tunnel.enabled) {
    const path = tunnelConfigPath(stack);
    if (path === null)
      out.push(warn('tunnel', `the tunnel has no --config in ${file}; cloudflared reads ~/.cloudflared/config.yml, which is not checked`));
    else {
      out.push(...tunnelFindings(path, { gatewayPort, llamaPorts: llamaPortsToGuard(llama, upstreams), runName: tunnelRunName(stack) }));
    }
    if (!gateway.enabled) out.push(warn('tunnel', `the tunnel is on but the gateway is off in ${file}`));
  }
  return out;
}

/**
 * The llama-servers the stack starts against LLM_UPSTREAM: each one's --port must be the port of
 * one of its URLs on this machine, no two share a port, and each local URL is either started here
 * or said to be started elsewhere. One process and one URL keep the short wording of old.
 */
function llamaFindings(llamas: readonly ProcessSpec[], upstreams: readonly string[], setting: string, file: string): Finding[] {
  const out: Finding[] = [];
  const list = upstreams.join(',');
  const local = upstreams.map((text) => ({ text, url: new URL(text) })).filter((u) => isLocalHost(u.url.hostname));
  const enabled = llamas.filter((s) => s.enabled);
  const simple = llamas.length === 1 && upstreams.length === 1;
  const started = new Map<number, ProcessSpec[]>();
  for (const spec of enabled) {
    const listen = llamaListen(spec);
    const who = spec.path === 'llama' ? 'llama-server' : `${spec.app} (${spec.path})`;
    if (listen.port === null)
      out.push(fail('llama', `${who === 'llama-server' ? "llama-server's" : `${who}:`} --port in ${file} is not a port number`));
    else {
      started.set(listen.port, [...(started.get(listen.port) ?? []), spec]);
      const match = local.find((u) => urlPort(u.url) === listen.port);
      if (match !== undefined)
        out.push(
          ok(
            'llama',
            simple ? `llama-server port ${listen.port} matches ${setting}` : `${who} port ${listen.port} is ${setting}'s ${match.text}`,
          ),
        );
      else if (local.length === 0)
        out.push(warn('llama', `${setting} is ${list} (another machine), but ${file} also starts ${who} here on port ${listen.port}`));
      else if (simple)
        out.push(
          fail(
            'llama',
            `port mismatch: ${setting} is ${list} but llama-server is started with --port ${listen.port} (${file}); make them the same`,
          ),
        );
      else
        out.push(
          fail(
            'llama',
            `port mismatch: ${who} is started with --port ${listen.port} (${file}) but no URL of ${setting} (${list}) has that port; add it to ${setting} or change the port`,
          ),
        );
    }
    if (!isLocalHost(listen.host) || listen.host === '0.0.0.0' || listen.host === '::') {
      out.push(
        warn(
          'llama',
          `${who} listens on ${listen.host}: anyone on your network can use it without a key; --host 127.0.0.1 keeps it behind the gateway`,
        ),
      );
    }
  }
  for (const [port, specs] of started) {
    if (specs.length > 1)
      out.push(
        fail(
          'llama',
          `${specs.map((s) => `${s.app} (${s.path})`).join(' and ')} share --port ${port} (${file}): each llama-server needs its own port`,
        ),
      );
  }
  // A local URL nothing here starts: another program runs it (or it is missing: doctor asks it).
  if (enabled.length > 0) {
    for (const u of local) {
      if (!started.has(urlPort(u.url))) out.push(ok('llama', `${setting}'s ${u.text} is not started by ${file}: started elsewhere`));
    }
  }
  return out;
}
