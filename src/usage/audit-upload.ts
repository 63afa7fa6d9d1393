// The audit log's finished days, shipped to S3-compatible object storage (Cloudflare R2, AWS S3,
// MinIO, …): each audit-YYYY-MM-DD.jsonl whose UTC day has turned is gzip-compressed and PUT as
// <prefix>audit-YYYY-MM-DD.jsonl.gz, with Content-MD5 and x-amz-checksum-sha256 (the storage
// refuses bytes that do not match them), then HEAD-checked (same size, same MD5 ETag, same source
// checksum). Only then is the local file deleted; anything else keeps it for the next try, so a
// storage that is down for a day loses nothing. The gateway runs this at start and every few
// minutes (retrying failures with backoff), `llm-gateway audit upload` on demand. Never on the
// request path: compression runs on libuv's thread pool, the requests are async.
//
// aws4fetch signs (SigV4) over the runtime's fetch: one small file, no dependencies, where the AWS
// SDK would bring ~100 packages for two calls. A file is compressed into memory (a busy day's
// gzip is tens of MB) and sent in one PUT, which S3 allows up to 5 GB; R2 refuses streamed
// (aws-chunked) uploads anyway.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { link, readdir, stat, unlink } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { createGzip } from 'node:zlib';
import { AwsClient } from 'aws4fetch';
import type { Config } from '../config.js';

/** Where and how to upload; built from the GATEWAY_AUDIT_S3_* settings. */
export interface S3Target {
  /** e.g. https://<account>.r2.cloudflarestorage.com (path-style), or https://<bucket>.s3.eu-west-1.amazonaws.com */
  readonly endpoint: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly region: string;
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
}

/** The upload target, or null when GATEWAY_AUDIT_S3_* are not set (config.ts checks all or none). */
export function s3TargetOf(config: Config): S3Target | null {
  if (config.auditLog === '' || config.auditS3Endpoint === '') return null;
  return {
    endpoint: config.auditS3Endpoint,
    bucket: config.auditS3Bucket,
    prefix: config.auditS3Prefix,
    region: config.auditS3Region,
    accessKeyId: config.auditS3AccessKeyId,
    secretAccessKey: config.auditS3SecretAccessKey,
  };
}

/** Path-style (endpoint/bucket/key) unless the endpoint's host already names the bucket (virtual-hosted). */
export function objectUrl(target: S3Target, key = ''): string {
  const host = new URL(target.endpoint).hostname;
  const base = host.startsWith(`${target.bucket}.`) ? target.endpoint : `${target.endpoint}/${target.bucket}`;
  return key === '' ? base : `${base}/${key}`;
}

/** A writer's last batch of a day may land just after midnight: a day counts as finished this long after. */
const FINISHED_GRACE_MS = 60_000;
const DEFAULT_CHECK_MS = 5 * 60_000;
const DEFAULT_RETRY_MS = 30_000;
const MAX_RETRY_MS = 30 * 60_000;
const DEFAULT_TIMEOUT_MS = 120_000;
/** After `--today` renames the day's file away, a write already holding it open finishes first. */
const RENAME_SETTLE_MS = 1000;

/** One audit file waiting on disk. */
export interface AuditFile {
  readonly name: string;
  readonly path: string;
  /** its UTC day, YYYY-MM-DD */
  readonly day: string;
}

export interface UploadResult {
  readonly file: string;
  readonly key: string;
  readonly ok: boolean;
  /** bytes on disk / bytes sent (gzip) */
  readonly bytes?: number;
  readonly gzipBytes?: number;
  /** why it failed: the storage's status and error code, or the network error; never a credential */
  readonly error?: string;
}

export interface UploaderOptions {
  /** GATEWAY_AUDIT_LOG, as the writer names its files (usage/audit-log.ts) */
  readonly auditLog: string;
  readonly target: S3Target;
  readonly log?: { info(o: object, msg: string): void; error(o: object, msg: string): void };
  /** how often finished days are looked for */
  readonly checkMs?: number;
  /** the first retry after a failure; doubled each time, up to 30 minutes */
  readonly retryMs?: number;
  /** per request to the storage */
  readonly timeoutMs?: number;
  /** resolves when the writer's pending lines are on disk (the gateway's AuditLog.drain) */
  readonly drain?: () => Promise<void>;
  readonly now?: () => number;
}

