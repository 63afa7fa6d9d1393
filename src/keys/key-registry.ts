// Keeps the in-memory key index in step with its two sources: LLM_API_KEYS (fixed at start) and
// the key database, which other processes (the CLI, other gateways) change. On the SQLite file a
// timer polls its data_version, a cheap in-memory read, and reloads the index only when another
// connection committed. On PostgreSQL the store's feed (keys/pg-key-feed.ts) tells each committed
// change and the index is reloaded (coalesced: one reload running, at most one waiting); while
// PostgreSQL cannot be reached the index keeps its last known state (a disabled key stays refused:
// auth never fails open), said once when lost and once when back. It also writes the keys'
// last-used times in batches, so no request ever touches the database.
import { KEY_CHARACTERS_REASON, KeyIndex, isPrintableAscii, type IndexEntry, type KeyIdentity } from './key-index.js';
import type { StoredKey } from './key-record.js';
import type { KeyChangeFeed, KeyFeedLog, KeyRepository } from './key-repository.js';
import { KeyStore } from './key-store.js';

const DEFAULT_POLL_MS = 250;
/** PostgreSQL: how often last-used times are written (changes are told, not polled). */
const DEFAULT_PG_FLUSH_MS = 1000;
/**
 * PostgreSQL: the keys are read again every this many ticks (30 s) even when nothing was told. A
 * notification can be lost on a connection that otherwise works (LISTEN behind PgBouncer in
 * transaction mode, a proxy, a NOTIFY queue full): without this a key revoked elsewhere would stay
 * accepted here until a reconnect. One `SELECT * FROM keys` per gateway per 30 s.
 */
const PG_SAFETY_RELOAD_TICKS = 30;

function entryOf(k: StoredKey): IndexEntry {
  return {
    digest: k.digest,
    identity: {
      id: k.id,
      name: k.name,
      fromDb: true,
      enabled: k.enabled,
      expiresAt: k.expiresAt,
      models: k.models === null ? null : new Set(k.models),
      origins: k.origins === null ? null : new Set(k.origins),
      limits: k.limits,
      policy: k.policy,
      budgets: k.budgets,
    },
  };
}

export type RegistryLog = KeyFeedLog;

export class KeyRegistry {
  readonly index = new KeyIndex();
  readonly store: KeyRepository | undefined;
  /** The store when it is the SQLite file (its connection is shared with the usage table and checkpointed). */
  readonly sqlite: KeyStore | undefined;
  readonly #env: readonly IndexEntry[];
  #lastUsed = new Map<string, number>();
  /** Names of stored keys left out of the index because they could never match (see reload). */
  #unusable: string[] = [];
  #timer: NodeJS.Timeout | undefined;
  /** Called after every reload (alerts/key-watch.ts compares the keys before and after). */
  #reloaded: (() => void)[] = [];
  // PostgreSQL only (a store with watch()): the change feed, the reload running and the one waiting,
  // whether the database is out of reach, a last-used write in flight, the stop in progress.
  #feed: KeyChangeFeed | undefined;
  #running: Promise<void> = Promise.resolve();
  #waiting: Promise<void> | undefined;
  #down = false;
  #toldChanged = false;
  #flushing: Promise<void> | undefined;
  #stopping: Promise<void> | undefined;
  #log: RegistryLog | undefined;
  /** ticks since the last reload read for safety (PG_SAFETY_RELOAD_TICKS) */
  #ticks = 0;

