// A narrow, typed, promise-based wrapper over PM2's programmatic API (the `pm2` package, CommonJS,
// whose bundled types are loose). One Pm2 object talks to the daemon of one PM2_HOME; connect()
// starts that daemon if it is not running, so `pm2 ls` and `pm2 logs` see the same processes.
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { homedir } from 'node:os';
import { join } from 'node:path';
import type { Pm2AppDefinition } from './stack/pm2-apps.js';

type Done<T> = (err: unknown, result: T) => void;

interface RawProcess {
  name?: string;
  pid?: number;
  pm_id?: number;
  monit?: { memory?: number; cpu?: number };
  pm2_env?: {
    status?: string;
    pm_uptime?: number;
    restart_time?: number;
    pm_out_log_path?: string;
    pm_err_log_path?: string;
    exec_mode?: string;
    /** 0, 1 … N-1: which of an app's instances (PM2's instance_var, NODE_APP_INSTANCE by default). */
    NODE_APP_INSTANCE?: number | string;
  };
}

interface AxonSocket {
  close(): void;
}

/** The part of PM2's API object we use. */
interface Pm2Api {
  connect(done: (err: unknown) => void): void;
  disconnect(done: () => void): void;
  start(app: Pm2AppDefinition, done: Done<unknown>): void;
  stop(name: string, done: Done<unknown>): void;
  delete(name: string, done: Done<unknown>): void;
  list(done: Done<RawProcess[]>): void;
  killDaemon(done: Done<unknown>): void;
  readonly Client: { client_sock?: AxonSocket; sub_sock?: AxonSocket };
}

interface Pm2Module {
  custom: new (options: { pm2_home: string }) => Pm2Api;
}

export interface ProcessState {
  readonly name: string;
  /** PM2's id (`pm2 ls`'s id column; `pm2 logs <id>`). */
  readonly pmId: number | null;
  /** Which instance of its app (0 … N-1); several only for an app in cluster mode. */
  readonly instance: number;
  /** PM2 runs it in cluster mode (one of several gateway processes sharing a port). */
  readonly cluster: boolean;
  /** online, stopping, stopped, launching, errored, waiting restart, one-launch-status */
  readonly status: string;
  readonly pid: number | null;
  /** When it last started (ms since the epoch), while it runs. */
  readonly startedAt: number | null;
  readonly restarts: number;
  readonly memory: number | null;
  readonly cpu: number | null;
  readonly outLog: string | null;
  readonly errLog: string | null;
}

/** PM2_HOME as the pm2 command line resolves it. */
export function defaultPm2Home(env: Readonly<Record<string, string | undefined>> = process.env): string {
  const home = env.PM2_HOME;
  return home !== undefined && home !== '' ? home : join(homedir(), '.pm2');
}