class StorageError extends Error {}

/** "403 SignatureDoesNotMatch": the storage's status and S3 error code (its XML body says nothing secret, but only the code is kept). */
async function storageError(what: string, res: Response): Promise<StorageError> {
  const text = await res.text().catch(() => '');
  const code = /<Code>([^<]{1,64})<\/Code>/.exec(text)?.[1];
  return new StorageError(`${what} → ${res.status}${code === undefined ? '' : ` ${code}`}`);
}

function unquote(etag: string | null): string {
  return (etag ?? '').replace(/^W\//, '').replace(/"/g, '');
}

interface Packed {
  readonly body: Buffer;
  readonly size: number;
  readonly mtimeMs: number;
  readonly lines: number;
  readonly md5: Buffer;
  readonly sha256: Buffer;
  readonly sourceSha256: string;
}

/** The file gzip-compressed in memory, with its checksums (hashed as the chunks pass). */
async function pack(path: string): Promise<Packed> {
  const before = await stat(path);
  const source = createHash('sha256');
  const md5 = createHash('md5');
  const sha256 = createHash('sha256');
  const chunks: Buffer[] = [];
  let lines = 0;
  const input = createReadStream(path);
  input.on('data', (chunk) => {
    const buf = chunk as Buffer;
    source.update(buf);
    for (let i = buf.indexOf(10); i !== -1; i = buf.indexOf(10, i + 1)) lines++;
  });
  const gzip = input.pipe(createGzip({ level: 9 }));
  input.on('error', (err) => gzip.destroy(err));
  for await (const chunk of gzip) {
    md5.update(chunk as Buffer);
    sha256.update(chunk as Buffer);
    chunks.push(chunk as Buffer);
  }
  return {
    body: Buffer.concat(chunks),
    size: before.size,
    mtimeMs: before.mtimeMs,
    lines,
    md5: md5.digest(),
    sha256: sha256.digest(),
    sourceSha256: source.digest('hex'),
  };
}

export class AuditUploader {
  readonly #dir: string;
  readonly #stem: string;
  readonly #ext: string;
  readonly #pattern: RegExp;
  readonly #client: AwsClient;
  readonly #opts: UploaderOptions;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | null = null;
  #running: Promise<UploadResult[]> | null = null;
  #abort = new AbortController();
  #closed = false;
  /** failed runs in a row (the backoff's exponent) */
  #failures = 0;

  /** Files confirmed uploaded / failed tries, since start (for /metrics). */
  readonly totals = { uploaded: 0, failed: 0 };
  /** Finished days still on disk after the last run. */
  pending = 0;
  /** The last failure's reason, null once an upload succeeds. */
  lastError: string | null = null;

  constructor(opts: UploaderOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
    this.#dir = dirname(opts.auditLog);
    this.#ext = extname(opts.auditLog) || '.jsonl';
    this.#stem = basename(opts.auditLog, extname(opts.auditLog));
    const esc = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    // audit-2026-11-26.jsonl, and the pieces `audit upload --today` cut: audit-2026-11-26T153012Z.jsonl
    this.#pattern = new RegExp(`^${esc(this.#stem)}-(\\d{4}-\\d{2}-\\d{2})(T\\d{6}Z)?${esc(this.#ext)}$`);
    // Retries are this module's (across runs, with backoff), not aws4fetch's (ten quick ones).
    this.#client = new AwsClient({
      accessKeyId: opts.target.accessKeyId,
      secretAccessKey: opts.target.secretAccessKey,
      service: 's3',
      region: opts.target.region,
      retries: 0,
    });
  }

  /** The object key a file is stored under. */
  keyFor(name: string): string {
    return `${this.#opts.target.prefix}${name}.gz`;
  }

  /** Files of finished days (and the pieces `--today` cut), oldest first. */
  async waiting(): Promise<AuditFile[]> {
    const current = new Date(this.#now() - FINISHED_GRACE_MS).toISOString().slice(0, 10);
    const names = await readdir(this.#dir).catch(() => [] as string[]);
    const out: AuditFile[] = [];
    for (const name of names.sort()) {
      const m = this.#pattern.exec(name);
      if (m === null) continue;
      const day = m[1]!;
      if (m[2] === undefined && day >= current) continue;
      out.push({ name, path: join(this.#dir, name), day });
    }
    return out;
  }

  /**
   * Uploads every waiting file, oldest first; stops at the first failure (the storage is most likely
   * down for all of them). With `today`, the current day's file is first renamed to a piece
   * (audit-YYYY-MM-DDTHHMMSSZ.jsonl) so the writer starts a new one and nothing is uploaded twice
   * or lost. One run at a time: a second call joins the first.
   */
  run(today = false): Promise<UploadResult[]> {
    if (this.#running !== null) return this.#running;
    const running = this.#run(today).finally(() => {
      this.#running = null;
    });
    this.#running = running;
    return running;
  }

  async #run(today: boolean): Promise<UploadResult[]> {
    if (today) await this.#cutToday();
    if (this.#opts.drain !== undefined) await this.#opts.drain();
    const files = await this.waiting();
    const results: UploadResult[] = [];
    let left = files.length;
    for (const file of files) {
      if (this.#closed) break;
      const result = await this.upload(file);
      results.push(result);
      if (!result.ok) break;
      left--;
    }
    this.pending = left;
    return results;
  }

  async #cutToday(): Promise<void> {
    const now = new Date(this.#now()).toISOString();
    const from = join(this.#dir, `${this.#stem}-${now.slice(0, 10)}${this.#ext}`);
    const to = join(this.#dir, `${this.#stem}-${now.slice(0, 10)}T${now.slice(11, 19).replace(/:/g, '')}Z${this.#ext}`);
    // link + unlink, not rename: rename would silently replace a piece cut in the same second.
    try {
      await link(from, to);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code === 'EEXIST') throw new Error(`${basename(to)} exists already: try again in a second`);
      throw err;
    }
    await unlink(from);
    await new Promise((r) => setTimeout(r, RENAME_SETTLE_MS));
  }

  /** One file: compress, PUT, confirm, delete. Never throws: the result says what happened. */
  async upload(file: AuditFile): Promise<UploadResult> {
    const key = this.keyFor(file.name);
    try {
      const packed = await pack(file.path);
      await this.#put(key, packed);
      await this.#confirm(key, packed);
      // Deleted only if it is still the file that was sent (nothing was appended since).
      const now = await stat(file.path);
      if (now.size !== packed.size || now.mtimeMs !== packed.mtimeMs)
        throw new StorageError('the file changed while it was uploaded; it is kept and sent again');
      await unlink(file.path);
      this.totals.uploaded++;
      this.lastError = null;
      const result = { file: file.name, key, ok: true, bytes: packed.size, gzipBytes: packed.body.length };
      this.#opts.log?.info(
        { file: file.name, key, bytes: packed.size, gzipBytes: packed.body.length, lines: packed.lines },
        'audit file uploaded; local copy deleted',
      );
      return result;
    } catch (err) {
      // Gone meanwhile: another process (the CLI, or the gateway) uploaded and deleted it.
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { file: file.name, key, ok: true };
      if (this.#closed) return { file: file.name, key, ok: false, error: 'stopped: shutting down' };
      const error =
        err instanceof StorageError || (err as Error).name === 'TimeoutError'
          ? (err as Error).message
          : `${(err as Error).message}${causeOf(err)}`;
      this.totals.failed++;
      this.lastError = `${file.name}: ${error}`;
      this.#opts.log?.error({ file: file.name, key, err: { message: error } }, 'audit upload failed; the local file is kept and retried');
      return { file: file.name, key, ok: false, error };
    }
  }

  async #put(key: string, p: Packed): Promise<void> {
    const res = await this.#client.fetch(objectUrl(this.#opts.target, key), {
      method: 'PUT',
      body: p.body,
      headers: {
        'content-type': 'application/gzip',
        'content-md5': p.md5.toString('base64'),
        'x-amz-checksum-sha256': p.sha256.toString('base64'),
        // the signature covers the body's hash, computed once here
        'x-amz-content-sha256': p.sha256.toString('hex'),
        'x-amz-meta-source-sha256': p.sourceSha256,
        'x-amz-meta-source-bytes': String(p.size),
        'x-amz-meta-lines': String(p.lines),
      },
      signal: this.#signal(),
    });
    if (res.status !== 200) throw await storageError('PUT', res);
    await res.arrayBuffer().catch(() => undefined);
    const etag = unquote(res.headers.get('etag'));
    // A single PUT's ETag is the MD5 of the bytes on S3, R2 and MinIO (not with SSE-KMS: then the HEAD decides).
    if (/^[0-9a-f]{32}$/.test(etag) && etag !== p.md5.toString('hex'))
      throw new StorageError(`PUT → ETag ${etag} is not the MD5 of what was sent`);
  }

  async #confirm(key: string, p: Packed): Promise<void> {
    const res = await this.#client.fetch(objectUrl(this.#opts.target, key), { method: 'HEAD', signal: this.#signal() });
    if (res.status !== 200) throw await storageError('HEAD', res);
    const size = Number(res.headers.get('content-length'));
    if (size !== p.body.length) throw new StorageError(`HEAD → ${size} bytes stored, ${p.body.length} sent`);
    const etag = unquote(res.headers.get('etag'));
    if (/^[0-9a-f]{32}$/.test(etag) && etag !== p.md5.toString('hex'))
      throw new StorageError(`HEAD → ETag ${etag} is not the MD5 of what was sent`);
    const source = res.headers.get('x-amz-meta-source-sha256');
    if (source !== null && source !== p.sourceSha256)
      throw new StorageError('HEAD → the stored object is another file (source-sha256 differs)');
  }

  /** HEAD on the bucket: can the storage be reached with these credentials? (doctor) */
  async probe(): Promise<{ ok: boolean; text: string }> {
    try {
      const res = await this.#client.fetch(objectUrl(this.#opts.target), { method: 'HEAD', signal: this.#signal() });
      await res.arrayBuffer().catch(() => undefined);
      if (res.status === 200) return { ok: true, text: 'HEAD bucket → 200' };
      if (res.status === 403)
        return { ok: false, text: 'HEAD bucket → 403: the credentials are refused (key id, secret, or their permissions)' };
      if (res.status === 404) return { ok: false, text: 'HEAD bucket → 404: no such bucket' };
      return { ok: false, text: `HEAD bucket → ${res.status}` };
    } catch (err) {
      return { ok: false, text: `not reachable (${(err as Error).message}${causeOf(err)})` };
    }
  }

  #signal(): AbortSignal {
    return AbortSignal.any([this.#abort.signal, AbortSignal.timeout(this.#opts.timeoutMs ?? DEFAULT_TIMEOUT_MS)]);
  }

  /** Runs now, then every checkMs; after a failed run sooner, with backoff (retryMs doubled, ≤ 30 min, ± 20%). */
  start(): void {
    const tick = (): void => {
      this.#timer = null;
      void this.run().then((results) => {
        if (this.#closed) return;
        const failed = results.some((r) => !r.ok);
        this.#failures = failed ? this.#failures + 1 : 0;
        const retry = Math.min((this.#opts.retryMs ?? DEFAULT_RETRY_MS) * 2 ** (this.#failures - 1), MAX_RETRY_MS);
        const delay = failed ? retry * (0.8 + Math.random() * 0.4) : (this.#opts.checkMs ?? DEFAULT_CHECK_MS);
        this.#timer = setTimeout(tick, delay).unref();
      });
    };
    this.#timer = setTimeout(tick, 0).unref();
  }

  /** Stops the timer; an upload under way is cut off (its file stays for the next start). */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#abort.abort();
    await this.#running?.catch(() => undefined);
  }

  /** The run under way, if any (tests wait for it). */
  get current(): Promise<UploadResult[]> | null {
    return this.#running;
  }
}

/** fetch's "fetch failed" says little: its cause (ECONNREFUSED …) says why. */
function causeOf(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  if (cause === undefined) return '';
  return ` (${cause.code ?? cause.message ?? 'unknown'})`;
}
