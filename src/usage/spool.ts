// Usage records on their way to PostgreSQL (GATEWAY_DATABASE_URL), never lost while it is down.
// (Over 400 lines, kept whole: one promise chain orders every insert, spool write and replay, and
// its invariants — file order, exactly once, budget tallies — are easier checked in one place.)
//
// The recorder hands each batch here (off the request path). One chain runs every step in order:
// a batch is inserted (PgUsageStore.insertBatch, one statement); if that fails (PostgreSQL down,
// a timeout), the batch goes to a file in GATEWAY_USAGE_SPOOL (created on first use), and so does
// every batch after it while any file waits, so the table gets the batches in the order they were
// made. Files are replayed oldest first on a timer with backoff (1 s doubling to 15 s), and at
// start what a previous run left; a file is deleted only after its rows are committed.
//
// A file: `<ms>-<seq>-<batch id>.jsonl`, a header line {"batch", "records"} then one JSON array
// of the usage table's columns per record (usageColumns). Written to a .tmp name, fsync'd, renamed,
// the folder fsync'd: a file with a final name is complete. The batch id goes into usage_batches
// in the same statement as its rows (pg-usage-store.ts): a file replayed after a crash between
// the commit and the unlink writes nothing the second time.
//
// A budget seed reads the table plus what is not in it yet (UsageRecorder.counted): the batches
// being written, and per spooled file its tokens per key, end user and minute (budget periods
// start on a minute), kept in memory instead of the records.
import { randomUUID } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describePgError } from '../storage/pg.js';
import type { UsageRecord } from './exchange.js';
import { COLUMN, usageColumns, type PgUsageStore, type UsageColumns } from './pg-usage-store.js';

const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 15_000;
/** Batch ids are kept this long in usage_batches (pruned at start and daily). */
const KEEP_BATCH_IDS_MS = 7 * 86_400_000;
const PRUNE_EVERY_MS = 86_400_000;
const SUFFIX = '.jsonl';
/** A file that can never be written (unreadable, or PostgreSQL refuses its data) is renamed to this, kept for a person. */
const SET_ASIDE = '.rejected';
/**
 * At shutdown an insert PostgreSQL has not answered within this is given up: its batch is spooled
 * (the insert may still commit: the batch id makes the next run's replay write nothing). Without
 * it a hung PostgreSQL held the shutdown for its query timeout (12 s), past PM2's kill.
 */
const CLOSE_WAIT_MS = 2000;
/** A .tmp older than this is a write that never finished (a write takes milliseconds). */
const STALE_TMP_MS = 60_000;

export interface SpoolLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

/** A spooled file's tokens per key, end user (null: none) and minute: what budget seeds add. */
interface Tally {
  keyId: string;
  user: string | null;
  minute: number;
  tokens: number;
}

interface Spooled {
  file: string;
  id: string;
  records: number;
  tally: Tally[];
}

interface Batch {
  id: string;
  rows: UsageColumns[];
}

function tokensOf(row: UsageColumns): number {
  return ((row[COLUMN.promptTokens] as number | null) ?? 0) + ((row[COLUMN.completionTokens] as number | null) ?? 0);
}

function tallyOf(rows: readonly UsageColumns[]): Tally[] {
  const by = new Map<string, Tally>();
  for (const row of rows) {
    const keyId = row[COLUMN.keyId] as string | null;
    const tokens = tokensOf(row);
    if (keyId === null || tokens === 0) continue;
    const user = row[COLUMN.endUser] as string | null;
    const minute = Math.floor((row[COLUMN.ts] as number) / 60_000);
    const name = JSON.stringify([keyId, user, minute]);
    const t = by.get(name);
    if (t === undefined) by.set(name, { keyId, user, minute, tokens });
    else t.tokens += tokens;
  }
  return [...by.values()];
}

/** A spool file's text: a header line, then one JSON array per record. */
function spoolText(batch: Batch): string {
  return `${JSON.stringify({ batch: batch.id, records: batch.rows.length })}\n${batch.rows.map((r) => JSON.stringify(r)).join('\n')}\n`;
}

/**
 * PostgreSQL errors that no retry will cure (bad data 22, a constraint 23, the schema 42): the
 * batch is set aside instead of holding every later one back.
 */
function refusedForGood(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return typeof code === 'string' && /^(22|23|42)/.test(code);
}

