// Collects usage records in memory and writes them in batches, once a second, to the usage table
// and the audit log: nothing touches the disk on the request path, a graceful shutdown flushes
// everything, and a crash loses at most the last second. Listeners (metrics) see each record at once.
// On the SQLite file a batch is one synchronous transaction; on PostgreSQL it is handed to the
// SpoolingWriter (usage/spool.ts: inserted, or spooled to disk while PostgreSQL is down).
import type { AuditLog } from './audit-log.js';
import { auditLine } from './audit-line.js';
import type { UsageRecord } from './exchange.js';
import { costOf, hasPrices, type PriceList } from './prices.js';
import type { SpoolingWriter } from './spool.js';
import type { UsageStore } from './store.js';

const DEFAULT_FLUSH_MS = 1000;
/**
 * At most this many records are written per turn of the event loop (one transaction, ~0.7 ms),
 * and this many waiting are written on the next turn instead of at the timer. Under heavy load one
 * second's records took ~30 ms to insert in one go, and 1,000 still ~3 ms: a pause every stream
 * felt. A backlog is written slice by slice, with I/O in between.
 */
export const FLUSH_AT = 250;

/**
 * Refusals the gateway answered itself (429 over a limit, 400/403 by policy) are stored for at
 * most this many per key and minute; the rest are counted (metrics see every record) but not
 * written. A key over its limit answered 2,950 requests a second with a 429, each a row: the
 * database and audit log grew ~5 MB/s (red team, issue #12).
 */
export const REFUSALS_STORED_PER_MINUTE = 60;

export interface RecorderLog {
  error(obj: object, msg: string): void;
}

export class UsageRecorder {
  readonly logBodies: boolean;
  readonly #store: UsageStore | undefined;
  /** PostgreSQL's batches (instead of #store) */
  readonly #writer: SpoolingWriter | undefined;
  readonly #audit: AuditLog | undefined;
  readonly #listeners: ((r: UsageRecord) => void)[] = [];
  /** GATEWAY_PRICES, or null when none is set (nothing to compute per record) */
  readonly #prices: PriceList | null;
  #pending: UsageRecord[] = [];
  #timer: NodeJS.Timeout | undefined;
  #log: RecorderLog | undefined;
  #flushSoon = false;
  /** proxied requests started and not yet recorded */
  inFlight = 0;
  /** refusals counted but not stored (over REFUSALS_STORED_PER_MINUTE for their key) */
  refusalsNotStored = 0;
  /** refusals stored this minute, per key (known keys only: as many entries as keys) */
  readonly #refusals = new Map<string, { minute: number; n: number }>();

  constructor(opts: { store?: UsageStore; writer?: SpoolingWriter; audit?: AuditLog; logBodies?: boolean; prices?: PriceList }) {
    this.#store = opts.store;
    this.#writer = opts.writer;
    this.#prices = opts.prices !== undefined && hasPrices(opts.prices) ? opts.prices : null;
    this.#audit = opts.audit;
    this.logBodies = opts.logBodies === true;
  }

  onRecord(listener: (r: UsageRecord) => void): void {
    this.#listeners.push(listener);
  }

  /**
   * Tokens of the records not yet written for key `keyId` (and end user `user`) since `since`: a
   * budget that starts its count from the usage table adds them (admission/budgets.ts), so a
   * record is neither missed nor counted twice.
   */
  pendingTokens(keyId: string, since: number, user: string | null = null): number {
    let tokens = 0;
    for (const r of this.#pending)
      if (r.keyId === keyId && r.ts >= since && (user === null || r.endUser === user))
        tokens += (r.promptTokens ?? 0) + (r.completionTokens ?? 0);
    return this.#writer === undefined ? tokens : tokens + this.#writer.pendingTokens(keyId, since, user);
  }

  /** pendingTokens for every end user under key `keyId` at once (per-user budgets' seed). */
  pendingByUser(keyId: string, since: number): Map<string, number> {
    const out = new Map<string, number>();
    for (const r of this.#pending)
      if (r.keyId === keyId && r.ts >= since && r.endUser !== null)
        out.set(r.endUser, (out.get(r.endUser) ?? 0) + (r.promptTokens ?? 0) + (r.completionTokens ?? 0));
    this.#writer?.pendingByUser(keyId, since, out);
    return out;
  }

  /**
   * Runs `read` (a query of the usage table) while no batch commits, so the table plus
   * pendingTokens count each record once (PostgreSQL's budget seeds; on SQLite a write is
   * synchronous and `read` simply runs).
   */
  counted<T>(read: () => Promise<T>): Promise<T> {
    return this.#writer === undefined ? read() : this.#writer.counted(read);
  }

  record(r: UsageRecord): void {
    // Every record passes here once, with its final numbers (completed ones too): priced here.
    if (this.#prices !== null) r.cost = costOf(this.#prices, r);
    for (const l of this.#listeners) l(r);
    if (this.#store === undefined && this.#writer === undefined && this.#audit === undefined) return;
    if ((r.outcome === 'rejected_limit' || r.outcome === 'rejected_policy') && !this.#storesRefusal(r.keyId, r.ts)) return;
    if (this.#pending.push(r) >= FLUSH_AT) this.#soon();
  }

  #storesRefusal(keyId: string | null, ts: number): boolean {
    const minute = Math.floor(ts / 60_000);
    const key = keyId ?? '';
    const seen = this.#refusals.get(key);
    if (seen === undefined || seen.minute !== minute) {
      this.#refusals.set(key, { minute, n: 1 });
      return true;
    }
    if (seen.n < REFUSALS_STORED_PER_MINUTE) {
      seen.n++;
      return true;
    }
    this.refusalsNotStored++;
    return false;
  }

  /** A write on the next turn (once running; before start() and after close() nothing is scheduled). */
  #soon(): void {
    if (this.#flushSoon || this.#timer === undefined) return;
    this.#flushSoon = true;
    setImmediate(flushSoon, this);
  }

  /** FLUSH_AT records were waiting: written now rather than at the next tick of the timer. */
  flushNow(): void {
    this.#flushSoon = false;
    void this.flush();
  }

  start(log?: RecorderLog, flushMs = DEFAULT_FLUSH_MS): void {
    this.#log = log;
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => void this.flush(), flushMs);
    this.#timer.unref();
  }

  /**
   * Writes up to FLUSH_AT pending records (the rest on the following turns); resolves when their
   * audit lines are on disk too.
   */
  flush(): Promise<void> {
    const pending = this.#pending;
    if (pending.length === 0) return this.#audit?.drain() ?? Promise.resolve();
    let batch = pending;
    if (pending.length > FLUSH_AT) {
      batch = pending.slice(0, FLUSH_AT);
      this.#pending = pending.slice(FLUSH_AT);
      this.#soon();
    } else {
      this.#pending = [];
    }
    if (this.#writer !== undefined) {
      const written = this.#writer.write(batch);
      const audited = this.#audit?.write(batch.map(auditLine));
      return audited === undefined ? written : Promise.all([written, audited]).then(() => undefined);
    }
    try {
      this.#store?.insert(batch);
    } catch (err) {
      this.#log?.error(
        { err: { message: (err as Error).message, code: (err as { code?: string }).code }, records: batch.length },
        'usage records could not be written to the database',
      );
    }
    return this.#audit?.write(batch.map(auditLine)) ?? Promise.resolve();
  }

  async close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    do await this.flush();
    while (this.#pending.length > 0);
    await this.#writer?.close();
  }
}

function flushSoon(recorder: UsageRecorder): void {
  recorder.flushNow();
}