/** True when a PM2 daemon runs for this PM2_HOME (its pid file names a live process). */
export function daemonRunning(pm2Home: string): boolean {
  let pid: number;
  try {
    pid = Number(readFileSync(join(pm2Home, 'pm2.pid'), 'utf8').trim());
  } catch {
    return false;
  }
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** 42s, 3m 12s, 2h 5m, 3d 4h */
export function formatUptime(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

/** 512 KB, 61.4 MB, 1.20 GB */
export function formatBytes(n: number): string {
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MB`;
  return `${(n / 1024 ** 3).toFixed(2)} GB`;
}

function pm2Error(err: unknown): Error {
  // PM2 answers with an Error, a list of them, or a string.
  const first: unknown = Array.isArray(err) ? err[0] : err;
  if (first instanceof Error) return first;
  return new Error(typeof first === 'string' ? first : JSON.stringify(first));
}

function call<T>(fn: (done: Done<T>) => void): Promise<T> {
  return new Promise((resolve, reject) => {
    fn((err, result) => {
      if (err !== null && err !== undefined && !(Array.isArray(err) && err.length === 0)) reject(pm2Error(err));
      else resolve(result);
    });
  });
}

function state(p: RawProcess): ProcessState {
  const env = p.pm2_env ?? {};
  const status = env.status ?? 'unknown';
  const running = status === 'online' || status === 'stopping' || status === 'launching';
  const instance = Number(env.NODE_APP_INSTANCE ?? 0);
  return {
    name: p.name ?? '?',
    pmId: p.pm_id ?? null,
    instance: Number.isSafeInteger(instance) ? instance : 0,
    cluster: env.exec_mode === 'cluster_mode',
    status,
    pid: running && p.pid !== undefined && p.pid > 0 ? p.pid : null,
    startedAt: running && env.pm_uptime !== undefined ? env.pm_uptime : null,
    restarts: env.restart_time ?? 0,
    memory: running && p.monit?.memory !== undefined ? p.monit.memory : null,
    cpu: running && p.monit?.cpu !== undefined ? p.monit.cpu : null,
    outLog: env.pm_out_log_path ?? null,
    errLog: env.pm_err_log_path ?? null,
  };
}

/** The processes PM2 runs under one app name, by instance (one, or N for an app in cluster mode). */
export function instancesOf(states: readonly ProcessState[], name: string): ProcessState[] {
  return states.filter((p) => p.name === name).sort((a, b) => a.instance - b.instance || (a.pmId ?? 0) - (b.pmId ?? 0));
}

/** gateway, or gateway:2 for one instance of several (in the menu's table and doctor's lines). */
export function instanceLabel(p: ProcessState, of: number): string {
  return of > 1 || p.cluster ? `${p.name}:${p.instance}` : p.name;
}

let pm2Module: Pm2Module | undefined;

function loadPm2(pm2Home: string): Pm2Module {
  // PM2 reads PM2_HOME when it is first loaded (its default instance creates that folder), and the
  // daemon it spawns takes PM2_HOME from this process's environment, not from the option: set it
  // before anything of PM2 runs. PM2_PROGRAMMATIC keeps PM2 from printing to our terminal.
  process.env.PM2_HOME = pm2Home;
  process.env.PM2_PROGRAMMATIC = 'true';
  pm2Module ??= createRequire(import.meta.url)('pm2') as Pm2Module;
  return pm2Module;
}

export class Pm2 {
  readonly home: string;
  readonly #api: Pm2Api;
  #connected = true;

  private constructor(home: string, api: Pm2Api) {
    this.home = home;
    this.#api = api;
  }

  /** Connects to the daemon of `pm2Home`, starting it if it does not run. */
  static async connect(pm2Home: string): Promise<Pm2> {
    const api = new (loadPm2(pm2Home).custom)({ pm2_home: pm2Home });
    await call<void>((done) => api.connect((err) => done(err, undefined)));
    return new Pm2(pm2Home, api);
  }

  async list(): Promise<ProcessState[]> {
    return (await call<RawProcess[]>((done) => this.#api.list(done))).map(state);
  }

  async find(name: string): Promise<ProcessState | undefined> {
    return (await this.list()).find((p) => p.name === name);
  }

  /** Every process of an app (several for a gateway in cluster mode), by instance. */
  async instances(name: string): Promise<ProcessState[]> {
    return instancesOf(await this.list(), name);
  }

  /** Starts an app from its definition (for the gateway: once it said it is ready). */
  async start(app: Pm2AppDefinition): Promise<void> {
    // PM2 changes the object it is given; hand it a copy.
    await call((done) => this.#api.start(structuredClone(app), done));
  }

  async stop(name: string): Promise<void> {
    await call((done) => this.#api.stop(name, done));
  }

  /** Stops and forgets a process (its next start uses the definition given then). */
  async delete(name: string): Promise<void> {
    await call((done) => this.#api.delete(name, done));
  }

  /** Closes our connection; the daemon and its processes keep running. */
  async disconnect(): Promise<void> {
    if (!this.#connected) return;
    this.#connected = false;
    await new Promise<void>((resolve) => this.#api.disconnect(() => resolve()));
  }

  /** Stops every process and the daemon itself (`pm2 kill`), and closes our connection. */
  async killDaemon(): Promise<void> {
    this.#connected = false;
    await call((done) => this.#api.killDaemon(done));
    // PM2's client sockets try to reconnect to the daemon that just went away, which would keep
    // this process alive; closing them stops that.
    this.#api.Client.client_sock?.close();
    this.#api.Client.sub_sock?.close();
  }
}
