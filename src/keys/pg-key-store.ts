// The `keys` table in PostgreSQL (GATEWAY_DATABASE_URL), for several gateways sharing their keys:
// the same operations, checks and messages as the SQLite store (key-store.ts; the rows and their
// checks are key-rows.ts), asynchronous. Every change commits with a NOTIFY on KEY_CHANNEL (in the
// same transaction, so it is told exactly when it is visible), which each gateway's key registry
// LISTENs for (pg-key-feed.ts) to reload within a second. Last-used times are not told: they are
// not part of what a gateway checks.
//
// A database that cannot be reached or used is a KeyStoreError 'db_unusable' naming
// GATEWAY_DATABASE_URL (never its value): the admin API answers 500 and logs it, the CLI prints it.
import type pg from 'pg';
import { describePgError, migratePg, pgPool, PostgresUnusable } from '../storage/pg.js';
import { KeyStoreError, publicRecord, type KeyChanges, type KeyInput, type KeyRecord, type StoredKey } from './key-record.js';
import type { KeyChangeFeed, KeyFeedLog, KeyRepository } from './key-repository.js';
import { changedColumns, fromRow, nameTaken, newKeyRow, notFound, rotatedSecret, type KeyRow } from './key-rows.js';
import { PgKeyFeed } from './pg-key-feed.js';

/** The channel every key change is told on; the payload is the schema, so deployments sharing a database tell only their own. */
export const KEY_CHANNEL = 'llmgw_keys';

const NOTIFY = `SELECT pg_notify('${KEY_CHANNEL}', current_schema())`;
/**
 * PostgreSQL's TEXT cannot hold a NUL, which SQLite's takes (a note is any text): a NUL written is
 * U+FFFD (as usage/pg-usage-store.ts and `db migrate-to` do), and one in a name or id asked for
 * names no key (names refuse it, ids are ours) instead of failing as "database unusable".
 */
const fitText = (v: unknown): unknown => (typeof v === 'string' && v.includes('\u0000') ? v.replaceAll('\u0000', '\ufffd') : v);
const BY_ID_OR_NAME = 'SELECT * FROM keys WHERE id = $1 OR name = $1';
const UNIQUE_VIOLATION = '23505';

export class PgKeyStore implements KeyRepository {
  readonly path = 'PostgreSQL';
  readonly #pool: pg.Pool;
  readonly #owned: boolean;

  /** A store on `pool` (opened, migrated and ended by the caller: server.ts). */
  constructor(pool: pg.Pool, owned = false) {
    this.#pool = pool;
    this.#owned = owned;
  }

  /** Opens a pool of its own on `url` and migrates it (the CLI); close() ends it. Throws KeyStoreError db_unusable. */
  static async open(url: string): Promise<PgKeyStore> {
    const pool = pgPool(url, { max: 2, application: 'llm-gateway-cli' });
    try {
      await migratePg(pool);
    } catch (err) {
      await pool.end().catch(() => {});
      if (err instanceof PostgresUnusable) throw new KeyStoreError('db_unusable', err.message);
      throw err;
    }
    return new PgKeyStore(pool, true);
  }

  get pool(): pg.Pool {
    return this.#pool;
  }

