// Looks at a non-streamed upstream body (JSON) on its way through the relay, unchanged, and reads
// its token numbers. Bodies can be large (embeddings, base64), so it keeps only the first and last 16 KiB:
// llama-server writes `usage` near the start (embeddings, rerank) or near the end (completions).
import type { Tap } from './relay.js';
import { findUsage, type Exchange } from './usage.js';

const EDGE = 16 * 1024;
const USAGE = Buffer.from('"usage"');
const MAX_TEXT = 1 << 20;

export class JsonTap implements Tap {
  readonly #ex: Exchange;
  #head: Buffer[] = [];
  #headBytes = 0;
  #tail: Buffer[] = [];
  #tailBytes = 0;
  #all: Buffer[] | null;
  #allBytes = 0;

  constructor(exchange: Exchange) {
    this.#ex = exchange;
    this.#all = exchange.text === null ? null : [];
  }

  chunk(chunk: Buffer): Buffer {
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
    return chunk;
  }

  end(): null {
    let usage = usageIn(this.#head);
    if (usage === undefined && this.#tail.length > 0) usage = usageIn(this.#tail);
    this.#ex.applyUsage(usage);
    if (this.#all !== null) this.#ex.text = Buffer.concat(this.#all).toString('utf8');
    this.#head = [];
    this.#tail = [];
    this.#all = null;
    return null;
  }
}

/** The usage object in these bytes, decoding only from its key on (most bodies have one, near the end). */
function usageIn(parts: Buffer[]): unknown {
  const bytes = parts.length === 1 ? parts[0]! : Buffer.concat(parts);
  const at = bytes.indexOf(USAGE);
  return at < 0 ? undefined : findUsage(bytes.toString('utf8', at));
}
