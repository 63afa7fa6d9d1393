// Keeps the in-memory key index in step with its two sources: LLM_API_KEYS (fixed at start) and
// the key database, which other processes (the CLI) change. A timer polls SQLite's data_version,
// a cheap in-memory read, and reloads the index only when another connection committed. It also
// writes the keys' last-used times in batches, so no request ever touches the disk.
import { KEY_CHARACTERS_REASON, KeyIndex, isPrintableAscii, type IndexEntry, type KeyIdentity } from './key-index.js';
import type { StoredKey } from './key-record.js';
import type { KeyStore } from './key-store.js';

const DEFAULT_POLL_MS = 250;

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

export interface RegistryLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export class KeyRegistry {
  readonly index = new KeyIndex();
  readonly store: KeyStore | undefined;
  readonly #env: readonly IndexEntry[];
  #lastUsed = new Map<string, number>();
  /** Names of stored keys left out of the index because they could never match (see reload). */
  #unusable: string[] = [];
  #timer: NodeJS.Timeout | undefined;
  /** Called after every reload (alerts/key-watch.ts compares the keys before and after). */
  #reloaded: (() => void)[] = [];

  constructor(envKeys: readonly string[], store?: KeyStore) {
    this.#env = KeyIndex.envEntries(envKeys);
    this.store = store;
    this.reload();
  }

  /** Rebuilds the index from both sources. */
  reload(): void {
    const stored = this.store === undefined ? [] : this.store.list();
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

  /** One poll: reload if the database changed elsewhere, then write last-used times. */
  tick(log?: RegistryLog): void {
    if (this.store === undefined) return;
    try {
      if (this.store.changedElsewhere()) {
        this.reload();
        log?.info({ keys: this.index.size }, 'keys reloaded: the key database changed');
        this.#warnUnusable(log);
      }
      this.flushLastUsed();
    } catch (err) {
      log?.error(
        { err: { message: (err as Error).message, code: (err as { code?: string }).code } },
        'key database poll failed; keeping the keys in memory',
      );
    }
  }

  flushLastUsed(): void {
    if (this.store === undefined || this.#lastUsed.size === 0) return;
    const batch = this.#lastUsed;
    this.#lastUsed = new Map();
    this.store.recordLastUsed(batch);
  }

  start(log?: RegistryLog, pollMs = DEFAULT_POLL_MS): void {
    if (this.store === undefined || this.#timer !== undefined) return;
    this.#warnUnusable(log);
    this.#timer = setInterval(() => this.tick(log), pollMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    try {
      this.flushLastUsed();
    } catch {
      // the database went away; last-used times are not worth failing a shutdown for
    }
  }
}
