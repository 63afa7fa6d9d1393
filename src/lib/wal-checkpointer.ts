// Checkpoints the database's write-ahead log from a worker thread. With WAL, SQLite copies the log
// back into the database file every 1,000 pages ("auto-checkpoint"), inside whichever commit
// crosses that line, and syncs the file to disk: on the gateway's one thread that stalls every
// stream. Measured here (1,000-record usage batches): 2.7–3 ms per batch, but 15–16 ms for the one
// batch in ~20 that checkpoints; on an SD card or a busy disk the sync alone can take far longer.
// So the gateway's connection does not auto-checkpoint, and a worker with its own connection runs a
// PASSIVE checkpoint (never waits for, never blocks readers or writers) every `everyMs`.
// If the worker cannot run, the connection checkpoints itself again as before.
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type Database from 'better-sqlite3';

export const DEFAULT_CHECKPOINT_MS = 1000;
/** SQLite's default auto-checkpoint (pages), restored when the worker is gone. */
const AUTO_CHECKPOINT_PAGES = 1000;

export interface CheckpointResult {
  /** frames in the log */
  readonly log: number;
  /** frames copied back into the database file (all of them unless a reader holds older ones) */
  readonly checkpointed: number;
}

export interface CheckpointerLog {
  warn(obj: object, msg: string): void;
}

// The worker, as CommonJS source: the same code runs from src/ (tests) and dist/.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.path, { fileMustExist: true });
db.pragma('busy_timeout = 5000');
db.pragma('wal_autocheckpoint = 0');
const checkpoint = () => {
  const [r] = db.pragma('wal_checkpoint(PASSIVE)');
  parentPort.postMessage({ log: r.log, checkpointed: r.checkpointed });
};
const timer = setInterval(checkpoint, workerData.everyMs);
parentPort.on('message', (m) => {
  if (m !== 'stop') return;
  clearInterval(timer);
  checkpoint();
  db.close();
  parentPort.close();
});
`;

export class WalCheckpointer {
  readonly #db: Database.Database;
  readonly #worker: Worker;
  readonly #log: CheckpointerLog | undefined;
  readonly #listeners: ((r: CheckpointResult) => void)[] = [];
  #stopping = false;
  readonly #exited: Promise<void>;

  /** Takes over checkpointing for `db` (the connection to the file at `path`). */
  constructor(db: Database.Database, path: string, opts: { everyMs?: number; log?: CheckpointerLog } = {}) {
    this.#db = db;
    this.#log = opts.log;
    db.pragma('wal_autocheckpoint = 0');
    const driver = createRequire(import.meta.url).resolve('better-sqlite3');
    this.#worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { path, driver, everyMs: opts.everyMs ?? DEFAULT_CHECKPOINT_MS } });
    this.#worker.unref();
    this.#worker.on('message', (r: CheckpointResult) => {
      for (const l of this.#listeners) l(r);
    });
    this.#worker.on('error', (err) => {
      this.#log?.warn({ err: { message: err.message } }, 'WAL checkpoint worker failed; the database connection checkpoints itself again');
    });
    this.#exited = new Promise((resolve) => {
      this.#worker.once('exit', () => {
        if (!this.#stopping && this.#db.open) this.#db.pragma(`wal_autocheckpoint = ${AUTO_CHECKPOINT_PAGES}`);
        resolve();
      });
    });
  }

  /** Each checkpoint's result (tests, diagnostics). */
  onCheckpoint(listener: (r: CheckpointResult) => void): void {
    this.#listeners.push(listener);
  }

  /** A last checkpoint, then the worker ends. Call before the connection closes. */
  async stop(): Promise<void> {
    if (!this.#stopping) {
      this.#stopping = true;
      this.#worker.ref(); // unref'd while it runs; now the process waits for its last checkpoint
      this.#worker.postMessage('stop');
    }
    await this.#exited;
  }
}