  /** With a PostgreSQL store the index holds LLM_API_KEYS only until `await load()`. */
  constructor(envKeys: readonly string[], store?: KeyRepository) {
    this.#env = KeyIndex.envEntries(envKeys);
    this.store = store;
    this.sqlite = store instanceof KeyStore ? store : undefined;
    if (store?.watch === undefined) void this.reload();
    else this.index.replace(this.#env);
  }

  /** True while a PostgreSQL store cannot be reached (the keys are served from memory meanwhile). */
  get storeDown(): boolean {
    return this.#down;
  }

  /**
   * PostgreSQL: the first load, before the gateway listens; throws (KeyStoreError) when the keys
   * cannot be read. SQLite: a reload.
   */
  async load(): Promise<void> {
    if (this.store === undefined) return;
    this.#apply(await this.store.list());
  }

  /**
   * Rebuilds the index from both sources. SQLite (or no store): at once. PostgreSQL: resolves once
   * a reload that started after this call is done; never rejects (a failure keeps the index as it
   * is and counts as the database being out of reach).
   */
  reload(): void | Promise<void> {
    if (this.store?.watch !== undefined) return this.#reloadSoon();
    const stored = this.store === undefined ? [] : this.store.list();
    // Only PostgreSQL's store answers with promises, and it has watch().
    if (stored instanceof Promise) throw new TypeError('a key store without watch() must answer synchronously');
    this.#apply(stored);
  }

  #reloadSoon(): Promise<void> {
    if (this.#waiting !== undefined) return this.#waiting;
    const next = this.#running.then(async () => {
      this.#waiting = undefined;
      const told = this.#toldChanged;
      this.#toldChanged = false;
      try {
        this.#apply(await this.store!.list());
        this.#reachable(true);
        if (told) {
          this.#log?.info({ keys: this.index.size }, 'keys reloaded: the key database changed');
          this.#warnUnusable(this.#log);
        }
      } catch (err) {
        this.#reachable(false, (err as Error).message);
      }
    });
    this.#waiting = next;
    this.#running = next;
    return next;
  }

  #reachable(up: boolean, reason?: string): void {
    if (up === !this.#down) return;
    this.#down = !up;
    if (up) this.#log?.info({}, 'key database (PostgreSQL) reachable again: keys reloaded');
    else
      this.#log?.error(
        { reason },
        'key database (PostgreSQL) unreachable: keys keep working from memory as last loaded (disabled keys stay refused); retrying',
      );
  }

  #apply(stored: readonly StoredKey[]): void {
    // The gateway makes its keys itself (sk- + base64url), but a row written from outside could
    // hold a non-ASCII key, which no client can present: left out, and said (start, tick). Only
    // the non-secret prefix can be checked; the rest of the key is known by its digest alone.
    const usable = stored.filter((k) => isPrintableAscii(k.prefix));
    this.#unusable = usable.length === stored.length ? [] : stored.filter((k) => !isPrintableAscii(k.prefix)).map((k) => k.name);
    this.index.replace([...this.#env, ...usable.map(entryOf)]);
    for (const listener of this.#reloaded) listener();
  }

  /** Calls `listener` after each reload (the admin API's own writes and changes seen by the poll); returns its removal. */
  onReload(listener: () => void): () => void {
    this.#reloaded.push(listener);
    return () => {
      this.#reloaded = this.#reloaded.filter((l) => l !== listener);
    };
  }

  #warnUnusable(log?: RegistryLog): void {
    if (this.#unusable.length > 0)
      log?.warn({ keys: this.#unusable }, `stored keys skipped: ${KEY_CHARACTERS_REASON}; rotate them (llm-gateway keys rotate NAME)`);
  }

  get size(): number {
    return this.index.size;
  }

  /** Keys that would be accepted now (enabled, not expired). */
  usable(now = Date.now()): number {
    let n = 0;
    for (const identity of this.index.identities()) if (identity.enabled && (identity.expiresAt === null || identity.expiresAt > now)) n++;
    return n;
  }

  /** Called on each authenticated request: remembered in memory, written by the timer. */
  markUsed(identity: KeyIdentity, now: number): void {
    if (identity.fromDb) this.#lastUsed.set(identity.id, now);
  }

  /** One poll: reload if the database changed elsewhere (SQLite), then write last-used times. */
  tick(log?: RegistryLog): void {
    if (this.store === undefined) return;
    if (this.#feed !== undefined) {
      // Out of reach: read the keys again each tick (the feed's reconnect reloads too); the first
      // read that works says it is back. Reachable: read them again every PG_SAFETY_RELOAD_TICKS
      // anyway (a lost notification).
      if (this.#down || ++this.#ticks >= PG_SAFETY_RELOAD_TICKS) {
        this.#ticks = 0;
        void this.#reloadSoon();
      }
      void this.flushLastUsed();
      return;
    }
    try {
      if (this.store.changedElsewhere?.() === true) {
        void this.reload();
        log?.info({ keys: this.index.size }, 'keys reloaded: the key database changed');
        this.#warnUnusable(log);
      }
      void this.flushLastUsed();
    } catch (err) {
      log?.error(
        { err: { message: (err as Error).message, code: (err as { code?: string }).code } },
        'key database poll failed; keeping the keys in memory',
      );
    }
  }

  /**
   * Writes the last-used times gathered since the last write. PostgreSQL: one write at a time; a
   * batch that fails is kept (merged with newer times) and tried again on the next tick, so times
   * gathered while the database is away are written when it returns. The map holds one entry per
   * key, so it stays as small as the key list.
   */
  flushLastUsed(): void | Promise<void> {
    if (this.store === undefined || this.#lastUsed.size === 0 || this.#flushing !== undefined) return;
    const batch = this.#lastUsed;
    this.#lastUsed = new Map();
    const written = this.store.recordLastUsed(batch);
    if (!(written instanceof Promise)) return;
    this.#flushing = written.then(
      () => {
        this.#flushing = undefined;
      },
      (err: unknown) => {
        this.#flushing = undefined;
        for (const [id, at] of batch) if ((this.#lastUsed.get(id) ?? 0) < at) this.#lastUsed.set(id, at);
        this.#reachable(false, (err as Error).message);
      },
    );
    return this.#flushing;
  }

  start(log?: RegistryLog, pollMs?: number): void {
    if (this.store === undefined || this.#timer !== undefined) return;
    this.#warnUnusable(log);
    this.#log = log;
    if (this.store.watch !== undefined) {
      this.#feed = this.store.watch(
        () => {
          this.#toldChanged = true;
          void this.#reloadSoon();
        },
        (up, reason) => {
          // The feed's return is told by the reload it triggers (which reads the keys again).
          if (!up) this.#reachable(false, reason);
        },
        log,
      );
    }
    this.#timer = setInterval(() => this.tick(log), pollMs ?? (this.#feed === undefined ? DEFAULT_POLL_MS : DEFAULT_PG_FLUSH_MS));
    this.#timer.unref();
  }

  /** Stops polling or listening and writes the last last-used times (PostgreSQL: begins it; see stopped()). */
  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.store?.watch !== undefined) {
      this.#stopping ??= this.#stopListening();
      return;
    }
    try {
      void this.flushLastUsed();
    } catch {
      // the database went away; last-used times are not worth failing a shutdown for
    }
  }

  /** PostgreSQL: resolves once what stop() began is done (server.ts ends the pool after it). */
  stopped(): Promise<void> {
    return this.#stopping ?? Promise.resolve();
  }

  async #stopListening(): Promise<void> {
    const feed = this.#feed;
    this.#feed = undefined;
    await feed?.close();
    await this.#flushing;
    await this.flushLastUsed(); // a failure is kept in memory, not thrown
  }
}
