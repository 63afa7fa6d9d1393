// The key database: an embedded SQLite file (better-sqlite3, WAL), holding only a SHA-256 digest of
// each key plus a short non-secret prefix for display. Framework-free: the gateway, the admin API
// and the `llm-gateway keys` CLI all use this module.
import { randomBytes } from 'node:crypto';
import type Database from 'better-sqlite3';
import { DatabaseUnusable, MIGRATIONS, openDatabase } from '../storage/db.js';
import { digestKey, type KeyLimits } from './key-index.js';

export type { KeyLimits };

export const LIMIT_NAMES = ['rpm', 'tpm', 'tpd', 'concurrency'] as const;

export interface KeyRecord {
  readonly id: string;
  readonly name: string;
  readonly note: string;
  /** The first characters of the key, for recognising it (not enough to use it). */
  readonly prefix: string;
  readonly enabled: boolean;
  readonly createdAt: number;
  readonly expiresAt: number | null;
  readonly lastUsedAt: number | null;
  /** null: every model */
  readonly models: readonly string[] | null;
  /** null: every origin */
  readonly origins: readonly string[] | null;
  readonly limits: KeyLimits;
}

/** A record with its digest, for the in-memory auth index. */
export interface StoredKey extends KeyRecord {
  readonly digest: Buffer;
}

export interface KeyInput {
  name: string;
  note?: string;
  enabled?: boolean;
  expiresAt?: number | null;
  models?: readonly string[] | null;
  origins?: readonly string[] | null;
  limits?: Partial<KeyLimits>;
}

export type KeyChanges = Partial<KeyInput>;

/** What the store says when an operation cannot be done; `status` is the HTTP status for the admin API. */
export class KeyStoreError extends Error {
  constructor(
    readonly code: 'key_not_found' | 'key_name_taken' | 'invalid_key_field' | 'db_unusable',
    message: string,
    readonly status: number,
    /** the field at fault, for invalid_key_field */
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'KeyStoreError';
  }
}

const KEY_PREFIX = 'sk-';
const KEY_RANDOM_BYTES = 24; // 192 bits
const DISPLAY_PREFIX_LENGTH = 10; // "sk-" + 7 characters: 42 of 192 bits
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
const ID_PATTERN = /^key_[0-9a-f]{12}$/;

export function generateKey(): string {
  return KEY_PREFIX + randomBytes(KEY_RANDOM_BYTES).toString('base64url');
}

function newId(): string {
  return `key_${randomBytes(6).toString('hex')}`;
}

export { MIGRATIONS };

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
    digest: r.digest,
  };
}

/** The record without its digest (what the CLI and admin API show). */
export function publicRecord(k: StoredKey | KeyRecord): KeyRecord {
  const { digest: _digest, ...rest } = k as StoredKey;
  return rest;
}

/** The record as JSON for the admin API and `keys … --json` (times as ISO strings). */
export function keyJson(k: KeyRecord): Record<string, unknown> {
  const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());
  return {
    id: k.id,
    name: k.name,
    note: k.note,
    prefix: k.prefix,
    enabled: k.enabled,
    created_at: iso(k.createdAt),
    expires_at: iso(k.expiresAt),
    last_used_at: iso(k.lastUsedAt),
    models: k.models,
    origins: k.origins,
    limits: k.limits,
  };
}

function validName(name: string): string {
  if (!NAME_PATTERN.test(name)) {
    throw new KeyStoreError('invalid_key_field', `name "${name}" is not valid: use 1-64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit`, 400, 'name');
  }
  if (name.startsWith('env-')) throw new KeyStoreError('invalid_key_field', 'names starting with "env-" are reserved for LLM_API_KEYS', 400, 'name');
  // Keys are found by id or name; a name shaped like an id could shadow another key.
  if (ID_PATTERN.test(name)) throw new KeyStoreError('invalid_key_field', `name "${name}" looks like a key id; choose another name`, 400, 'name');
  return name;
}