export class SpoolingWriter {
  readonly #store: Pick<PgUsageStore, 'insertBatch' | 'pruneBatches'>;
  readonly #dir: string;
  readonly #log: SpoolLog;
  #chain: Promise<unknown> = Promise.resolve();
  /** handed over, neither committed nor spooled yet */
  readonly #writing = new Set<Batch>();
  /** oldest first */
  readonly #spooled: Spooled[] = [];
  #seq = 0;
  #retry: NodeJS.Timeout | undefined;
  #prune: NodeJS.Timeout | undefined;
  #delay = RETRY_MIN_MS;
  #closing = false;
  /** rejects CLOSE_WAIT_MS after close() is called: what an insert in flight is raced against */
  readonly #giveUp: Promise<never>;
  #giveUpSoon!: () => void;
  #giveUpTimer: NodeJS.Timeout | undefined;
  #dirMade = false;
  /** records in spool files now */
  spooledRecords = 0;
  /**
   * Records ever spooled; replayed (committed from a file); rejected (PostgreSQL refuses their data
   * for good: the file is set aside); lost (not even the disk took them).
   */
  spooledTotal = 0;
  replayedTotal = 0;
  rejectedTotal = 0;
  lostTotal = 0;

  constructor(opts: { store: Pick<PgUsageStore, 'insertBatch' | 'pruneBatches'>; dir: string; log: SpoolLog }) {
    this.#store = opts.store;
    this.#dir = opts.dir;
    this.#log = opts.log;
    this.#giveUp = new Promise<never>((_, reject) => {
      this.#giveUpSoon = () => {
        this.#giveUpTimer = setTimeout(() => reject(new Error('shutting down: PostgreSQL did not answer in time')), CLOSE_WAIT_MS);
      };
    });
    this.#giveUp.catch(() => {});
  }

  /** insertBatch, given up CLOSE_WAIT_MS into shutdown. */
  #insert(rows: readonly UsageColumns[], id: string): Promise<boolean> {
    return Promise.race([this.#store.insertBatch(rows, id), this.#giveUp]);
  }

  /** Files waiting now. */
  get spooledBatches(): number {
    return this.#spooled.length;
  }

  /** Reads what a previous run left in the folder (replayed at once, in order) and starts pruning old batch ids. */
  async start(): Promise<void> {
    let names: string[] = [];
    try {
      names = await readdir(this.#dir);
      this.#dirMade = true;
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') throw new Error(`GATEWAY_USAGE_SPOOL (${this.#dir}) cannot be read: ${code ?? (err as Error).message}`);
    }
    for (const name of names.sort()) {
      // A .tmp is a batch whose spooling did not finish (the process ended first): not complete, not
      // used. Removed only when old: a young one may be another process's write in progress (PM2
      // cluster mode: every process has the same folder), which its rename completes.
      if (name.endsWith('.tmp')) await this.#dropStale(name);
      if (!name.endsWith(SUFFIX)) continue;
      try {
        const { id, rows } = await this.#read(name);
        this.#spooled.push({ file: name, id, records: rows.length, tally: tallyOf(rows) });
        this.spooledRecords += rows.length;
      } catch (err) {
        await this.#setAside(name, err);
      }
    }
    if (this.#spooled.length > 0) {
      this.#log.warn(
        { batches: this.#spooled.length, records: this.spooledRecords },
        'usage records spooled by a previous run: writing them to PostgreSQL',
      );
      this.#replaySoon(0);
    }
    const prune = (): void => {
      void this.#store.pruneBatches(Date.now() - KEEP_BATCH_IDS_MS).catch(() => {});
    };
    prune();
    this.#prune = setInterval(prune, PRUNE_EVERY_MS);
    this.#prune.unref();
  }

  /** Writes a batch: inserted, or spooled when PostgreSQL does not take it. Resolves when it is one or the other. */
  write(records: readonly UsageRecord[]): Promise<void> {
    const batch: Batch = { id: randomUUID(), rows: records.map(usageColumns) };
    this.#writing.add(batch);
    return this.#run(async () => {
      try {
        if (this.#spooled.length === 0) {
          try {
            await this.#insert(batch.rows, batch.id);
            return;
          } catch (err) {
            this.#log.error(
              { err: { message: describePgError(err), code: (err as { code?: string }).code }, records: batch.rows.length },
              'PostgreSQL did not take usage records: spooling them to disk (GATEWAY_USAGE_SPOOL) until it answers',
            );
          }
        }
        await this.#spool(batch);
        this.#replaySoon(this.#delay);
      } finally {
        this.#writing.delete(batch);
      }
    }).catch((err: unknown) => {
      // Not expected (the insert's and the spool's failures are handled above); said, never thrown at the recorder's timer.
      this.#log.error({ err: { message: (err as Error).message }, records: batch.rows.length }, 'usage batch could not be handled');
    });
  }

  /** Runs `read` while no batch is written or replayed: the table and pendingTokens then hold each record once. */
  counted<T>(read: () => Promise<T>): Promise<T> {
    return this.#run(read);
  }

  /** Tokens of records not in the table yet (being written or spooled) for a key (and end user) since `since`. */
  pendingTokens(keyId: string, since: number, user: string | null): number {
    let tokens = 0;
    for (const b of this.#writing)
      for (const row of b.rows)
        if (row[COLUMN.keyId] === keyId && (row[COLUMN.ts] as number) >= since && (user === null || row[COLUMN.endUser] === user))
          tokens += tokensOf(row);
    for (const s of this.#spooled)
      for (const t of s.tally)
        if (t.keyId === keyId && t.minute * 60_000 >= since && (user === null || t.user === user)) tokens += t.tokens;
    return tokens;
  }

  /** pendingTokens for every end user under a key, added into `out`. */
  pendingByUser(keyId: string, since: number, out: Map<string, number>): void {
    const add = (user: string | null, n: number): void => {
      if (user !== null && n > 0) out.set(user, (out.get(user) ?? 0) + n);
    };
    for (const b of this.#writing)
      for (const row of b.rows)
        if (row[COLUMN.keyId] === keyId && (row[COLUMN.ts] as number) >= since) add(row[COLUMN.endUser] as string | null, tokensOf(row));
    for (const s of this.#spooled) for (const t of s.tally) if (t.keyId === keyId && t.minute * 60_000 >= since) add(t.user, t.tokens);
  }

  /** Waits for every batch handed over (inserted or spooled); what is spooled stays for the next run. */
  async close(): Promise<void> {
    if (!this.#closing) this.#giveUpSoon();
    this.#closing = true;
    if (this.#retry !== undefined) clearTimeout(this.#retry);
    if (this.#prune !== undefined) clearInterval(this.#prune);
    this.#retry = undefined;
    await this.#chain;
    clearTimeout(this.#giveUpTimer);
    if (this.#spooled.length > 0)
      this.#log.warn(
        { batches: this.#spooled.length, records: this.spooledRecords, folder: this.#dir },
        'usage records left spooled: written to PostgreSQL when a gateway starts with this folder again',
      );
  }

  #run<T>(step: () => Promise<T>): Promise<T> {
    const next = this.#chain.then(step);
    this.#chain = next.catch(() => {});
    return next;
  }

  async #spool(batch: Batch): Promise<void> {
    const file = `${String(Date.now()).padStart(15, '0')}-${String(this.#seq++).padStart(6, '0')}-${batch.id}${SUFFIX}`;
    const text = spoolText(batch);
    try {
      if (!this.#dirMade) {
        await mkdir(this.#dir, { recursive: true });
        this.#dirMade = true;
      }
      const tmp = join(this.#dir, `${file}.tmp`);
      const fh = await open(tmp, 'wx');
      try {
        await fh.writeFile(text);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, join(this.#dir, file));
      await this.#syncDir();
    } catch (err) {
      this.lostTotal += batch.rows.length;
      this.#log.error(
        {
          err: { message: (err as Error).message, code: (err as NodeJS.ErrnoException).code },
          records: batch.rows.length,
          folder: this.#dir,
        },
        'usage records LOST: PostgreSQL did not take them and the spool folder could not be written',
      );
      return;
    }
    if (this.#spooled.length === 0) this.#log.warn({ folder: this.#dir }, 'usage spool started: records wait on disk for PostgreSQL');
    this.#spooled.push({ file, id: batch.id, records: batch.rows.length, tally: tallyOf(batch.rows) });
    this.spooledRecords += batch.rows.length;
    this.spooledTotal += batch.rows.length;
  }

  async #syncDir(): Promise<void> {
    const dir = await open(this.#dir, 'r');
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  async #read(name: string): Promise<{ id: string; rows: UsageColumns[] }> {
    const lines = (await readFile(join(this.#dir, name), 'utf8')).split('\n');
    const head = JSON.parse(lines[0] ?? '') as { batch?: unknown; records?: unknown };
    const rows = lines.slice(1, -1).map((l) => JSON.parse(l) as UsageColumns);
    if (typeof head.batch !== 'string' || head.records !== rows.length || lines.at(-1) !== '')
      throw new Error(`incomplete spool file (${rows.length} of ${String(head.records)} records)`);
    return { id: head.batch, rows };
  }

  /**
   * Writes `rows` one per statement (batch id `<id>.<n>`); resolves with the rows PostgreSQL
   * refuses for good, or null when it stopped answering (the file is tried again later).
   */
  async #oneByOne(rows: readonly UsageColumns[], id: string): Promise<UsageColumns[] | null> {
    const refused: UsageColumns[] = [];
    for (let i = 0; i < rows.length; i++) {
      try {
        await this.#insert([rows[i]!], `${id}.${i}`);
      } catch (err) {
        if (!refusedForGood(err)) return null;
        refused.push(rows[i]!);
      }
    }
    return refused;
  }

  /** A file kept for a person (`only`: just these records of it are left unwritten). */
  async #setAside(name: string, err: unknown, only?: Batch): Promise<void> {
    this.#log.error(
      {
        err: { message: describePgError(err), code: (err as { code?: string }).code },
        file: name,
        folder: this.#dir,
        ...(only === undefined ? {} : { records: only.rows.length }),
      },
      `usage spool file cannot be written to PostgreSQL: kept aside as ${name}${SET_ASIDE}`,
    );
    const from = join(this.#dir, name);
    const to = join(this.#dir, `${name}${SET_ASIDE}`);
    if (only === undefined) {
      await rename(from, to).catch(() => {});
      return;
    }
    await writeFile(to, spoolText(only)).catch(() => {});
    await unlink(from).catch(() => {});
  }

  #replaySoon(ms: number): void {
    if (this.#retry !== undefined || this.#closing || this.#spooled.length === 0) return;
    this.#retry = setTimeout(() => {
      this.#retry = undefined;
      void this.#run(() => this.#replayOne());
    }, ms);
    this.#retry.unref();
  }

  async #dropStale(name: string): Promise<void> {
    const path = join(this.#dir, name);
    const mtime = await stat(path).then(
      (st) => st.mtimeMs,
      () => null,
    );
    if (mtime !== null && Date.now() - mtime > STALE_TMP_MS) await unlink(path).catch(() => {});
  }

  /** Writes the oldest spooled file (one per turn of the chain: new batches and seeds go between). */
  async #replayOne(): Promise<void> {
    const head = this.#spooled[0];
    if (head === undefined || this.#closing) return;
    let rows: UsageColumns[];
    try {
      rows = (await this.#read(head.file)).rows;
    } catch (err) {
      // Gone: another process on this folder wrote it (its batch id keeps it written once).
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') await this.#setAside(head.file, err);
      this.#forget(head);
      return this.#next();
    }
    try {
      if (!(await this.#insert(rows, head.id)))
        this.#log.warn({ file: head.file }, 'spooled usage batch was already in PostgreSQL: not written twice');
      else this.replayedTotal += rows.length;
    } catch (err) {
      if (refusedForGood(err)) {
        // One record PostgreSQL refuses must not cost the others of its batch: each goes alone
        // (ids derived from the batch's: a replay after a crash writes none twice), and only the
        // refused ones are kept aside.
        const refused = rows.length === 1 ? rows : await this.#oneByOne(rows, head.id);
        if (refused === null) {
          this.#delay = Math.min(RETRY_MAX_MS, this.#delay * 2);
          this.#replaySoon(this.#delay);
          return;
        }
        this.rejectedTotal += refused.length;
        this.replayedTotal += rows.length - refused.length;
        if (refused.length > 0)
          await this.#setAside(head.file, err, refused.length < rows.length ? { id: head.id, rows: refused } : undefined);
        else await unlink(join(this.#dir, head.file)).catch(() => {});
        this.#forget(head);
        return this.#next();
      }
      this.#delay = Math.min(RETRY_MAX_MS, this.#delay * 2);
      this.#replaySoon(this.#delay);
      return;
    }
    await unlink(join(this.#dir, head.file)).catch(() => {});
    this.#forget(head);
    this.#delay = RETRY_MIN_MS;
    return this.#next();
  }

  #forget(s: Spooled): void {
    this.#spooled.shift();
    this.spooledRecords -= s.records;
  }

  #next(): void {
    if (this.#spooled.length > 0) {
      if (!this.#closing) void this.#run(() => this.#replayOne());
      return;
    }
    this.#log.info({ replayed: this.replayedTotal }, 'usage spool drained: every spooled record is in PostgreSQL');
  }
}
