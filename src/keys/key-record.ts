// What a stored key is (KeyRecord) and which values its fields accept: the checks shared by the key
// store's create and update, the `llm-gateway keys` CLI and the admin API. The store itself (the
// SQL) is key-store.ts.
import { randomBytes } from 'node:crypto';
import type { KeyLimits } from '../admission/limits.js';
import type { KeyBudgets } from './key-budgets.js';
import type { KeyPolicy } from './key-policy.js';

export const LIMIT_NAMES = ['rpm', 'tpm', 'tpd', 'concurrency'] as const;

export interface KeyRecord {
  readonly id: string;
  readonly name: string;
  readonly note: string;
  /** The first characters of the key, for recognising it (not enough to use it). */
  readonly prefix: string;
  readonly enabled: boolean;
  readonly createdAt: number;
  readonly expiresAt: number | null;
  readonly lastUsedAt: number | null;
  /** null: every model */
  readonly models: readonly string[] | null;
  /** null: every origin */
  readonly origins: readonly string[] | null;
  readonly limits: KeyLimits;
  /** what a request may ask for (null: the gateway-wide defaults): key-policy.ts */
  readonly policy: KeyPolicy | null;
  /** token budgets over calendar periods (null: none): key-budgets.ts */
  readonly budgets: KeyBudgets | null;
}

/** A record with its digest, for the in-memory auth index. */
export interface StoredKey extends KeyRecord {
  readonly digest: Buffer;
}

export interface KeyInput {
  name: string;
  note?: string;
  enabled?: boolean;
  expiresAt?: number | null;
  models?: readonly string[] | null;
  origins?: readonly string[] | null;
  limits?: Partial<KeyLimits>;
  /** create: the policy; update: merged field by field (a null field removes it; null clears all) */
  policy?: KeyPolicy | null;
  /** create: the budgets; update: merged field by field (a null field removes it; null clears all) */
  budgets?: KeyBudgets | null;
}

export type KeyChanges = Partial<KeyInput>;

/**
 * What the store says when an operation cannot be done, by code. It carries no HTTP status: the
 * admin API maps each code to an entry of the error table (src/errors.ts), the CLI to an exit code.
 */
export class KeyStoreError extends Error {
  constructor(
    readonly code: 'key_not_found' | 'key_name_taken' | 'invalid_key_field' | 'db_unusable',
    message: string,
    /** the field at fault, for invalid_key_field and key_name_taken */
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'KeyStoreError';
  }
}

const KEY_PREFIX = 'sk-';
const KEY_RANDOM_BYTES = 24; // 192 bits
export const DISPLAY_PREFIX_LENGTH = 10; // "sk-" + 7 characters: 42 of 192 bits
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
const ID_PATTERN = /^key_[0-9a-f]{12}$/;

export function generateKey(): string {
  return KEY_PREFIX + randomBytes(KEY_RANDOM_BYTES).toString('base64url');
}

export function newId(): string {
  return `key_${randomBytes(6).toString('hex')}`;
}

/** The record without its digest (what the CLI and admin API show). */
export function publicRecord(k: StoredKey | KeyRecord): KeyRecord {
  const { digest: _digest, ...rest } = k as StoredKey;
  return rest;
}

/** The record as JSON for the admin API and `keys … --json` (times as ISO strings). */
export function keyJson(k: KeyRecord): Record<string, unknown> {
  const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());
  return {
    id: k.id,
    name: k.name,
    note: k.note,
    prefix: k.prefix,
    enabled: k.enabled,
    created_at: iso(k.createdAt),
    expires_at: iso(k.expiresAt),
    last_used_at: iso(k.lastUsedAt),
    models: k.models,
    origins: k.origins,
    limits: k.limits,
    policy: k.policy,
    budgets: k.budgets,
  };
}

export function validName(name: string): string {
  if (!NAME_PATTERN.test(name)) {
    throw new KeyStoreError(
      'invalid_key_field',
      `name "${name}" is not valid: use 1-64 letters, digits, '.', '_', '-' or '@', starting with a letter or digit`,
      'name',
    );
  }
  if (name.startsWith('env-'))
    throw new KeyStoreError('invalid_key_field', 'names starting with "env-" are reserved for LLM_API_KEYS', 'name');
  // Keys are found by id or name; a name shaped like an id could shadow another key.
  if (ID_PATTERN.test(name))
    throw new KeyStoreError('invalid_key_field', `name "${name}" looks like a key id; choose another name`, 'name');
  return name;
}

export function validList(field: 'models' | 'origins', list: readonly string[] | null | undefined): string | null | undefined {
  if (list === undefined) return undefined;
  if (list === null) return null;
  const items = [...new Set(list.map((s) => s.trim()).filter((s) => s !== ''))];
  if (items.length === 0) throw new KeyStoreError('invalid_key_field', `${field} must name at least one entry (or be "all")`, field);
  if (field === 'origins') {
    for (const o of items) {
      let ok = false;
      try {
        ok = new URL(o).origin === o;
      } catch {
        ok = false;
      }
      if (!ok)
        throw new KeyStoreError(
          'invalid_key_field',
          `origin "${o}" is not an exact origin like https://chat.example.com (no path, no trailing slash)`,
          'origins',
        );
    }
  }
  return JSON.stringify(items);
}

/**
 * A stored JSON document (a key's policy or budgets) with a change applied field by field: a field
 * set to null (or undefined) is removed, `nested` (params, per_user) is merged entry by entry the
 * same way and dropped when it ends up empty. The caller validates the result.
 */
export function mergeFields(current: object | null, changes: object, nested: string): Record<string, unknown> {
  const next: Record<string, unknown> = { ...current };
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === undefined) delete next[k];
    else if (k === nested && typeof v === 'object' && !Array.isArray(v)) {
      const inner: Record<string, unknown> = { ...(next[k] as object | undefined) };
      for (const [name, x] of Object.entries(v as object)) {
        if (x === null || x === undefined) delete inner[name];
        else inner[name] = x;
      }
      if (Object.keys(inner).length === 0) delete next[k];
      else next[k] = inner;
    } else next[k] = v;
  }
  return next;
}

export function validLimit(name: string, v: number | null | undefined): number | null | undefined {
  if (v === undefined || v === null) return v;
  if (!Number.isSafeInteger(v) || v < 1)
    throw new KeyStoreError('invalid_key_field', `${name} must be a whole number ≥ 1 (or none)`, `limits.${name}`);
  return v;
}
