// Test plumbing: a real gateway on a real port in front of the fake llama-server, a plain HTTP
// client that sends paths exactly as written (fetch would normalise /v1/../slots), and the small
// helpers every test file would otherwise write again (ports, temp folders, waiting, metrics).
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import { Writable } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import type { WebhookTuning } from '../src/alerts/webhook.js';
import type { MediaFetchTesting } from '../src/policy/media-fetch.js';
import { buildApp } from '../src/app.js';
import { configWith, type Config } from '../src/config.js';
import { type KeyRegistry } from '../src/keys/key-registry.js';
import { KeyStore } from '../src/keys/key-store.js';
import type { UsageRecord } from '../src/usage/exchange.js';
import { startFakeLlama, type FakeBehavior, type FakeLlama } from './fixtures/fake-llama.js';

export const KEY_A = 'sk-test-alice-0123456789abcdef';
export const KEY_B = 'sk-test-bob-0123456789abcdef00';
export const AUTH_A = { authorization: `Bearer ${KEY_A}` };

/** The Authorization header that presents `key`. */
export function bearer(key: string): Record<string, string> {
  return { authorization: `Bearer ${key}` };
}

export interface Teardown {
  teardown(fn: () => unknown): void;
}

export interface Gateway {
  readonly url: string;
  readonly port: number;
  readonly app: FastifyInstance;
  readonly fake: FakeLlama;
  /** Every log line the gateway wrote, parsed. */
  readonly logs: Record<string, unknown>[];
  /** The raw log text (to prove a key never appears in it). */
  logText(): string;
}

export interface GatewayOptions {
  /** Keys from a key database as well (see tempStore); default: LLM_API_KEYS only. */
  registry?: KeyRegistry;
  /** How often usage records are written (ms). */
  usageFlushMs?: number;
  /** How often a queued stream gets a keep-alive comment (ms). */
  queuePingMs?: number;
  /**
   * Follow the llama-servers in the background (/health, /v1/models, /props polls). Default: off
   * with one upstream (tests count exactly the upstream requests they cause), on with several
   * (routing by model needs their model lists).
   */
  discovery?: boolean;
  /** The alerts webhook's retry timings and limits (tests shorten them). */
  webhook?: Partial<WebhookTuning>;
  /** Remote media fetches: the test's https server taken as public, its CA, its names (policy/media-fetch.ts). */
  mediaFetch?: MediaFetchTesting;
}

/** A fresh folder under the OS temp dir, removed at teardown. */
export function tempDir(t: Teardown, prefix = 'gw-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** A port nothing listens on (listen on 0, note the port, close): for a server to start on, or to be refused on. */
export async function freePort(): Promise<number> {
  const s = net.createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address() as net.AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/** A fresh key database in a temp folder, tuned as the gateway's own (server.ts), closed at teardown. */
export function tempStore(t: Teardown): KeyStore {
  const dir = mkdtempSync(join(tmpdir(), 'gw-keys-'));
  const store = KeyStore.open(join(dir, 'gateway.db'), 'gateway');
  t.teardown(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return store;
}

export async function startGateway(
  t: Teardown,
  overrides: Partial<Config> = {},
  behavior: Partial<FakeBehavior> = {},
  options: GatewayOptions = {},
): Promise<Gateway> {
  const fake = await startFakeLlama(behavior);
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
  // A fixed slot count and completion hold: reading llama-server's /props in the background would
  // add upstream requests.
  const config = configWith({ apiKeys: [KEY_A, KEY_B], upstreams: [fake.url], maxInflight: 4, reserveTokens: 1024, ...overrides });
  const app = await buildApp(config, {
    logger: { level: 'info', stream },
    ...(options.registry === undefined ? {} : { registry: options.registry }),
    ...(options.usageFlushMs === undefined ? {} : { usageFlushMs: options.usageFlushMs }),
    ...(options.queuePingMs === undefined ? {} : { queuePingMs: options.queuePingMs }),
    ...(options.webhook === undefined ? {} : { webhook: options.webhook }),
    ...(options.mediaFetch === undefined ? {} : { mediaFetch: options.mediaFetch }),
    discovery: options.discovery ?? config.upstreams.length > 1,
  });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const port = (app.server.address() as net.AddressInfo).port;
  t.teardown(async () => {
    app.server.closeAllConnections();
    await app.close();
    await fake.close();
  });
  return { url: `http://127.0.0.1:${port}`, port, app, fake, logs, logText: () => text };
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  rawHeaders: string[];
  body: Buffer;
  text: string;
}

export interface RawRequest {
  method?: string;
  path: string;
  headers?: http.OutgoingHttpHeaders;
  body?: string | Buffer;
}

/** One request on its own connection; the path is sent byte for byte. */
export function request(port: number, req: RawRequest): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const r = http.request(
      {
        host: '127.0.0.1',
        port,
        method: req.method ?? (req.body === undefined ? 'GET' : 'POST'),
        path: req.path,
        headers: req.headers,
        agent: false,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const body = Buffer.concat(chunks);
          resolve({ status: res.statusCode ?? 0, headers: res.headers, rawHeaders: res.rawHeaders, body, text: body.toString('utf8') });
        });
        res.on('error', reject);
      },
    );
    r.on('error', reject);
    r.end(req.body);
  });
}