function validList(field: 'models' | 'origins', list: readonly string[] | null | undefined): string | null | undefined {
  if (list === undefined) return undefined;
  if (list === null) return null;
  const items = [...new Set(list.map((s) => s.trim()).filter((s) => s !== ''))];
  if (items.length === 0) throw new KeyStoreError('invalid_key_field', `${field} must name at least one entry (or be "all")`, 400, field);
  if (field === 'origins') {
    for (const o of items) {
      let ok = false;
      try {
        ok = new URL(o).origin === o;
      } catch {
        ok = false;
      }
      if (!ok) throw new KeyStoreError('invalid_key_field', `origin "${o}" is not an exact origin like https://chat.example.com (no path, no trailing slash)`, 400, 'origins');
    }
  }
  return JSON.stringify(items);
}

function validLimit(name: string, v: number | null | undefined): number | null | undefined {
  if (v === undefined || v === null) return v;
  if (!Number.isSafeInteger(v) || v < 1) throw new KeyStoreError('invalid_key_field', `${name} must be a whole number ≥ 1 (or none)`, 400, `limits.${name}`);
  return v;
}

export class KeyStore {
  readonly path: string;
  readonly #db: Database.Database;
  #dataVersion: number;

  private constructor(path: string, db: Database.Database) {
    this.path = path;
    this.#db = db;
    this.#dataVersion = this.#readDataVersion();
  }

  /**
   * Opens (creating the file and its folder on first use) and migrates the database. Throws a
   * KeyStoreError with a clear message for a file that is not a database, read-only, or newer.
   */
  static open(path: string): KeyStore {
    return new KeyStore(path, openDatabaseForKeys(path));
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
    if (k === undefined) throw new KeyStoreError('key_not_found', `no key named or with id "${idOrName}"`, 404);
    return k;
  }

  /** Creates a key; returns its record and the secret, which is never stored or shown again. */
  create(input: KeyInput, now = Date.now()): { record: KeyRecord; key: string } {
    const key = generateKey();
    const id = newId();
    const name = validName(input.name);
    if (input.expiresAt !== undefined && input.expiresAt !== null && input.expiresAt <= now) {
      throw new KeyStoreError('invalid_key_field', 'expires is in the past', 400, 'expires');
    }
    const limits = input.limits ?? {};
    try {
      this.#db
        .prepare(
          `INSERT INTO keys (id, name, note, digest, prefix, enabled, created_at, expires_at, models, origins, rpm, tpm, tpd, concurrency)
           VALUES (@id, @name, @note, @digest, @prefix, @enabled, @created_at, @expires_at, @models, @origins, @rpm, @tpm, @tpd, @concurrency)`,
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
      if (changes.expiresAt !== null && changes.expiresAt <= now) throw new KeyStoreError('invalid_key_field', 'expires is in the past', 400, 'expires');
      set('expires_at', changes.expiresAt);
    }
    if (changes.models !== undefined) set('models', validList('models', changes.models));
    if (changes.origins !== undefined) set('origins', validList('origins', changes.origins));
    for (const limit of LIMIT_NAMES) {
      const v = changes.limits?.[limit];
      if (v !== undefined) set(limit, validLimit(limit, v));
    }
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
    this.#db.prepare('UPDATE keys SET digest = ?, prefix = ? WHERE id = ?').run(digestKey(key), key.slice(0, DISPLAY_PREFIX_LENGTH), current.id);
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

function openDatabaseForKeys(path: string): Database.Database {
  try {
    return openDatabase(path);
  } catch (err) {
    if (err instanceof DatabaseUnusable) throw new KeyStoreError('db_unusable', err.message, 500);
    throw err;
  }
}

function uniqueNameError(err: unknown, name: string): unknown {
  const code = (err as { code?: string }).code;
  if (code === 'SQLITE_CONSTRAINT_UNIQUE' && String((err as Error).message).includes('keys.name')) {
    return new KeyStoreError('key_name_taken', `a key named "${name}" already exists`, 409, 'name');
  }
  return err;
}
