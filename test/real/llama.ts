// The real-llama-server tier: a real llama-server (LLAMA_SERVER_BIN) with a tiny model
// (LLAMA_TEST_MODEL), started by the test on a free port and stopped by its PID. `.ci/run` points
// both at ../shared/llama-server when it is there; without them every test file of this tier is
// skipped with one line, so a user's clone still passes `npm test`.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import type net from 'node:net';
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { Test } from 'tap';
import { buildApp, type BuildOptions } from '../../src/app.js';
import { configWith, type Config } from '../../src/config.js';
import { KEY_A, KEY_B, freePort, sleep } from '../helpers.js';

/** How long llama-server's log must stay still for mark(). */
const QUIET_MS = 100;
const LLAMA_BIN = process.env.LLAMA_SERVER_BIN ?? '';
const LLAMA_MODEL = process.env.LLAMA_TEST_MODEL ?? '';

/** Why this tier cannot run here, or undefined when it can. */
function unavailable(): string | undefined {
  if (LLAMA_BIN === '' || LLAMA_MODEL === '') return 'LLAMA_SERVER_BIN / LLAMA_TEST_MODEL not set: real llama-server tier skipped';
  if (!existsSync(LLAMA_BIN)) return `LLAMA_SERVER_BIN=${LLAMA_BIN} does not exist: real llama-server tier skipped`;
  if (!existsSync(LLAMA_MODEL)) return `LLAMA_TEST_MODEL=${LLAMA_MODEL} does not exist: real llama-server tier skipped`;
  return undefined;
}

/** Call at the top of a test file of this tier: true when it must skip (and says why, once). */
export function skipTier(t: Test): boolean {
  const why = unavailable();
  if (why === undefined) return false;
  t.plan(0, why);
  return true;
}

export interface RealLlama {
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  /** everything llama-server wrote to stdout and stderr so far */
  log(): string;
  /** resolves when `text` appears in the log after `from` (a log() length) */
  waitForLog(text: string | RegExp, from?: number, timeoutMs?: number): Promise<void>;
  /**
   * A log() length to count from, taken once llama-server has logged the end of every task it
   * logged the start of and then stayed quiet a moment. Its log is written by a thread of its own,
   * after the answer: a mark taken right after an answer can come before that task's lines.
   */
  mark(): Promise<number>;
  stop(): Promise<void>;
}

export interface LlamaOptions {
  slots?: number;
  ctx?: number;
  alias?: string;
  /** serve /v1/embeddings (`--embeddings --pooling mean`); default true */
  embeddings?: boolean;
  /** listen here (a server started again on its old port); default a free one */
  port?: number;
  extraArgs?: string[];
}

/** Starts llama-server and waits until GET /health answers 200 (stopped at teardown). */
export async function startLlama(t: Test, opts: LlamaOptions = {}): Promise<RealLlama> {
  const port = opts.port ?? (await freePort());
  const args = [
    '-m',
    LLAMA_MODEL,
    '--host',
    '127.0.0.1',
    '--port',
    String(port),
    '-np',
    String(opts.slots ?? 2),
    '-c',
    String(opts.ctx ?? 8192),
    '--metrics',
    ...(opts.embeddings === false ? [] : ['--embeddings', '--pooling', 'mean']),
    '-a',
    opts.alias ?? 'gpt-oss-20b',
    ...(opts.extraArgs ?? []),
  ];
  const child: ChildProcess = spawn(LLAMA_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout!.on('data', (d: Buffer) => (text += d.toString('utf8')));
  child.stderr!.on('data', (d: Buffer) => (text += d.toString('utf8')));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${port}`;
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      const killed = await Promise.race([exited.then(() => true), sleep(5000).then(() => false)]);
      if (!killed) child.kill('SIGKILL');
    }
    await exited;
  };
  t.teardown(stop);
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`llama-server exited with ${child.exitCode} at start:\n${text.slice(-2000)}`);
    try {
      const res = await fetch(`${url}/health`);
      await res.arrayBuffer();
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`llama-server not ready within 30 s:\n${text.slice(-2000)}`);
    await sleep(50);
  }
  return {
    url,
    port,
    pid: child.pid!,
    log: () => text,
    async waitForLog(pattern, from = 0, timeoutMs = 10_000) {
      const end = Date.now() + timeoutMs;
      const seen = (): boolean => (typeof pattern === 'string' ? text.indexOf(pattern, from) >= 0 : pattern.test(text.slice(from)));
      while (!seen()) {
        if (Date.now() > end) throw new Error(`llama-server did not log ${String(pattern)} within ${timeoutMs} ms`);
        await sleep(20);
      }
    },
    async mark() {
      const count = (re: RegExp): number => text.match(re)?.length ?? 0;
      const end = Date.now() + 5000;
      let seen = -1;
      for (;;) {
        const balanced = count(/\| processing task/g) === count(/\| stop processing/g);
        if (balanced && text.length === seen) return text.length;
        if (Date.now() > end) throw new Error('llama-server did not finish logging its tasks within 5 s');
        seen = balanced ? text.length : -1;
        await sleep(QUIET_MS);
      }
    },
    stop,
  };
}

export interface RealGateway {
  readonly url: string;
  readonly port: number;
  readonly app: FastifyInstance;
  readonly llama: RealLlama;
  readonly logs: Record<string, unknown>[];
  logText(): string;
}

/** A real gateway on a real port in front of `llama` (started here unless given). */
export async function startRealGateway(
  t: Test,
  overrides: Partial<Config> = {},
  options: BuildOptions & { llama?: RealLlama; llamaOptions?: LlamaOptions } = {},
): Promise<RealGateway> {
  const { llama: given, llamaOptions, ...build } = options;
  const llama = given ?? (await startLlama(t, llamaOptions));
  const logs: Record<string, unknown>[] = [];
  let text = '';
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      const line = chunk.toString('utf8');
      text += line;
      for (const l of line.split('\n')) if (l.trim() !== '') logs.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const config = configWith({ apiKeys: [KEY_A, KEY_B], upstreams: [llama.url], ...overrides });
  const app = await buildApp(config, { logger: { level: 'info', stream }, ...build });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const port = (app.server.address() as net.AddressInfo).port;
  t.teardown(async () => {
    app.server.closeAllConnections();
    await app.close();
  });
  return { url: `http://127.0.0.1:${port}`, port, app, llama, logs, logText: () => text };
}

/** llama-server's own count of a request's prompt tokens (POST /v1/chat/completions/input_tokens …). */
export async function countTokens(llama: RealLlama, path: string, body: unknown): Promise<number> {
  const res = await fetch(`${llama.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  const json = (await res.json()) as { input_tokens?: number; tokens?: unknown[] };
  if (typeof json.input_tokens === 'number') return json.input_tokens;
  if (Array.isArray(json.tokens)) return json.tokens.length;
  throw new Error(`no token count from ${path}: ${JSON.stringify(json)}`);
}

/** GET /slots: which slots are processing now. */
export async function busySlots(llama: RealLlama): Promise<number> {
  const res = await fetch(`${llama.url}/slots`);
  const slots = (await res.json()) as { is_processing?: boolean }[];
  return slots.filter((s) => s.is_processing === true).length;
}
