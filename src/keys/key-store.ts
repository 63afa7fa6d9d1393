// The key database's `keys` table: only a SHA-256 digest of each key plus a short non-secret
// prefix for display. Framework-free: the gateway, the admin API and the `llm-gateway keys` CLI all
// use this module. What a record holds and which values it accepts: key-record.ts. The connection
// is opened and tuned by storage/db.ts and handed in (or opened by KeyStore.open).
import type Database from 'better-sqlite3';
import { DatabaseUnusable, openDatabase, type DatabaseUse } from '../storage/db.js';
import { mergeBudgets, validBudgets } from './key-budgets.js';
import { digestKey } from './key-index.js';
import { mergePolicy, validPolicy } from './key-policy.js';
import {
  DISPLAY_PREFIX_LENGTH,
  KeyStoreError,
  LIMIT_NAMES,
  generateKey,
  newId,
  publicRecord,
  validLimit,
  validList,
  validName,
  type KeyChanges,
  type KeyInput,
  type KeyRecord,
  type StoredKey,
} from './key-record.js';
import type { KeyBudgets } from './key-budgets.js';
import type { KeyPolicy } from './key-policy.js';

// The store's face for the CLI and the admin API: the record's types and its errors come with it.
export { KeyStoreError, LIMIT_NAMES, keyJson, type KeyChanges, type KeyRecord } from './key-record.js';
export type { KeyLimits } from '../admission/limits.js';

interface Row {
  id: string;
  name: string;
  note: string;
  digest: Buffer;
  prefix: string;
  enabled: number;
  created_at: number;
  expires_at: number | null;
  last_used_at: number | null;
  models: string | null;
  origins: string | null;
  rpm: number | null;
  tpm: number | null;
  tpd: number | null;
  concurrency: number | null;
  policy: string | null;
  budgets: string | null;
}

function fromRow(r: Row): StoredKey {
  return {
    id: r.id,
    name: r.name,
    note: r.note,
    prefix: r.prefix,
    enabled: r.enabled === 1,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    lastUsedAt: r.last_used_at,
    models: r.models === null ? null : (JSON.parse(r.models) as string[]),
    origins: r.origins === null ? null : (JSON.parse(r.origins) as string[]),
    limits: { rpm: r.rpm, tpm: r.tpm, tpd: r.tpd, concurrency: r.concurrency },
    policy: r.policy === null ? null : (JSON.parse(r.policy) as KeyPolicy),
    budgets: r.budgets === null ? null : (JSON.parse(r.budgets) as KeyBudgets),
    digest: r.digest,
  };
}

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
    if (k === undefined) throw new KeyStoreError('key_not_found', `no key named or with id "${idOrName}"`);
    return k;
  }

  /** Creates a key; returns its record and the secret, which is never stored or shown again. */
  create(input: KeyInput, now = Date.now()): { record: KeyRecord; key: string } {
    const key = generateKey();
    const id = newId();
    const name = validName(input.name);
    if (input.expiresAt !== undefined && input.expiresAt !== null && input.expiresAt <= now) {
      throw new KeyStoreError('invalid_key_field', 'expires is in the past', 'expires');
    }
    const limits = input.limits ?? {};
    try {
      this.#db
        .prepare(
          `INSERT INTO keys (id, name, note, digest, prefix, enabled, created_at, expires_at, models, origins, rpm, tpm, tpd, concurrency, policy, budgets)
           VALUES (@id, @name, @note, @digest, @prefix, @enabled, @created_at, @expires_at, @models, @origins, @rpm, @tpm, @tpd, @concurrency, @policy, @budgets)`,
        )
        .run({
          id,
          name,
          note: input.note ?? '',
          digest: digestKey(key),
          prefix: key.slice(0, DISPLAY_PREFIX_LENGTH),
          enabled: input.enabled === false ? 0 : 1,
          created_at: now,
          expires_at: input.expiresAt ?? null,
          models: validList('models', input.models) ?? null,
          origins: validList('origins', input.origins) ?? null,
          rpm: validLimit('rpm', limits.rpm) ?? null,
          tpm: validLimit('tpm', limits.tpm) ?? null,
          tpd: validLimit('tpd', limits.tpd) ?? null,
          concurrency: validLimit('concurrency', limits.concurrency) ?? null,
          policy: jsonOrNull(validPolicy(input.policy)),
          budgets: jsonOrNull(validBudgets(input.budgets)),
        });
    } catch (err) {
      throw uniqueNameError(err, name);
    }
    return { record: publicRecord(this.get(id)), key };
  }

  /** Changes the given fields; returns the new record. */
  update(idOrName: string, changes: KeyChanges, now = Date.now()): KeyRecord {
    const current = this.get(idOrName);
    const sets: string[] = [];
    const values: Record<string, unknown> = { id: current.id };
    const set = (column: string, value: unknown): void => {
      sets.push(`${column} = @${column}`);
      values[column] = value;
    };
    if (changes.name !== undefined) set('name', validName(changes.name));
    if (changes.note !== undefined) set('note', changes.note);
    if (changes.enabled !== undefined) set('enabled', changes.enabled ? 1 : 0);
    if (changes.expiresAt !== undefined) {
      if (changes.expiresAt !== null && changes.expiresAt <= now)
        throw new KeyStoreError('invalid_key_field', 'expires is in the past', 'expires');
      set('expires_at', changes.expiresAt);
    }
    if (changes.models !== undefined) set('models', validList('models', changes.models));
    if (changes.origins !== undefined) set('origins', validList('origins', changes.origins));
    for (const limit of LIMIT_NAMES) {
      const v = changes.limits?.[limit];
      if (v !== undefined) set(limit, validLimit(limit, v));
    }
    if (changes.policy !== undefined) set('policy', jsonOrNull(mergePolicy(current.policy, changes.policy)));
    if (changes.budgets !== undefined) set('budgets', jsonOrNull(mergeBudgets(current.budgets, changes.budgets)));
    if (sets.length > 0) {
      try {
        this.#db.prepare(`UPDATE keys SET ${sets.join(', ')} WHERE id = @id`).run(values);
      } catch (err) {
        throw uniqueNameError(err, String(changes.name));
      }
    }
    return publicRecord(this.get(current.id));
  }

  /** A new secret for the same record; the old secret stops working. */
  rotate(idOrName: string): { record: KeyRecord; key: string } {
    const current = this.get(idOrName);
    const key = generateKey();
    this.#db
      .prepare('UPDATE keys SET digest = ?, prefix = ? WHERE id = ?')
      .run(digestKey(key), key.slice(0, DISPLAY_PREFIX_LENGTH), current.id);
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

function jsonOrNull(doc: object | null): string | null {
  return doc === null ? null : JSON.stringify(doc);
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
    return new KeyStoreError('key_name_taken', `a key named "${name}" already exists`, 'name');
  }
  return err;
}
