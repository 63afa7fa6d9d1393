// How a gateway hears of key changes made by any other process on PostgreSQL: LISTEN on a connection
// of its own, held out of the pool for as long as it lives. pg-key-store.ts NOTIFYs in the same
// transaction as each change; the payload is the schema the change was made in, and only our own
// schema's are passed on. A NOTIFY sent while we are not listening is lost, so every (re)connect is
// itself told as a change: the registry reloads and has missed nothing. A lost connection (an
// error, its end, or a heartbeat query that fails: a silent network cut sends neither) is retried
// with backoff, forever, until close().
import type pg from 'pg';
import { describePgError } from '../storage/pg.js';
import type { KeyChangeFeed, KeyFeedLog } from './key-repository.js';

const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 5000;
const HEARTBEAT_MS = 5000;

interface FeedListeners {
  /** a change was committed (or may have been, while we were not listening) */
  changed(): void;
  /** the connection was lost (with why) or is back */
  reachable(up: boolean, reason?: string): void;
  log?: KeyFeedLog | undefined;
}

export class PgKeyFeed implements KeyChangeFeed {
  readonly #pool: pg.Pool;
  readonly #channel: string;
  readonly #on: FeedListeners;
  #client: pg.PoolClient | null = null;
  #closed = false;
  #retries = 0;
  #retry: NodeJS.Timeout | undefined;
  #heartbeat: NodeJS.Timeout | undefined;

  constructor(pool: pg.Pool, channel: string, on: FeedListeners) {
    this.#pool = pool;
    this.#channel = channel;
    this.#on = on;
    void this.#connect();
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#retry);
    clearInterval(this.#heartbeat);
    const client = this.#client;
    this.#client = null;
    if (client === null) return;
    await client.query(`UNLISTEN ${this.#channel}`).catch(() => {});
    client.release();
  }

  async #connect(): Promise<void> {
    let client: pg.PoolClient | undefined;
    try {
      client = await this.#pool.connect();
      // Listened to at once: a checked-out client that loses its connection emits 'error', and an
      // error without a listener would end the process.
      const c = client;
      const drop = (err?: unknown): void => this.#drop(c, err === undefined ? 'the connection ended' : describePgError(err));
      c.on('error', drop);
      c.on('end', drop);
      const schema = (await client.query<{ s: string }>('SELECT current_schema() AS s')).rows[0]!.s;
      client.on('notification', (m) => {
        if (m.channel === this.#channel && m.payload === schema) this.#on.changed();
      });
      await client.query(`LISTEN ${this.#channel}`);
    } catch (err) {
      client?.release(true);
      this.#lost(describePgError(err));
      return;
    }
    if (this.#closed) {
      client.release(true);
      return;
    }
    const live = client;
    this.#client = live;
    this.#retries = 0;
    this.#heartbeat = setInterval(() => {
      live.query('SELECT 1').catch((err: unknown) => this.#drop(live, describePgError(err)));
    }, HEARTBEAT_MS);
    this.#heartbeat.unref();
    this.#on.reachable(true);
    this.#on.changed();
  }

  #drop(client: pg.PoolClient, reason: string): void {
    if (this.#client !== client) return;
    this.#client = null;
    clearInterval(this.#heartbeat);
    client.release(true);
    this.#lost(reason);
  }

  #lost(reason: string): void {
    if (this.#closed) return;
    this.#on.reachable(false, reason);
    const wait = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** this.#retries);
    this.#retries++;
    this.#retry = setTimeout(() => void this.#connect(), wait);
    this.#retry.unref();
  }
}
