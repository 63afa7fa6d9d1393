// The gateway's one database file (GATEWAY_DB): SQLite through better-sqlite3, WAL mode, created
// with its folder on first use, upgraded in place by numbered migrations. Keys and usage records
// share it (and one connection inside a gateway process).
//
// Every connection is opened and tuned here, and nowhere else; the stores (keys/key-store.ts,
// usage/store.ts) are handed a connection and set nothing on it. Whoever opens a connection closes
// it: the gateway process (server.ts, after the app has closed), or the CLI command that opened it.
//   every connection    journal_mode=WAL (kept in the file), busy_timeout, foreign_keys
//   'gateway'           + synchronous=NORMAL (below); its auto-checkpoint is handed to the WAL
//                       checkpointer's worker while one runs (autoCheckpoint, wal-checkpointer.ts)
//   'command'           SQLite's defaults otherwise: a CLI command that reads a report or writes a
//                       key changes nothing the gateway's connection runs with
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';

/** The file cannot be used; the message names GATEWAY_DB and says why, in one sentence. */
export class DatabaseUnusable extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DatabaseUnusable';
  }
}

// Each entry upgrades the schema by one version (PRAGMA user_version). Never edit a shipped entry;
// add a new one. Exported so tests can build a file of an older version.
export const MIGRATIONS: readonly string[] = [
  // 1: keys with name, note, enabled
  `CREATE TABLE keys (
     id          TEXT PRIMARY KEY,
     name        TEXT NOT NULL UNIQUE,
     note        TEXT NOT NULL DEFAULT '',
     digest      BLOB NOT NULL UNIQUE,
     prefix      TEXT NOT NULL,
     enabled     INTEGER NOT NULL DEFAULT 1,
     created_at  INTEGER NOT NULL
   )`,
  // 2: expiry, last use, per-key policy and limits
  `ALTER TABLE keys ADD COLUMN expires_at INTEGER;
   ALTER TABLE keys ADD COLUMN last_used_at INTEGER;
   ALTER TABLE keys ADD COLUMN models TEXT;
   ALTER TABLE keys ADD COLUMN origins TEXT;
   ALTER TABLE keys ADD COLUMN rpm INTEGER;
   ALTER TABLE keys ADD COLUMN tpm INTEGER;
   ALTER TABLE keys ADD COLUMN tpd INTEGER;
   ALTER TABLE keys ADD COLUMN concurrency INTEGER`,
  // 3: one row per request (usage accounting)
  `CREATE TABLE usage (
     id                INTEGER PRIMARY KEY,
     ts                INTEGER NOT NULL,
     request_id        TEXT NOT NULL,
     key_id            TEXT,
     key_name          TEXT,
     route             TEXT NOT NULL,
     model             TEXT,
     status            INTEGER NOT NULL,
     streamed          INTEGER NOT NULL,
     prompt_tokens     INTEGER,
     cached_tokens     INTEGER,
     completion_tokens INTEGER,
     estimated         INTEGER NOT NULL DEFAULT 0,
     ttft_ms           REAL,
     duration_ms       REAL NOT NULL,
     bytes_in          INTEGER NOT NULL,
     bytes_out         INTEGER NOT NULL,
     client_ip         TEXT,
     user_agent        TEXT,
     outcome           TEXT NOT NULL
   );
   CREATE INDEX usage_ts ON usage (ts);
   CREATE INDEX usage_key_ts ON usage (key_id, ts)`,
  // 4: per-key request policy and budgets (JSON documents), the end user and cost of each request
  `ALTER TABLE keys ADD COLUMN policy TEXT;
   ALTER TABLE keys ADD COLUMN budgets TEXT;
   ALTER TABLE usage ADD COLUMN end_user TEXT;
   ALTER TABLE usage ADD COLUMN cost REAL`,
  // 5: usage batches written (PostgreSQL's spool replay writes each batch once: usage/spool.ts;
  // unused on SQLite, kept so both schemas stay one for one)
  `CREATE TABLE usage_batches (
     id  TEXT PRIMARY KEY,
     at  INTEGER NOT NULL
   );
   CREATE INDEX usage_batches_at ON usage_batches (at)`,
];

/** Who holds the connection: the gateway's long-lived one, or a command that does one thing and exits. */
export type DatabaseUse = 'gateway' | 'command';

/** SQLite's default auto-checkpoint (pages). */
const AUTO_CHECKPOINT_PAGES = 1000;

/**
 * Opens (creating it and its folder on first use), migrates and tunes the database for `use`.
 * Throws DatabaseUnusable.
 */
export function openDatabase(path: string, use: DatabaseUse = 'command'): Database.Database {
  let db: Database.Database | undefined;
  try {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    db = new Database(path);
    db.pragma('journal_mode = WAL');
    db.pragma('busy_timeout = 5000');
    db.pragma('foreign_keys = ON');
    // The usage batches and last-used times are written on the gateway's one thread: with WAL,
    // synchronous=NORMAL commits without an fsync (only checkpoints sync), so a flush does not stall
    // every request for a disk flush once a second. The file stays consistent; a power cut can lose
    // the last second or so of records, which a crash could anyway.
    if (use === 'gateway') db.pragma('synchronous = NORMAL');
    migrate(db);
    probeWritable(db);
    return db;
  } catch (err) {
    db?.close();
    if (err instanceof DatabaseUnusable) throw err;
    throw new DatabaseUnusable(`GATEWAY_DB ${path} cannot be used: ${describeSqliteError(err)}`);
  }
}

/**
 * Whether this connection copies the write-ahead log back into the file inside its own commits
 * (SQLite's default) or leaves that to the checkpointer's worker thread (wal-checkpointer.ts).
 */
export function autoCheckpoint(db: Database.Database, on: boolean): void {
  db.pragma(`wal_autocheckpoint = ${on ? AUTO_CHECKPOINT_PAGES : 0}`);
}

function migrate(db: Database.Database): void {
  // IMMEDIATE: take the write lock before reading the version, so two processes opening a new
  // file at once (gateway and CLI) cannot both run the same migration.
  db.transaction(() => {
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > MIGRATIONS.length) {
      throw new DatabaseUnusable(
        `GATEWAY_DB has schema version ${version}, newer than this gateway knows (${MIGRATIONS.length}); update the gateway`,
      );
    }
    for (let v = version; v < MIGRATIONS.length; v++) {
      db.exec(MIGRATIONS[v]!);
      db.pragma(`user_version = ${v + 1}`);
    }
  }).immediate();
}

/**
 * SQLite quietly opens a file it cannot write read-only; find out now, not at the first write.
 * The probe write is rolled back, so other connections see no change (no data_version bump).
 */
function probeWritable(db: Database.Database): void {
  db.exec('BEGIN IMMEDIATE');
  try {
    db.pragma(`user_version = ${MIGRATIONS.length}`);
  } finally {
    db.exec('ROLLBACK');
  }
}

function describeSqliteError(err: unknown): string {
  const code = (err as { code?: string }).code ?? '';
  if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT') return 'the file is not a SQLite database or is damaged';
  if (code.startsWith('SQLITE_READONLY') || code === 'SQLITE_PERM' || code === 'EACCES' || code === 'EROFS')
    return 'the file or its folder is read-only; the gateway needs to write to it';
  if (code === 'SQLITE_CANTOPEN') return 'the file cannot be opened (check the path and folder permissions)';
  return (err as Error).message;
}
