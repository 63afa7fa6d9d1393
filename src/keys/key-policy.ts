// A key's request policy (issue #15): what a call with this key may ask for. Stored as a JSON
// document in the key's `policy` column; every field is optional and an absent field falls back to
// the gateway-wide default (GATEWAY_* settings, policy/request-policy.ts). The document is the same
// in the database, the admin API and `keys … --json` (snake_case fields).
//
// In a change (admin PATCH, `keys set`), null removes a field — the key then follows the default
// again — and `params` merges entry by entry (an entry set to null is removed), so `--param
// lora=allow` does not forget an earlier `--param id_slot=allow`.
import { KeyStoreError, mergeFields } from './key-record.js';

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

const COUNT_FIELDS = ['max_tokens', 'max_prompt_bytes', 'max_prompt_tokens'] as const;
const FIELDS: ReadonlySet<string> = new Set([...COUNT_FIELDS, 'params', 'remote_media']);
const MEDIA_RULES: ReadonlySet<string> = new Set(['refuse', 'fetch', 'allow']);
const PARAM_RULES: ReadonlySet<string> = new Set(['allow', 'remove', 'refuse']);
/** llama-server's field names (letters, digits, _ . -); policy/params.ts says the same. */
export const PARAM_NAME = /^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/;
/** More overrides than any parameter list llama-server reads. */
const MAX_PARAMS = 200;

function invalid(message: string, param: string): KeyStoreError {
  return new KeyStoreError('invalid_key_field', message, param);
}

const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

/** `params` checked; null entries kept (a change removes them), or dropped (`keepNull` false). */
function validParams(params: unknown, keepNull: boolean): Record<string, ParamRule | null> | null {
  if (params === null || params === undefined) return null;
  if (!isObject(params)) throw invalid('policy.params must be an object of NAME: "allow" | "remove" | "refuse"', 'policy.params');
  const names = Object.keys(params);
  if (names.length > MAX_PARAMS) throw invalid(`policy.params may name at most ${MAX_PARAMS} parameters`, 'policy.params');
  const out: Record<string, ParamRule | null> = {};
  for (const name of names) {
    if (!PARAM_NAME.test(name))
      throw invalid(`policy.params: "${name.slice(0, 64)}" is not a parameter name (letters, digits, _ . -)`, 'policy.params');
    const rule = params[name];
    if (rule === null) {
      if (keepNull) out[name] = null;
      continue;
    }
    if (typeof rule !== 'string' || !PARAM_RULES.has(rule))
      throw invalid(`policy.params.${name} must be "allow", "remove" or "refuse"`, `policy.params.${name}`);
    out[name] = rule as ParamRule;
  }
  return Object.keys(out).length === 0 ? null : out;
}

/** Checks every field; null fields are kept when `keepNull` (a change), else dropped. */
function check(policy: unknown, keepNull: boolean): Record<string, unknown> | null {
  if (policy === null || policy === undefined) return null;
  if (!isObject(policy)) throw new KeyStoreError('invalid_key_field', 'policy must be an object', 'policy');
  const out: Record<string, unknown> = {};
  for (const field of Object.keys(policy)) {
    if (!FIELDS.has(field))
      throw invalid(`policy.${field.slice(0, 64)} is not a policy field (${[...FIELDS].join(', ')})`, `policy.${field.slice(0, 64)}`);
    const v = policy[field];
    if (v === null || v === undefined) {
      if (keepNull && v === null) out[field] = null;
      continue;
    }
    if (field === 'params') {
      const params = validParams(v, keepNull);
      if (params !== null) out.params = params;
    } else if (field === 'remote_media') {
      if (typeof v !== 'string' || !MEDIA_RULES.has(v))
        throw invalid('policy.remote_media must be "refuse", "fetch" or "allow" (or null for the default)', 'policy.remote_media');
      out.remote_media = v;
    } else {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1)
        throw invalid(`policy.${field} must be a whole number ≥ 1 (or null for the default)`, `policy.${field}`);
      out[field] = v;
    }
  }
  return out;
}

/**
 * Checks a policy document (from the admin API or the CLI) and returns it normalised, or null for
 * an empty one. Throws KeyStoreError('invalid_key_field') naming the field (`policy.max_tokens`).
 */
export function validPolicy(policy: unknown): KeyPolicy | null {
  const out = check(policy, false);
  return out === null || Object.keys(out).length === 0 ? null : out;
}

/** A stored policy merged with changes: a field set to null or undefined in `changes` is removed. */
export function mergePolicy(current: KeyPolicy | null, changes: KeyPolicy | null): KeyPolicy | null {
  if (changes === null) return null;
  return validPolicy(mergeFields(current, check(changes, true) ?? {}, 'params'));
}

