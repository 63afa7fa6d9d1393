// A key record as a row of the `keys` table, the same for both stores (the SQLite file,
// key-store.ts, and PostgreSQL, pg-key-store.ts: storage/pg.ts gives its columns the types SQLite
// gives, so one mapper reads both): the row a create inserts, the columns an update or a rotation
// sets, with every check of key-record.ts, key-policy.ts and key-budgets.ts in one place. The stores
// only run the SQL.
import { mergeBudgets, validBudgets } from './key-budgets.js';
import { digestKey } from './key-index.js';
import { mergePolicy, validPolicy } from './key-policy.js';
import {
  DISPLAY_PREFIX_LENGTH,
  KeyStoreError,
  LIMIT_NAMES,
  generateKey,
  newId,
  validLimit,
  validList,
  validName,
  type KeyChanges,
  type KeyInput,
  type StoredKey,
} from './key-record.js';
import type { KeyBudgets } from './key-budgets.js';
import type { KeyPolicy } from './key-policy.js';

export interface KeyRow {
  id: string;
  name: string;
  note: string;
  digest: Buffer;
  prefix: string;
  enabled: number;
  created_at: number;
  expires_at: number | null;
  last_used_at: number | null;
  models: string | null;
  origins: string | null;
  rpm: number | null;
  tpm: number | null;
  tpd: number | null;
  concurrency: number | null;
  policy: string | null;
  budgets: string | null;
}

/** The columns a create writes, in order (last_used_at starts empty). */
type NewKeyRow = Omit<KeyRow, 'last_used_at'>;

export function fromRow(r: KeyRow): StoredKey {
  return {
    id: r.id,
    name: r.name,
    note: r.note,
    prefix: r.prefix,
    enabled: r.enabled === 1,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    lastUsedAt: r.last_used_at,
    models: r.models === null ? null : (JSON.parse(r.models) as string[]),
    origins: r.origins === null ? null : (JSON.parse(r.origins) as string[]),
    limits: { rpm: r.rpm, tpm: r.tpm, tpd: r.tpd, concurrency: r.concurrency },
    policy: r.policy === null ? null : (JSON.parse(r.policy) as KeyPolicy),
    budgets: r.budgets === null ? null : (JSON.parse(r.budgets) as KeyBudgets),
    digest: r.digest,
  };
}

function jsonOrNull(doc: object | null): string | null {
  return doc === null ? null : JSON.stringify(doc);
}

function checkExpiry(expiresAt: number | null | undefined, now: number): void {
  if (expiresAt !== undefined && expiresAt !== null && expiresAt <= now) {
    throw new KeyStoreError('invalid_key_field', 'expires is in the past', 'expires');
  }
}

/** A new key and the row that stores it (its digest, never the key); throws KeyStoreError for a field it refuses. */
export function newKeyRow(input: KeyInput, now: number): { key: string; row: NewKeyRow } {
  const key = generateKey();
  const id = newId();
  const name = validName(input.name);
  checkExpiry(input.expiresAt, now);
  const limits = input.limits ?? {};
  return {
    key,
    row: {
      id,
      name,
      note: input.note ?? '',
      digest: digestKey(key),
      prefix: key.slice(0, DISPLAY_PREFIX_LENGTH),
      enabled: input.enabled === false ? 0 : 1,
      created_at: now,
      expires_at: input.expiresAt ?? null,
      models: validList('models', input.models) ?? null,
      origins: validList('origins', input.origins) ?? null,
      rpm: validLimit('rpm', limits.rpm) ?? null,
      tpm: validLimit('tpm', limits.tpm) ?? null,
      tpd: validLimit('tpd', limits.tpd) ?? null,
      concurrency: validLimit('concurrency', limits.concurrency) ?? null,
      policy: jsonOrNull(validPolicy(input.policy)),
      budgets: jsonOrNull(validBudgets(input.budgets)),
    },
  };
}

/** The columns `changes` sets on `current` (policy and budgets merged into its own); empty: nothing to write. */
export function changedColumns(current: StoredKey, changes: KeyChanges, now: number): Map<string, unknown> {
  const set = new Map<string, unknown>();
  if (changes.name !== undefined) set.set('name', validName(changes.name));
  if (changes.note !== undefined) set.set('note', changes.note);
  if (changes.enabled !== undefined) set.set('enabled', changes.enabled ? 1 : 0);
  if (changes.expiresAt !== undefined) {
    checkExpiry(changes.expiresAt, now);
    set.set('expires_at', changes.expiresAt);
  }
  if (changes.models !== undefined) set.set('models', validList('models', changes.models));
  if (changes.origins !== undefined) set.set('origins', validList('origins', changes.origins));
  for (const limit of LIMIT_NAMES) {
    const v = changes.limits?.[limit];
    if (v !== undefined) set.set(limit, validLimit(limit, v));
  }
  if (changes.policy !== undefined) set.set('policy', jsonOrNull(mergePolicy(current.policy, changes.policy)));
  if (changes.budgets !== undefined) set.set('budgets', jsonOrNull(mergeBudgets(current.budgets, changes.budgets)));
  return set;
}

/** A new secret for a record: the key (shown once) and the digest and prefix that replace the old ones. */
export function rotatedSecret(): { key: string; digest: Buffer; prefix: string } {
  const key = generateKey();
  return { key, digest: digestKey(key), prefix: key.slice(0, DISPLAY_PREFIX_LENGTH) };
}

/** What both stores say when a name is already used by another key. */
export function nameTaken(name: string): KeyStoreError {
  return new KeyStoreError('key_name_taken', `a key named "${name}" already exists`, 'name');
}

/** What both stores say for an id or name that matches no key. */
export function notFound(idOrName: string): KeyStoreError {
  return new KeyStoreError('key_not_found', `no key named or with id "${idOrName}"`);
}