/** Sends raw bytes on a fresh socket and returns everything received until the server closes or `untilMs`. */
export function rawExchange(port: number, bytes: string, untilMs = 2000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let out = '';
    const timer = setTimeout(() => {
      socket.destroy();
      resolve(out);
    }, untilMs);
    socket.on('data', (d: Buffer) => (out += d.toString('utf8')));
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(out);
    });
    socket.on('error', reject);
    socket.write(bytes);
  });
}

export function chatBody(extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ model: 'gpt-oss-20b', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8, ...extra });
}

/** The body of a recording as one Buffer (what llama-server sent, chunk framing removed). */
export function recordedBody(chunks: Buffer[]): string {
  return Buffer.concat(chunks).toString('utf8');
}

/** A chat stream without its usage-only chunk: what a client that did not ask for usage gets. */
export function withoutUsageChunk(text: string): string {
  return text.replace(/data: \{"choices":\[\],[^\n]*"usage":[^\n]*\n\n/g, '');
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * Polls `check` every `everyMs` until it gives something other than false or undefined, and resolves
 * with that; rejects after `ms` saying what did not happen.
 */
export async function until<T>(
  what: string,
  check: () => T | false | undefined | Promise<T | false | undefined>,
  ms = 5000,
  everyMs = 5,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v !== false && v !== undefined) return v;
    if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(everyMs);
  }
}

/** The value of one series in Prometheus text (the first whose labels include `labels`), or undefined. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labelText = /\{(.*)\}/.exec(line)?.[1] ?? '';
    const have = new Map([...labelText.matchAll(/(\w+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

/** A complete usage record numbered `i` (request id `req-<i>`), for the writers' tests. */
export function usageRecord(i: number): UsageRecord {
  return {
    ts: Date.now(),
    requestId: `req-${i}`,
    keyId: 'env-1',
    keyName: 'env-1',
    route: '/v1/chat/completions',
    model: 'm',
    status: 200,
    streamed: false,
    promptTokens: 1,
    cachedTokens: null,
    completionTokens: 2,
    estimated: false,
    ttftMs: null,
    durationMs: 1,
    bytesIn: 10,
    bytesOut: 20,
    clientIp: '127.0.0.1',
    userAgent: null,
    outcome: 'ok',
    endUser: null,
    cost: null,
  };
}

/** Resolves with `p`, or rejects after `ms` saying what did not happen. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms);
    p.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e instanceof Error ? e : new Error(String(e)));
      },
    );
  });
}
