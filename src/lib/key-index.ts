// Which client keys the gateway accepts. Only SHA-256 digests are held; a presented key is hashed,
// looked up, then compared in constant time with timingSafeEqual. The index is replaced whole when
// keys change, so a lookup never sees half an update and never touches the database.
import { createHash, timingSafeEqual } from 'node:crypto';

export interface KeyLimits {
  readonly rpm: number | null;
  readonly tpm: number | null;
  readonly tpd: number | null;
  readonly concurrency: number | null;
}

export interface KeyIdentity {
  /** Stable, non-secret id used in records: env-1, env-2, … for LLM_API_KEYS; key_… for stored keys. */
  readonly id: string;
  /** Human name used in logs: env-1, … or the stored key's name. */
  readonly name: string;
  readonly fromDb: boolean;
  readonly enabled: boolean;
  /** ms since epoch, or null for never */
  readonly expiresAt: number | null;
  /** null: every model */
  readonly models: ReadonlySet<string> | null;
  /** null: every origin */
  readonly origins: ReadonlySet<string> | null;
  readonly limits: KeyLimits | null;
}

export interface IndexEntry {
  readonly digest: Buffer;
  readonly identity: KeyIdentity;
}

export function digestKey(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

export function envIdentity(position: number): KeyIdentity {
  const id = `env-${position}`;
  return { id, name: id, fromDb: false, enabled: true, expiresAt: null, models: null, origins: null, limits: null };
}

export class KeyIndex {
  #byDigest = new Map<string, IndexEntry>();

  /** Replaces the whole index at once. */
  replace(entries: Iterable<IndexEntry>): void {
    const next = new Map<string, IndexEntry>();
    for (const e of entries) next.set(e.digest.toString('base64'), e);
    this.#byDigest = next;
  }

  get size(): number {
    return this.#byDigest.size;
  }

  *identities(): IterableIterator<KeyIdentity> {
    for (const e of this.#byDigest.values()) yield e.identity;
  }

  /** The identity for a presented key, or undefined. */
  verify(presented: string): KeyIdentity | undefined {
    const digest = digestKey(presented);
    const entry = this.#byDigest.get(digest.toString('base64'));
    if (entry === undefined || !timingSafeEqual(entry.digest, digest)) return undefined;
    return entry.identity;
  }

  static envEntries(keys: readonly string[]): IndexEntry[] {
    return keys.map((key, i) => ({ digest: digestKey(key), identity: envIdentity(i + 1) }));
  }

  static fromEnvKeys(keys: readonly string[]): KeyIndex {
    const index = new KeyIndex();
    index.replace(KeyIndex.envEntries(keys));
    return index;
  }
}
