// PM2's app definitions for the stack: how each process is started (the program found in PATH, a
// Node.js script run with IPC), how long PM2 waits for it to stop, and the gateway's wait_ready.
// Each llama-server of the list is an app of its own (llama-1, llama-2 … or llama-<name>). A
// gateway with "instances": N ≥ 2 is one app of N processes in PM2 cluster mode: PM2's daemon forks
// them with Node's cluster module, so they all accept connections on the one GATEWAY_PORT.
// ecosystemApps() is what ecosystem.config.cjs hands PM2.
import { resolve } from 'node:path';
import { SETTINGS } from '../../config.js';
import { startBlockers } from './findings.js';
import { expandHome, isNodeCommand, nodeScript, resolveCommand } from './paths.js';
import { StackConfigError, loadStackConfig, type ProcessSpec, type StackConfig } from './pm2-config.js';
import { gatewayEnvironment, settingOr, type Env } from './settings.js';

// How long PM2 waits after SIGINT before SIGKILL. llama-server cancels its slots and frees the
// model's memory; cloudflared waits up to its --grace-period (30 s by default) for open requests.
// The gateway's own wait is GATEWAY_SHUTDOWN_GRACE_MS; PM2 must wait longer than that.
const LLAMA_KILL_TIMEOUT_MS = 10_000;
const TUNNEL_KILL_TIMEOUT_MS = 35_000;
const GATEWAY_KILL_MARGIN_MS = 5_000;
/** How long PM2 waits for the gateway's process.send('ready') before calling it online anyway. */
const GATEWAY_LISTEN_TIMEOUT_MS = 15_000;
/** First delay between restarts of a crashing llama-server or cloudflared (PM2 grows it up to 15 s). */
const RESTART_BACKOFF_MS = 1_000;

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
  /** 'cluster' for a gateway of several instances (Node's cluster module, one shared port). */
  exec_mode: 'fork' | 'cluster';
  /** Only in cluster mode: how many gateway processes. */
  instances?: number;
  autorestart: boolean;
  kill_timeout: number;
  wait_ready?: boolean;
  listen_timeout?: number;
  exp_backoff_restart_delay?: number;
}

/** PM2's definition of one process of `stack`. `env` is the environment that settings are read from. */
export function pm2App(stack: StackConfig, spec: ProcessSpec, env: Env): Pm2AppDefinition {
  const { name } = spec;
  const common = { name: spec.app, cwd: spec.cwd, env: { ...spec.env }, exec_mode: 'fork' as const, autorestart: true };
  // The program as the checks found it (PATH here), so PM2 — which would search its own PATH — and a
  // boot-time `pm2 resurrect` run exactly that.
  const program =
    resolveCommand(spec.command, spec.cwd, env.PATH) ??
    (spec.command.includes('/') ? resolve(spec.cwd, expandHome(spec.command)) : spec.command);
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
    // In cluster mode PM2 waits for each worker's own 'ready' and stops each with its own SIGINT, and
    // gives each its own log files (gateway-out-<id>.log); the interpreter is the daemon's node.
    const cluster = spec.instances > 1 ? { exec_mode: 'cluster' as const, instances: spec.instances } : {};
    return {
      ...app,
      ...cluster,
      wait_ready: true,
      listen_timeout: GATEWAY_LISTEN_TIMEOUT_MS,
      kill_timeout: grace + GATEWAY_KILL_MARGIN_MS,
    };
  }
  return {
    ...app,
    kill_timeout: name === 'tunnel' ? TUNNEL_KILL_TIMEOUT_MS : LLAMA_KILL_TIMEOUT_MS,
    exp_backoff_restart_delay: RESTART_BACKOFF_MS,
  };
}

/**
 * What ecosystem.config.cjs hands PM2: every enabled process of pm2-config.json. Throws a
 * StackConfigError naming each process that could not start as configured.
 */
export function ecosystemApps(file: string, env: Env): Pm2AppDefinition[] {
  const stack = loadStackConfig(file);
  const enabled = stack.apps.filter((spec) => spec.enabled);
  const problems = enabled.flatMap((spec) => startBlockers(stack, spec, env).map((b) => `${spec.app}: ${b}`));
  if (problems.length > 0) throw new StackConfigError(stack.file, problems);
  return enabled.map((spec) => pm2App(stack, spec, env));
}
