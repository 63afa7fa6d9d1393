// Passes a non-streamed upstream body (JSON) through unchanged and reads its token numbers on the
// side. Bodies can be large (embeddings, base64), so it keeps only the first and last 16 KiB:
// llama-server writes `usage` near the start (embeddings, rerank) or near the end (completions).
import { Transform, type TransformCallback } from 'node:stream';
import { findUsage, type Exchange } from './usage.js';

const EDGE = 16 * 1024;
const MAX_TEXT = 1 << 20;

export class JsonTap extends Transform {
  readonly #ex: Exchange;
  #head: Buffer[] = [];
  #headBytes = 0;
  #tail: Buffer[] = [];
  #tailBytes = 0;
  #all: Buffer[] | null;
  #allBytes = 0;

  constructor(exchange: Exchange) {
    super();
    this.#ex = exchange;
    this.#all = exchange.text === null ? null : [];
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.#ex.bytesOut += chunk.length;
    if (this.#headBytes < EDGE) {
      this.#head.push(chunk);
      this.#headBytes += chunk.length;
    } else {
      this.#tail.push(chunk);
      this.#tailBytes += chunk.length;
      while (this.#tail.length > 1 && this.#tailBytes - this.#tail[0]!.length >= EDGE) this.#tailBytes -= this.#tail.shift()!.length;
    }
    if (this.#all !== null && this.#allBytes < MAX_TEXT) {
      this.#all.push(chunk);
      this.#allBytes += chunk.length;
    }
    done(null, chunk);
  }

  override _flush(done: TransformCallback): void {
    const head = Buffer.concat(this.#head).toString('utf8');
    let usage = findUsage(head);
    if (usage === undefined && this.#tail.length > 0) usage = findUsage(Buffer.concat(this.#tail).toString('utf8'));
    this.#ex.applyUsage(usage);
    if (this.#all !== null) this.#ex.text = Buffer.concat(this.#all).toString('utf8');
    this.#head = [];
    this.#tail = [];
    this.#all = null;
    done();
  }
}
