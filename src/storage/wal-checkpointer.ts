// Checkpoints the database's write-ahead log from a worker thread. With WAL, SQLite copies the log
// back into the database file every 1,000 pages ("auto-checkpoint"), inside whichever commit
// crosses that line, and syncs the file to disk: on the gateway's one thread that stalls every
// stream. Measured here (1,000-record usage batches): 2.7–3 ms per batch, but 15–16 ms for the one
// batch in ~20 that checkpoints; on an SD card or a busy disk the sync alone can take far longer.
// So the gateway's connection does not auto-checkpoint, and a worker with its own connection runs a
// PASSIVE checkpoint (never waits for, never blocks readers or writers) every `everyMs`.
// A worker that cannot start or dies (out of file descriptors, the file not there yet) is started
// again with backoff (1 s, doubling to 60 s), each failure logged with its attempt and the next
// delay; meanwhile the connection checkpoints itself again, and hands over once a worker runs.
import { createRequire } from 'node:module';
import { Worker, type WorkerOptions } from 'node:worker_threads';
import type Database from 'better-sqlite3';
import { autoCheckpoint } from './db.js';

const DEFAULT_CHECKPOINT_MS = 1000;
const DEFAULT_RETRY_MS = 1000;
const DEFAULT_MAX_RETRY_MS = 60_000;

export interface CheckpointResult {
  /** frames in the log */
  readonly log: number;
  /** frames copied back into the database file (all of them unless a reader holds older ones) */
  readonly checkpointed: number;
}

export interface CheckpointerLog {
  warn(obj: object, msg: string): void;
  info?(obj: object, msg: string): void;
}

export interface CheckpointerOptions {
  /** how often the worker checkpoints (ms) */
  everyMs?: number;
  /** first delay before starting a failed worker again (ms); doubles up to maxRetryMs */
  retryMs?: number;
  maxRetryMs?: number;
  log?: CheckpointerLog;
  /** Starts the worker thread (tests inject failures here). */
  startWorker?: (source: string, options: WorkerOptions) => Worker;
}

// The worker, as CommonJS source: the same code runs from src/ (tests) and dist/. It says 'ready'
// once its connection is open, so a run that got that far resets the backoff.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.path, { fileMustExist: true });
db.pragma('busy_timeout = 5000');
db.pragma('wal_autocheckpoint = 0');
parentPort.postMessage('ready');
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

const startWorkerThread = (source: string, options: WorkerOptions): Worker => new Worker(source, options);

export class WalCheckpointer {
  readonly #db: Database.Database;
  readonly #log: CheckpointerLog | undefined;
  readonly #listeners: ((r: CheckpointResult) => void)[] = [];
  readonly #workerData: { path: string; driver: string; everyMs: number };
  readonly #startWorker: (source: string, options: WorkerOptions) => Worker;
  readonly #retryMs: number;
  readonly #maxRetryMs: number;
  /** the running worker, if any */
  #worker: Worker | null = null;
  /** resolves when the current worker has exited */
  #exited: Promise<void> = Promise.resolve();
  /** failed starts in a row (0 once a worker said it is ready) */
  #failures = 0;
  #retry: NodeJS.Timeout | undefined;
  #stopping = false;

  /** Takes over checkpointing for `db` (the connection to the file at `path`). */
  constructor(db: Database.Database, path: string, opts: CheckpointerOptions = {}) {
    this.#db = db;
    this.#log = opts.log;
    this.#startWorker = opts.startWorker ?? startWorkerThread;
    this.#retryMs = opts.retryMs ?? DEFAULT_RETRY_MS;
    this.#maxRetryMs = Math.max(this.#retryMs, opts.maxRetryMs ?? DEFAULT_MAX_RETRY_MS);
    const driver = createRequire(import.meta.url).resolve('better-sqlite3');
    this.#workerData = { path, driver, everyMs: opts.everyMs ?? DEFAULT_CHECKPOINT_MS };
    this.#start();
  }

  #start(): void {
    this.#retry = undefined;
    if (this.#stopping) return;
    // Hand over at once (the worker checkpoints from its first tick); a worker that fails hands back.
    autoCheckpoint(this.#db, false);
    let worker: Worker;
    try {
      worker = this.#startWorker(WORKER_SOURCE, { eval: true, workerData: this.#workerData });
    } catch (err) {
      this.#failed(err as Error);
      return;
    }
    this.#worker = worker;
    worker.unref();
    let error: Error | undefined;
    worker.on('message', (m: CheckpointResult | 'ready') => {
      if (m === 'ready') {
        if (this.#failures > 0)
          this.#log?.info?.({ failedStarts: this.#failures }, `WAL checkpoint worker running again after ${this.#failures} failed starts`);
        this.#failures = 0;
        return;
      }
      for (const l of this.#listeners) l(m);
    });
    worker.on('error', (err) => (error = err));
    this.#exited = new Promise((resolve) => {
      worker.once('exit', (code) => {
        this.#worker = null;
        if (!this.#stopping) this.#failed(error ?? new Error(`the worker exited with code ${code}`));
        resolve();
      });
    });
  }

  /** The worker did not start or died: the connection checkpoints itself until the next try. */
  #failed(err: Error): void {
    if (this.#db.open) autoCheckpoint(this.#db, true);
    else return; // the connection closed under us: nothing left to checkpoint
    this.#failures++;
    const delay = Math.min(this.#maxRetryMs, this.#retryMs * 2 ** Math.min(this.#failures - 1, 30));
    this.#log?.warn(
      { err: { message: err.message }, attempt: this.#failures, retryInMs: delay },
      'WAL checkpoint worker failed; the database connection checkpoints itself until a new worker runs',
    );
    this.#retry = setTimeout(() => this.#start(), delay);
    this.#retry.unref();
  }

  /** Each checkpoint's result (tests, diagnostics). */
  onCheckpoint(listener: (r: CheckpointResult) => void): void {
    this.#listeners.push(listener);
  }

  /** A last checkpoint, then the worker ends (a pending retry is cancelled). Call before the connection closes. */
  async stop(): Promise<void> {
    if (!this.#stopping) {
      this.#stopping = true;
      clearTimeout(this.#retry);
      this.#retry = undefined;
      const worker = this.#worker;
      if (worker !== null) {
        worker.ref(); // unref'd while it runs; now the process waits for its last checkpoint
        worker.postMessage('stop');
      }
    }
    await this.#exited;
  }
}
