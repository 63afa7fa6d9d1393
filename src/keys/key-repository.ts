// What the key registry, the admin API and the `llm-gateway keys` CLI need from a key store, so
// either store serves them: the SQLite file (key-store.ts, synchronous) or PostgreSQL
// (pg-key-store.ts, asynchronous, GATEWAY_DATABASE_URL). Each method returns its value or a promise
// of it; callers await. Both stores check fields and word their refusals alike (key-rows.ts).
import type { KeyChanges, KeyInput, KeyRecord, StoredKey } from './key-record.js';

type MaybePromise<T> = T | Promise<T>;

/** How the registry learns of changes made elsewhere: polled (SQLite) or told (PostgreSQL). */
export interface KeyChangeFeed {
  /** Stops listening (the store stays open). */
  close(): Promise<void>;
}

export interface KeyFeedLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

export interface KeyRepository {
  /** Where the keys are, as told to people: the SQLite file's path, or "PostgreSQL" (never a URL). */
  readonly path: string;
  list(): MaybePromise<StoredKey[]>;
  count(): MaybePromise<number>;
  /** By id or by name. */
  find(idOrName: string): MaybePromise<StoredKey | undefined>;
  /** By id or by name; KeyStoreError key_not_found when there is none. */
  get(idOrName: string): MaybePromise<StoredKey>;
  /** Creates a key; returns its record and the secret, which is never stored or shown again. */
  create(input: KeyInput, now?: number): MaybePromise<{ record: KeyRecord; key: string }>;
  update(idOrName: string, changes: KeyChanges, now?: number): MaybePromise<KeyRecord>;
  /** A new secret for the same record; the old secret stops working. */
  rotate(idOrName: string): MaybePromise<{ record: KeyRecord; key: string }>;
  /** Deletes the key; returns what it was. */
  revoke(idOrName: string): MaybePromise<KeyRecord>;
  /** Writes last-used times gathered in memory (off the request path). */
  recordLastUsed(times: ReadonlyMap<string, number>): MaybePromise<void>;
  close(): MaybePromise<void>;
  /** SQLite: true when another connection committed since the last call (the registry polls it). */
  changedElsewhere?(): boolean;
  /**
   * PostgreSQL: calls `changed` after every committed key change (any process) and each time the
   * feed (re)connects, since changes made while it was away were not told; `reachable` on each
   * loss and return of the connection.
   */
  watch?(changed: () => void, reachable: (up: boolean, reason?: string) => void, log?: KeyFeedLog): KeyChangeFeed;
}
