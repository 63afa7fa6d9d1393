// The settings the pieces of the stack share: the environment the gateway sees under PM2 (its .env,
// the starting environment, pm2-config.json's gateway.env), its settings read from there, the
// llama-servers it fronts (LLM_UPSTREAM, or the upstreams file), and where llama-server listens.
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { SETTINGS, loadConfig, readEnvFile, readSetting, type Config } from '../../config.js';
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
 * The ports of llama-servers, which no tunnel rule may point at (it would publish llama-server
 * without keys): where the stack starts them, and every LLM_UPSTREAM URL on this machine.
 */
export function llamaPortsToGuard(llamas: readonly ProcessSpec[] | undefined, upstreams: readonly string[]): number[] {
  const ports = new Set<number>();
  for (const spec of llamas ?? []) {
    const port = spec.enabled ? llamaListen(spec).port : null;
    if (port !== null) ports.add(port);
  }
  for (const url of upstreams) {
    const u = new URL(url);
    if (isLocalHost(u.hostname)) ports.add(urlPort(u));
  }
  return [...ports];
}

/** One llama-server the gateway fronts, as the CLI asks it. */
export interface UpstreamTarget {
  readonly url: string;
  /** Its name in the upstreams file, if it gives one. */
  readonly name?: string;
  /** The key llama-server wants (--api-key): the upstreams file's api_key, else LLM_UPSTREAM_API_KEY; '' for none. */
  readonly apiKey: string;
  /** Where its URL is set. */
  readonly source: 'LLM_UPSTREAM' | 'GATEWAY_UPSTREAMS_FILE';
}

/** The upstreams file's setting; read only when src/config.ts has it (issue 14). */
const UPSTREAMS_FILE_ENV = 'GATEWAY_UPSTREAMS_FILE';
const HAS_UPSTREAMS_FILE = Object.values(SETTINGS).some((s) => s.env === UPSTREAMS_FILE_ENV);

/**
 * The llama-servers the gateway fronts: the upstreams file's (GATEWAY_UPSTREAMS_FILE, relative to
 * the gateway's folder `cwd`; it replaces LLM_UPSTREAM), else LLM_UPSTREAM's URLs. A small read of
 * the file's url, name and api_key: the gateway checks the rest when it starts. Throws (one
 * sentence) when LLM_UPSTREAM is wrong or the file names no server.
 */
export function upstreamTargets(env: Env, cwd: string): UpstreamTarget[] {
  const sharedKey = settingOr(env, SETTINGS.upstreamApiKey);
  const path = HAS_UPSTREAMS_FILE ? (env[UPSTREAMS_FILE_ENV] ?? '').trim() : '';
  if (path === '') return readSetting(SETTINGS.upstreams, env).map((url) => ({ url, apiKey: sharedKey, source: 'LLM_UPSTREAM' }));
  const entries = upstreamsFileEntries(resolve(cwd, path));
  if (typeof entries === 'string') throw new Error(`${UPSTREAMS_FILE_ENV} ${path}: ${entries}`);
  return entries.map((e) => ({
    url: e.url,
    ...(e.name === undefined ? {} : { name: e.name }),
    apiKey: e.apiKey ?? sharedKey,
    source: UPSTREAMS_FILE_ENV,
  }));
}

/** The upstreams file's {"upstreams": [{url, name?, api_key?}]}, or why it names no server. */
function upstreamsFileEntries(file: string): { url: string; name?: string; apiKey?: string }[] | string {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    return code === 'ENOENT' ? `${file} not found` : `${file} cannot be read as JSON: ${(err as Error).message}`;
  }
  const list: unknown = (raw as { upstreams?: unknown } | null)?.upstreams;
  const entries = (Array.isArray(list) ? list : []).flatMap((item: unknown) => {
    const e = (typeof item === 'object' && item !== null ? item : {}) as Record<string, unknown>;
    let url: URL;
    try {
      url = new URL(typeof e.url === 'string' ? e.url.trim() : '');
    } catch {
      return [];
    }
    return [
      {
        url: url.origin + url.pathname.replace(/\/+$/, ''), // as LLM_UPSTREAM's URLs are kept
        ...(typeof e.name === 'string' ? { name: e.name } : {}),
        ...(typeof e.api_key === 'string' ? { apiKey: e.api_key } : {}),
      },
    ];
  });
  return entries.length > 0 ? entries : `${file} lists no server ({"upstreams": [{"url": "http://127.0.0.1:5857"}]})`;
}

/** The llama-servers' URLs and where they are set, as upstreamTargets() finds them; LLM_UPSTREAM's default when that fails. */
export function upstreamUrlsOr(env: Env, cwd: string): { urls: string[]; source: UpstreamTarget['source'] } {
  try {
    const targets = upstreamTargets(env, cwd);
    return { urls: targets.map((target) => target.url), source: targets[0]?.source ?? 'LLM_UPSTREAM' };
  } catch {
    return { urls: [...settingOr(env, SETTINGS.upstreams)], source: 'LLM_UPSTREAM' };
  }
}