/** A policy's one-line summary (`keys show`, the console): only what it sets. */
export function describePolicy(policy: KeyPolicy | null): string {
  if (policy === null) return 'defaults';
  const parts: string[] = [];
  if (policy.max_tokens != null) parts.push(`max_tokens=${policy.max_tokens}`);
  if (policy.max_prompt_bytes != null) parts.push(`max_prompt_bytes=${policy.max_prompt_bytes}`);
  if (policy.max_prompt_tokens != null) parts.push(`max_prompt_tokens=${policy.max_prompt_tokens}`);
  if (policy.remote_media !== undefined) parts.push(`remote_media=${policy.remote_media}`);
  if (policy.params !== undefined)
    parts.push(
      `params: ${Object.entries(policy.params)
        .map(([n, r]) => `${n}=${r}`)
        .join(',')}`,
    );
  return parts.length === 0 ? 'defaults' : `${parts.join(' ')} (the rest: defaults)`;
}

/** The CLI's policy options, as given (strings). */
export interface PolicyFlags {
  'max-tokens'?: string;
  param?: string[];
  'remote-media'?: string;
  'max-prompt-bytes'?: string;
  'max-prompt-tokens'?: string;
}

const SIZE = /^\s*(\d+)\s*(b|kb|mb|gb)?\s*$/i;
const UNITS: Record<string, number> = { '': 1, b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

/** `N|none` (a size with kb/mb/gb for bytes); none → null (the default applies again). */
function countFlag(text: string, option: string, sizes: boolean): number | null {
  if (text.trim().toLowerCase() === 'none') return null;
  const m = SIZE.exec(text);
  const n = m !== null && (sizes || m[2] === undefined) ? Number(m[1]) * UNITS[(m[2] ?? '').toLowerCase()]! : NaN;
  if (!Number.isSafeInteger(n) || n < 1)
    throw new Error(`--${option} must be a whole number ≥ 1${sizes ? ' (or a size such as 64kb)' : ''}, or "none", got "${text}"`);
  return n;
}

/**
 * The policy change the CLI's options ask for (`keys create/set`), or undefined when none is
 * given. `--param` takes NAME=allow|remove|refuse|default, several times or as a comma list
 * (default: the key follows the gateway's table again). Throws Error naming the option.
 */
export function policyFromFlags(flags: PolicyFlags): KeyPolicy | undefined {
  const out: Record<string, unknown> = {};
  if (flags['max-tokens'] !== undefined) out.max_tokens = countFlag(flags['max-tokens'], 'max-tokens', false);
  if (flags['max-prompt-bytes'] !== undefined) out.max_prompt_bytes = countFlag(flags['max-prompt-bytes'], 'max-prompt-bytes', true);
  if (flags['max-prompt-tokens'] !== undefined) out.max_prompt_tokens = countFlag(flags['max-prompt-tokens'], 'max-prompt-tokens', false);
  if (flags['remote-media'] !== undefined) {
    const v = flags['remote-media'].trim().toLowerCase();
    if (v !== 'default' && !MEDIA_RULES.has(v))
      throw new Error(`--remote-media must be refuse, fetch, allow or default, got "${flags['remote-media']}"`);
    out.remote_media = v === 'default' ? null : v;
  }
  if (flags.param !== undefined) {
    const params: Record<string, string | null> = {};
    for (const item of flags.param.flatMap((p) => p.split(','))) {
      const part = item.trim();
      if (part === '') continue;
      const eq = part.indexOf('=');
      const name = part.slice(0, eq < 0 ? part.length : eq).trim();
      const rule =
        eq < 0
          ? ''
          : part
              .slice(eq + 1)
              .trim()
              .toLowerCase();
      if (!PARAM_NAME.test(name) || (rule !== 'default' && !PARAM_RULES.has(rule)))
        throw new Error(`--param takes NAME=allow|remove|refuse|default (such as id_slot=allow), got "${part}"`);
      params[name] = rule === 'default' ? null : rule;
    }
    if (Object.keys(params).length === 0) throw new Error('--param needs NAME=allow|remove|refuse|default');
    out.params = params;
  }
  return Object.keys(out).length === 0 ? undefined : out;
}

/** The CLI's policy options (`keys create/set`), for node:util parseArgs. */
export const POLICY_FLAGS = {
  'max-tokens': { type: 'string' },
  param: { type: 'string', multiple: true },
  'remote-media': { type: 'string' },
  'max-prompt-bytes': { type: 'string' },
  'max-prompt-tokens': { type: 'string' },
} as const;
export const POLICY_FLAG_NAMES = Object.keys(POLICY_FLAGS) as (keyof typeof POLICY_FLAGS)[];