  async close(): Promise<void> {
    if (this.#owned) await this.#pool.end().catch(() => {});
  }

  async list(): Promise<StoredKey[]> {
    // COLLATE "C": names in SQLite's order (bytewise), whatever the database's locale.
    return (await this.#query('SELECT * FROM keys ORDER BY created_at, name COLLATE "C"', [])).map(fromRow);
  }

  async count(): Promise<number> {
    const rows = await this.#query<{ n: number }>('SELECT count(*)::int AS n FROM keys', []);
    return rows[0]!.n;
  }

  async find(idOrName: string): Promise<StoredKey | undefined> {
    if (idOrName.includes('\u0000')) return undefined;
    const row = (await this.#query(BY_ID_OR_NAME, [idOrName]))[0];
    return row === undefined ? undefined : fromRow(row);
  }

  async get(idOrName: string): Promise<StoredKey> {
    const k = await this.find(idOrName);
    if (k === undefined) throw notFound(idOrName);
    return k;
  }

  async create(input: KeyInput, now = Date.now()): Promise<{ record: KeyRecord; key: string }> {
    const { key, row } = newKeyRow(input, now);
    const columns = Object.keys(row);
    const sql = `INSERT INTO keys (${columns.join(', ')}) VALUES (${columns.map((_, i) => `$${i + 1}`).join(', ')}) RETURNING *`;
    const stored = await this.#write(async (c) => (await c.query<KeyRow>(sql, Object.values(row).map(fitText))).rows[0]!, row.name);
    return { record: publicRecord(fromRow(stored)), key };
  }

  async update(idOrName: string, changes: KeyChanges, now = Date.now()): Promise<KeyRecord> {
    const row = await this.#write(async (c) => {
      const current = await lockedKey(c, idOrName);
      const columns = changedColumns(current, changes, now);
      if (columns.size === 0) return null;
      const sets = [...columns.keys()].map((column, i) => `${column} = $${i + 2}`);
      return (
        await c.query<KeyRow>(`UPDATE keys SET ${sets.join(', ')} WHERE id = $1 RETURNING *`, [
          current.id,
          ...[...columns.values()].map(fitText),
        ])
      ).rows[0]!;
    }, String(changes.name));
    return row === null ? publicRecord(await this.get(idOrName)) : publicRecord(fromRow(row));
  }

  async rotate(idOrName: string): Promise<{ record: KeyRecord; key: string }> {
    const { key, digest, prefix } = rotatedSecret();
    const row = await this.#write(async (c) => {
      const current = await lockedKey(c, idOrName);
      return (await c.query<KeyRow>('UPDATE keys SET digest = $2, prefix = $3 WHERE id = $1 RETURNING *', [current.id, digest, prefix]))
        .rows[0]!;
    });
    return { record: publicRecord(fromRow(row)), key };
  }

  async revoke(idOrName: string): Promise<KeyRecord> {
    const row = await this.#write(async (c) => {
      const current = await lockedKey(c, idOrName);
      await c.query('DELETE FROM keys WHERE id = $1', [current.id]);
      return current;
    });
    return publicRecord(row);
  }

  /** One statement for the whole batch; the later time wins (another gateway may have written one). */
  async recordLastUsed(times: ReadonlyMap<string, number>): Promise<void> {
    if (times.size === 0) return;
    await this.#query(
      `UPDATE keys SET last_used_at = GREATEST(coalesce(keys.last_used_at, 0), v.at)
       FROM unnest($1::text[], $2::bigint[]) AS v(id, at) WHERE keys.id = v.id`,
      [[...times.keys()], [...times.values()]],
    );
  }

  /** Listens for key changes on a connection of its own (pg-key-feed.ts). */
  watch(changed: () => void, reachable: (up: boolean, reason?: string) => void, log?: KeyFeedLog): KeyChangeFeed {
    return new PgKeyFeed(this.#pool, KEY_CHANNEL, { changed, reachable, log });
  }

  async #query<R extends object = KeyRow>(sql: string, params: unknown[]): Promise<R[]> {
    try {
      return (await this.#pool.query<R>(sql, params)).rows;
    } catch (err) {
      throw unusable(err);
    }
  }

  /** `fn` and the NOTIFY in one transaction; a unique-name violation is `name` taken. */
  async #write<T>(fn: (c: pg.PoolClient) => Promise<T>, name?: string): Promise<T> {
    let client: pg.PoolClient;
    try {
      client = await this.#pool.connect();
    } catch (err) {
      throw unusable(err);
    }
    let broken = false;
    try {
      await client.query('BEGIN');
      const result = await fn(client);
      await client.query(NOTIFY);
      await client.query('COMMIT');
      return result;
    } catch (err) {
      await client.query('ROLLBACK').catch(() => (broken = true));
      const e = err as { code?: string; constraint?: string };
      if (e.code === UNIQUE_VIOLATION && e.constraint === 'keys_name_key' && name !== undefined) throw nameTaken(name);
      throw unusable(err);
    } finally {
      client.release(broken);
    }
  }
}

/** The key by id or name, locked until the transaction ends (a change is computed from it). */
async function lockedKey(c: pg.PoolClient, idOrName: string): Promise<StoredKey> {
  if (idOrName.includes('\u0000')) throw notFound(idOrName);
  const row = (await c.query<KeyRow>(`${BY_ID_OR_NAME} FOR UPDATE`, [idOrName])).rows[0];
  if (row === undefined) throw notFound(idOrName);
  return fromRow(row);
}

function unusable(err: unknown): unknown {
  if (err instanceof KeyStoreError) return err;
  return new KeyStoreError('db_unusable', `GATEWAY_DATABASE_URL cannot be used: ${describePgError(err)}`);
}
