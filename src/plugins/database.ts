// The key database's connection, as the app holds it: opened and tuned by storage/db.ts (server.ts
// opens it before the app, to count the keys, and closes it after), handed in here and decorated
// as `app.db` for the stores. What keeps it healthy runs here: the write-ahead log is copied back
// into the file by a worker thread (storage/wal-checkpointer.ts), not inside a usage or key write
// on this thread (a disk sync there would stall every stream). Registered before every plugin
// that writes, so its onClose runs after theirs: the last checkpoint follows the last write.
import type Database from 'better-sqlite3';
import type pg from 'pg';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { KeyStore } from '../keys/key-store.js';
import { WalCheckpointer } from '../storage/wal-checkpointer.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** The key database's connection (null: keys from LLM_API_KEYS only, no database). */
    db: Database.Database | null;
    /** The PostgreSQL pool for keys and usage (GATEWAY_DATABASE_URL; null: the SQLite file). Ended by its opener (server.ts). */
    pg: pg.Pool | null;
    /** Checkpoints the database's WAL off the main thread (absent without a database file). */
    checkpointer?: WalCheckpointer;
  }
}

export default fp(
  async function databasePlugin(
    app: FastifyInstance,
    opts: { store: KeyStore | undefined; checkpointMs?: number; pg?: pg.Pool | undefined },
  ) {
    const store = opts.store;
    app.decorate('pg', opts.pg ?? null);
    app.decorate('db', store?.db ?? null);
    if (store === undefined || store.path === ':memory:') return;
    const checkpointer = new WalCheckpointer(store.db, store.path, {
      log: app.log,
      ...(opts.checkpointMs === undefined ? {} : { everyMs: opts.checkpointMs }),
    });
    app.decorate('checkpointer', checkpointer);
    app.addHook('onClose', () => checkpointer.stop());
  },
  { name: 'database', fastify: '5.x' },
);
