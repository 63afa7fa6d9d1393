// The connection to the Redis several gateways share (GATEWAY_REDIS_URL), and whether it is up.
// Through ioredis: it reconnects by itself, runs Lua scripts by SHA (defineCommand: EVALSHA with a
// fallback to EVAL), pipelines, and has been what Node.js services use with Redis for a decade.
//
// Commands fail fast while the connection is down (no offline queue, one try per command, a short
// command timeout): a request must never wait on a Redis that is not there. What the gateway does
// then is the callers' choice (GATEWAY_REDIS_DOWN: local counters, or 503); this file says when
// the link goes down and comes back, loudly (an error line, /health, /metrics).
import { createRequire } from 'node:module';
import type { Redis, RedisOptions } from 'ioredis';

// ioredis (~5 MB of RSS) is loaded when a link is made: only with GATEWAY_REDIS_URL (storage/pg.ts
// says why).
const requireLazily = createRequire(import.meta.url);

export type LinkState = 'up' | 'down';

export interface LinkLog {
  info(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface RedisLinkOptions {
  /** ms a command may take before it counts as failed (default 1000) */
  commandTimeoutMs?: number;
  /** ms to open a connection (default 2000) */
  connectTimeoutMs?: number;
}

/** Reconnect backoff: 100 ms, 200 ms, … up to 2 s between tries, for ever. */
function retry(times: number): number {
  return Math.min(times * 100, 2000);
}

export class RedisLink {
  readonly client: Redis;
  #state: LinkState = 'down';
  /** ms since epoch of the last change of state */
  #since = Date.now();
  #lastError = '';
  /** how many times the link went down since start */
  #downs = 0;
  readonly #listeners: ((state: LinkState) => void)[] = [];
  readonly #options: RedisOptions;
  readonly #log: LinkLog;
  #closed = false;
  #everUp = false;

  constructor(url: string, log: LinkLog, opts: RedisLinkOptions = {}) {
    this.#log = log;
    this.#options = {
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: opts.commandTimeoutMs ?? 1000,
      connectTimeout: opts.connectTimeoutMs ?? 2000,
      retryStrategy: retry,
      enableReadyCheck: true,
      lazyConnect: false,
      connectionName: 'llm-gateway',
    };
    const { Redis: Client } = requireLazily('ioredis') as { Redis: typeof Redis };
    this.client = new Client(url, this.#options);
    this.client.on('ready', () => this.#set('up', ''));
    this.client.on('error', (err: Error) => {
      this.#lastError = err.message;
    });
    this.client.on('close', () => this.#set('down', this.#lastError || 'connection closed'));
  }

  get state(): LinkState {
    return this.#state;
  }

  get up(): boolean {
    return this.#state === 'up';
  }

  /** What /health and doctor show: state, since when, the last error while down, how often it went down. */
  status(): { state: LinkState; since: string; error?: string; downs: number } {
    return {
      state: this.#state,
      since: new Date(this.#since).toISOString(),
      ...(this.#state === 'down' && this.#lastError !== '' ? { error: this.#lastError } : {}),
      downs: this.#downs,
    };
  }

  /** Called on every change of state (after the log line). */
  onChange(listener: (state: LinkState) => void): void {
    this.#listeners.push(listener);
  }

  /** Resolves when the link is up, or rejects after `timeoutMs`. */
  ready(timeoutMs = 3000): Promise<void> {
    if (this.up) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.client.off('ready', onReady);
        reject(new Error(`Redis did not answer within ${timeoutMs} ms${this.#lastError === '' ? '' : `: ${this.#lastError}`}`));
      }, timeoutMs);
      const onReady = (): void => {
        clearTimeout(timer);
        resolve();
      };
      this.client.once('ready', onReady);
    });
  }

  /** A second connection on the same server with the same options (pub/sub needs its own). */
  duplicate(): Redis {
    return this.client.duplicate(this.#options);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.client.quit().catch(() => this.client.disconnect());
  }

  #set(state: LinkState, error: string): void {
    if (this.#closed || state === this.#state) return;
    if (state === 'down' && !this.#everUp && this.#downs > 0) return; // still not reachable since start: said once
    this.#state = state;
    this.#since = Date.now();
    if (state === 'down') {
      this.#downs++;
      // The URL is never logged: it may hold a password.
      this.#log.error({ redis: 'down', error }, 'Redis cannot be reached: shared counting is off until it is back (GATEWAY_REDIS_DOWN)');
    } else {
      this.#log.info(
        { redis: 'up' },
        this.#everUp ? 'Redis is reachable again: counting is shared again' : 'Redis connected: counting is shared',
      );
      this.#everUp = true;
    }
    for (const l of this.#listeners) l(state);
  }
}
