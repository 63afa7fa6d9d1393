// Which client keys the gateway accepts. Only SHA-256 digests are held; a presented key is hashed,
// looked up, then compared in constant time with timingSafeEqual.
import { createHash, timingSafeEqual } from 'node:crypto';

export interface KeyIdentity {
  /** Stable, non-secret name used in logs and records: env-1, env-2, … for LLM_API_KEYS. */
  readonly id: string;
}

interface Entry {
  readonly digest: Buffer;
  readonly identity: KeyIdentity;
}

export function digestKey(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

export class KeyIndex {
  #byDigest = new Map<string, Entry>();

  /** Replaces the whole index (the key store refreshes it this way when keys change). */
  replace(entries: Iterable<{ digest: Buffer; identity: KeyIdentity }>): void {
    const next = new Map<string, Entry>();
    for (const e of entries) next.set(e.digest.toString('base64'), { digest: e.digest, identity: e.identity });
    this.#byDigest = next;
  }

  get size(): number {
    return this.#byDigest.size;
  }

  /** The identity for a presented key, or undefined. */
  verify(presented: string): KeyIdentity | undefined {
    const digest = digestKey(presented);
    const entry = this.#byDigest.get(digest.toString('base64'));
    if (entry === undefined || !timingSafeEqual(entry.digest, digest)) return undefined;
    return entry.identity;
  }

  static fromEnvKeys(keys: readonly string[]): KeyIndex {
    const index = new KeyIndex();
    index.replace(keys.map((key, i) => ({ digest: digestKey(key), identity: { id: `env-${i + 1}` } })));
    return index;
  }
}
