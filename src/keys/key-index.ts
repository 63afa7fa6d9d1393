// Which client keys the gateway accepts. Only SHA-256 digests are held; a presented key is hashed,
// looked up, then compared in constant time with timingSafeEqual. The index is replaced whole when
// keys change, so a lookup never sees half an update and never touches the database.
import { createHash, hash, timingSafeEqual } from 'node:crypto';
import type { KeyLimits } from '../admission/limits.js';
import type { KeyBudgets } from './key-budgets.js';
import type { KeyPolicy } from './key-policy.js';

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
  /** the key's own request policy (null: the gateway-wide defaults) */
  readonly policy: KeyPolicy | null;
  /** the key's token budgets over calendar periods (null: none) */
  readonly budgets: KeyBudgets | null;
}

export interface IndexEntry {
  readonly digest: Buffer;
  readonly identity: KeyIdentity;
}

/**
 * Keys are presented in HTTP headers, which Node reads byte by byte (latin1), while keys are hashed
 * as UTF-8: a key with a character outside printable ASCII is accepted when configured but a
 * client can never present it so that it matches. Every place a key comes from refuses those.
 */
export function isPrintableAscii(key: string): boolean {
  return PRINTABLE_ASCII.test(key);
}
const PRINTABLE_ASCII = /^[\x21-\x7e]*$/;

/** Said when a key is refused for its characters (never with the key itself). */
export const KEY_CHARACTERS_REASON =
  'keys must be printable ASCII (letters, digits and symbols such as - _ . ~): HTTP headers carry a key as bytes while the gateway compares keys as UTF-8 text, so a key with other characters could never match';

export function digestKey(key: string): Buffer {
  return createHash('sha256').update(key, 'utf8').digest();
}

export function envIdentity(position: number): KeyIdentity {
  const id = `env-${position}`;
  return {
    id,
    name: id,
    fromDb: false,
    enabled: true,
    expiresAt: null,
    models: null,
    origins: null,
    limits: null,
    policy: null,
    budgets: null,
  };
}

interface Slot {
  readonly entry: IndexEntry;
  /** The base64 digest's bytes, compared with timingSafeEqual after the lookup. */
  readonly text: Buffer;
}

export class KeyIndex {
  #byDigest = new Map<string, Slot>();

  /** Replaces the whole index at once. */
  replace(entries: Iterable<IndexEntry>): void {
    const next = new Map<string, Slot>();
    for (const entry of entries) {
      const b64 = entry.digest.toString('base64');
      next.set(b64, { entry, text: Buffer.from(b64, 'latin1') });
    }
    this.#byDigest = next;
  }

  get size(): number {
    return this.#byDigest.size;
  }

  *identities(): IterableIterator<KeyIdentity> {
    for (const slot of this.#byDigest.values()) yield slot.entry.identity;
  }

  /** The identity for a presented key, or undefined. */
  verify(presented: string): KeyIdentity | undefined {
    // One-shot crypto.hash straight to base64 is ~4× cheaper than createHash().digest().toString().
    const b64 = hash('sha256', presented, 'base64');
    const slot = this.#byDigest.get(b64);
    if (slot === undefined || !timingSafeEqual(slot.text, Buffer.from(b64, 'latin1'))) return undefined;
    return slot.entry.identity;
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
