// The key database's `keys` table: only a SHA-256 digest of each key plus a short non-secret
// prefix for display. Framework-free: the gateway, the admin API and the `llm-gateway keys` CLI all
// use this module. What a record holds and which values it accepts: key-record.ts; its row, shared
// with the PostgreSQL store (pg-key-store.ts): key-rows.ts. The connection is opened and tuned by
// storage/db.ts and handed in (or opened by KeyStore.open).
import type Database from 'better-sqlite3';
import { DatabaseUnusable, openDatabase, type DatabaseUse } from '../storage/db.js';
import { KeyStoreError, publicRecord, type KeyChanges, type KeyInput, type KeyRecord, type StoredKey } from './key-record.js';
import { changedColumns, fromRow, nameTaken, newKeyRow, notFound, rotatedSecret, type KeyRow as Row } from './key-rows.js';

// The store's face for the CLI and the admin API: the record's types and its errors come with it.
export { KeyStoreError, LIMIT_NAMES, keyJson, type KeyChanges, type KeyRecord } from './key-record.js';
export type { KeyLimits } from '../admission/limits.js';

export class KeyStore {
  readonly path: string;
  readonly #db: Database.Database;
  #dataVersion: number;

  /** A store on `db`, a connection opened by storage/db.ts (the one who opened it closes it). */
  constructor(db: Database.Database) {
    this.path = db.name;
    this.#db = db;
    this.#dataVersion = this.#readDataVersion();
  }

  /**
   * Opens (creating the file and its folder on first use) and migrates the database, tuned for
   * `use` (storage/db.ts); the store's close() closes it. Throws a KeyStoreError with a clear
   * message for a file that is not a database, read-only, or newer.
   */
  static open(path: string, use: DatabaseUse = 'command'): KeyStore {
    return new KeyStore(openDatabaseForKeys(path, use));
  }

  /** The shared connection (the usage store writes through it, so its writes are "our own"). */
  get db(): Database.Database {
    return this.#db;
  }

  close(): void {
    if (this.#db.open) this.#db.close();
  }

  list(): StoredKey[] {
    return (this.#db.prepare('SELECT * FROM keys ORDER BY created_at, name').all() as Row[]).map(fromRow);
  }

  count(): number {
    return (this.#db.prepare('SELECT count(*) AS n FROM keys').get() as { n: number }).n;
  }

  /** By id or by name. */
  find(idOrName: string): StoredKey | undefined {
    const row = this.#db.prepare('SELECT * FROM keys WHERE id = ? OR name = ?').get(idOrName, idOrName) as Row | undefined;
    return row === undefined ? undefined : fromRow(row);
  }

  get(idOrName: string): StoredKey {
    const k = this.find(idOrName);
    if (k === undefined) throw notFound(idOrName);
    return k;
  }

  /** Creates a key; returns its record and the secret, which is never stored or shown again. */
  create(input: KeyInput, now = Date.now()): { record: KeyRecord; key: string } {
    const { key, row } = newKeyRow(input, now);
    try {
      this.#db
        .prepare(
          `INSERT INTO keys (id, name, note, digest, prefix, enabled, created_at, expires_at, models, origins, rpm, tpm, tpd, concurrency, policy, budgets)
           VALUES (@id, @name, @note, @digest, @prefix, @enabled, @created_at, @expires_at, @models, @origins, @rpm, @tpm, @tpd, @concurrency, @policy, @budgets)`,
        )
        .run(row);
    } catch (err) {
      throw uniqueNameError(err, row.name);
    }
    return { record: publicRecord(this.get(row.id)), key };
  }

  /** Changes the given fields; returns the new record. */
  update(idOrName: string, changes: KeyChanges, now = Date.now()): KeyRecord {
    const current = this.get(idOrName);
    const columns = changedColumns(current, changes, now);
    if (columns.size > 0) {
      const sets = [...columns.keys()].map((column) => `${column} = @${column}`);
      try {
        this.#db.prepare(`UPDATE keys SET ${sets.join(', ')} WHERE id = @id`).run({ ...Object.fromEntries(columns), id: current.id });
      } catch (err) {
        throw uniqueNameError(err, String(changes.name));
      }
    }
    return publicRecord(this.get(current.id));
  }

  /** A new secret for the same record; the old secret stops working. */
  rotate(idOrName: string): { record: KeyRecord; key: string } {
    const current = this.get(idOrName);
    const { key, digest, prefix } = rotatedSecret();
    this.#db.prepare('UPDATE keys SET digest = ?, prefix = ? WHERE id = ?').run(digest, prefix, current.id);
    return { record: publicRecord(this.get(current.id)), key };
  }

  /** Deletes the key; returns what it was. */
  revoke(idOrName: string): KeyRecord {
    const current = this.get(idOrName);
    this.#db.prepare('DELETE FROM keys WHERE id = ?').run(current.id);
    return publicRecord(current);
  }

  /** Writes last-used times gathered in memory, in one transaction (off the request path). */
  recordLastUsed(times: ReadonlyMap<string, number>): void {
    if (times.size === 0) return;
    const stmt = this.#db.prepare('UPDATE keys SET last_used_at = max(coalesce(last_used_at, 0), ?) WHERE id = ?');
    this.#db.transaction(() => {
      for (const [id, at] of times) stmt.run(at, id);
    })();
  }

  /**
   * True when another connection (the CLI, another gateway) committed a change since the last call.
   * PRAGMA data_version is a cheap in-memory read; our own writes do not change it.
   */
  changedElsewhere(): boolean {
    const v = this.#readDataVersion();
    if (v === this.#dataVersion) return false;
    this.#dataVersion = v;
    return true;
  }

  #readDataVersion(): number {
    return this.#db.pragma('data_version', { simple: true }) as number;
  }
}

function openDatabaseForKeys(path: string, use: DatabaseUse): Database.Database {
  try {
    return openDatabase(path, use);
  } catch (err) {
    if (err instanceof DatabaseUnusable) throw new KeyStoreError('db_unusable', err.message);
    throw err;
  }
}

function uniqueNameError(err: unknown, name: string): unknown {
  const code = (err as { code?: string }).code;
  if (code === 'SQLITE_CONSTRAINT_UNIQUE' && String((err as Error).message).includes('keys.name')) {
    return nameTaken(name);
  }
  return err;
}
