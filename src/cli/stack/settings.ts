// The settings the pieces of the stack share: the environment the gateway sees under PM2 (its .env,
// the starting environment, pm2-config.json's gateway.env), its settings read from there, and where
// llama-server listens.
import { join } from 'node:path';
import { loadConfig, readEnvFile, readSetting, type Config } from '../../config.js';
import { optionValue } from './paths.js';
import type { ProcessSpec, StackConfig } from './pm2-config.js';

/** llama-server's own defaults when --host / --port are not given. */
const LLAMA_DEFAULT_HOST = '127.0.0.1';
const LLAMA_DEFAULT_PORT = 8080;

export type Env = Readonly<Record<string, string | undefined>>;

/** `.env` in a folder, parsed the way the gateway reads it; {} when there is none. */
function readDotEnv(dir: string): Record<string, string> {
  return readEnvFile(join(dir, '.env'));
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

/** A setting's value in `env`, or its default when the value is missing or wrong. */
export function settingOr<T>(env: Env, s: { env: string; fallback: string; parse: (text: string, env: string) => T }): T {
  try {
    return readSetting(s, env);
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

/** A URL's port, the scheme's default when it names none. */
export function urlPort(url: URL): number {
  return url.port === '' ? (url.protocol === 'https:' ? 443 : 80) : Number(url.port);
}

const LOCAL_HOSTS = new Set(['localhost', '127.0.0.1', '::1', '[::1]', '0.0.0.0', '::', '[::]']);
export function isLocalHost(host: string): boolean {
  return LOCAL_HOSTS.has(host.toLowerCase()) || /^127\./.test(host);
}

/**
 * llama-server's port, which no tunnel rule may point at (it would publish llama-server without
 * keys): where the stack starts it, else LLM_UPSTREAM's port when that is on this machine.
 */
export function llamaPortToGuard(llama: ProcessSpec | undefined, upstream: URL): number | null {
  if (llama?.enabled === true) return llamaListen(llama).port;
  return isLocalHost(upstream.hostname) ? urlPort(upstream) : null;
}
