// The append-only audit log: JSON Lines, one record per request, in one file per day (UTC):
// GATEWAY_AUDIT_LOG=./data/audit.jsonl writes ./data/audit-2026-11-26.jsonl, … Files older than
// GATEWAY_AUDIT_KEEP_DAYS are deleted when the day turns (and at start) — unless they go to object
// storage (usage/audit-upload.ts), which deletes each once it is stored. Writes are batched and
// asynchronous; nothing here runs on the request path.
import { appendFile, mkdir, readdir, unlink } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';

const DAY_MS = 86_400_000;

export class AuditLog {
  readonly #dir: string;
  readonly #stem: string;
  readonly #ext: string;
  readonly #keepDays: number;
  #day = '';
  #chain: Promise<void> = Promise.resolve();

  constructor(
    path: string,
    keepDays: number,
    private readonly onError: (err: Error) => void = () => {},
  ) {
    this.#dir = dirname(path);
    this.#ext = extname(path) || '.jsonl';
    this.#stem = basename(path, extname(path));
    this.#keepDays = keepDays;
  }

  /** The file a record written at `now` goes to. */
  fileFor(now: number): string {
    return join(this.#dir, `${this.#stem}-${new Date(now).toISOString().slice(0, 10)}${this.#ext}`);
  }

  /** Appends the lines (each one JSON record); resolves when they are on disk. Order is kept. */
  write(lines: readonly string[], now = Date.now()): Promise<void> {
    if (lines.length === 0) return this.#chain;
    const text = `${lines.join('\n')}\n`;
    this.#chain = this.#chain.then(async () => {
      try {
        const day = new Date(now).toISOString().slice(0, 10);
        if (day !== this.#day) {
          await mkdir(this.#dir, { recursive: true });
          this.#day = day;
          await this.prune(now);
        }
        await appendFile(this.fileFor(now), text, { mode: 0o600 });
      } catch (err) {
        this.onError(err as Error);
      }
    });
    return this.#chain;
  }

  /** Deletes this log's files older than the kept days (keepDays 0: never; the S3 upload deletes them once stored). */
  async prune(now = Date.now()): Promise<string[]> {
    if (this.#keepDays === 0) return [];
    const cutoff = new Date(now - this.#keepDays * DAY_MS).toISOString().slice(0, 10);
    const pattern = new RegExp(
      `^${this.#stem.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}-(\\d{4}-\\d{2}-\\d{2})${this.#ext.replace('.', '\\.')}$`,
    );
    const removed: string[] = [];
    for (const name of await readdir(this.#dir).catch(() => [] as string[])) {
      const m = pattern.exec(name);
      if (m && m[1]! < cutoff) {
        await unlink(join(this.#dir, name)).catch(() => {});
        removed.push(name);
      }
    }
    return removed;
  }

  /** Resolves when every write so far is on disk. */
  drain(): Promise<void> {
    return this.#chain;
  }
}
