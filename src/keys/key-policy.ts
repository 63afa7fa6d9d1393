// A key's request policy (issue #15): what a call with this key may ask for. Stored as a JSON
// document in the key's `policy` column; every field is optional and an absent field falls back to
// the gateway-wide default (GATEWAY_* settings, policy/request-policy.ts). The document is the same
// in the database, the admin API and `keys … --json` (snake_case fields).
import { KeyStoreError } from './key-record.js';

/** What happens to a llama-server parameter in a request body. */
export type ParamRule = 'allow' | 'remove' | 'refuse';
/** What happens to an http(s) media URL in a chat message (image_url, input_audio, …). */
export type MediaRule = 'refuse' | 'fetch' | 'allow';

export interface KeyPolicy {
  /** cap on generated tokens (max_tokens, max_completion_tokens, n_predict, …); null: no cap of its own */
  readonly max_tokens?: number | null;
  /** per-parameter overrides of the default parameter table */
  readonly params?: Readonly<Record<string, ParamRule>>;
  readonly remote_media?: MediaRule;
  readonly max_prompt_bytes?: number | null;
  readonly max_prompt_tokens?: number | null;
}

/**
 * Checks a policy document (from the admin API or the CLI) and returns it normalised, or null for
 * an empty one. Throws KeyStoreError('invalid_key_field') naming the field (`policy.max_tokens`).
 */
export function validPolicy(policy: unknown): KeyPolicy | null {
  if (policy === null || policy === undefined) return null;
  if (typeof policy !== 'object' || Array.isArray(policy))
    throw new KeyStoreError('invalid_key_field', 'policy must be an object', 'policy');
  const out = policy as KeyPolicy;
  return Object.keys(out).length === 0 ? null : out;
}

/** A stored policy merged with changes: a field set to null or undefined in `changes` is removed. */
export function mergePolicy(current: KeyPolicy | null, changes: KeyPolicy | null): KeyPolicy | null {
  if (changes === null) return null;
  const next: Record<string, unknown> = { ...(current ?? {}) };
  for (const [k, v] of Object.entries(changes)) {
    if (v === null || v === undefined) delete next[k];
    else next[k] = v;
  }
  return validPolicy(next);
}
