// The llama-server parameters a key may not use as it likes (issue #15). llama-server reads many
// non-OpenAI fields from the same JSON body (tools/server/server-task.cpp, params_from_json_cmpl);
// most only shape the caller's own answer, but a few act on the server or on other callers' work.
// Each entry says what the gateway does with one by default, and why, from llama-server's own
// handling of it:
//   refuse   403 param_not_allowed naming the parameter and the rule
//   remove   dropped from the body before forwarding (llama-server then uses its own default)
//   allow    forwarded as sent (listed here so the table says why it was judged harmless)
// GATEWAY_PARAM_POLICY overrides entries (`id_slot=allow,n_probs=remove`), a key's policy.params
// overrides both; a name not in the table may be given a rule too (e.g. `logit_bias=remove`).
import { PARAM_NAME, type ParamRule } from '../keys/key-policy.js';

export interface ParamEntry {
  readonly rule: ParamRule;
  /**
   * When set, the rule applies only to a number above this (or to a value that is not a number):
   * n_probs up to OpenAI's own top_logprobs maximum is ordinary use.
   */
  readonly above?: number;
  readonly why: string;
}

/** OpenAI caps top_logprobs at 20; llama-server has no cap of its own. */
const MAX_PROBS = 20;

export const DEFAULT_PARAMS: Readonly<Record<string, ParamEntry>> = {
  id_slot: {
    rule: 'refuse',
    why: 'pins the request to one server slot: it waits for that slot, reuses and overwrites the prompt cache another caller left there (and its timing tells what was cached)',
  },
  lora: {
    rule: 'refuse',
    why: "switches the server's LoRA adapters for the request; requests with other adapters cannot be batched with it, and the adapters are the operator's choice",
  },
  n_cmpl: {
    rule: 'refuse',
    why: "llama-server's own name for n (it wins over n): runs that many generations, which the gateway's task count (n) does not see",
  },
  n_probs: {
    rule: 'refuse',
    above: MAX_PROBS,
    why: 'each generated token sorts the vocabulary and returns that many probabilities: a large n_probs costs the server CPU and memory for everybody',
  },
  top_logprobs: {
    rule: 'refuse',
    above: MAX_PROBS,
    why: 'becomes n_probs in llama-server (same cost); OpenAI itself allows at most 20',
  },
  logprobs: {
    rule: 'refuse',
    above: MAX_PROBS,
    why: "a number becomes n_probs in llama-server when n_probs is absent (chat too): the same cost; true/false and OpenAI's own range are ordinary use",
  },
  ignore_eos: {
    rule: 'allow',
    why: 'keeps generating past the end of the answer; bounded by the max_tokens cap (set GATEWAY_MAX_TOKENS) and the context',
  },
  t_max_predict_ms: { rule: 'allow', why: 'only shortens a generation (a time limit on it)' },
  t_max_prompt_ms: { rule: 'allow', why: 'read by llama-server but not implemented' },
  n_keep: { rule: 'allow', why: "what a context shift keeps of the request's own prompt, in its own slot" },
  n_discard: { rule: 'allow', why: "what a context shift drops of the request's own context, in its own slot" },
  cache_prompt: { rule: 'allow', why: "false only makes the request's own prompt be processed again (its own cost, counted)" },
  n_cache_reuse: { rule: 'allow', why: "chunk size for reusing the request's own slot cache" },
  n_indent: { rule: 'allow', why: 'infill indentation of its own answer' },
  samplers: { rule: 'allow', why: 'sampler order for its own answer' },
  min_keep: { rule: 'allow', why: 'sampler setting for its own answer' },
  post_sampling_probs: { rule: 'allow', why: 'changes which probabilities are returned; their number is bounded by n_probs' },
  response_fields: { rule: 'allow', why: 'shapes its own answer' },
  return_tokens: { rule: 'allow', why: 'adds its own token ids to the answer' },
  timings_per_token: { rule: 'allow', why: 'adds timings to its own stream' },
  json_schema: { rule: 'allow', why: 'constrains its own answer (grammar nesting is capped at parse time)' },
  grammar: { rule: 'allow', why: 'constrains its own answer (nesting capped at parse time: json-body.ts)' },
  dry_multiplier: { rule: 'allow', why: 'sampler setting for its own answer (all dry_* alike)' },
};

/** One rule over the table: a parameter's action and bound, as the effective policy checks it. */
export interface ParamCheck {
  readonly name: string;
  readonly rule: Exclude<ParamRule, 'allow'>;
  readonly above: number | undefined;
}

const RULES: ReadonlySet<string> = new Set(['allow', 'remove', 'refuse']);

function isParamRule(v: unknown): v is ParamRule {
  return typeof v === 'string' && RULES.has(v);
}

/**
 * `id_slot=allow,n_probs=remove` as a map; throws Error naming the faulty item (the caller says
 * which setting or option it was).
 */
export function parseParamList(text: string): Record<string, ParamRule> {
  const out: Record<string, ParamRule> = {};
  for (const item of text.split(',')) {
    const part = item.trim();
    if (part === '') continue;
    const eq = part.indexOf('=');
    const name = eq < 0 ? part : part.slice(0, eq).trim();
    const rule =
      eq < 0
        ? ''
        : part
            .slice(eq + 1)
            .trim()
            .toLowerCase();
    if (!PARAM_NAME.test(name)) throw new Error(`"${part}": a parameter name is letters, digits, _ . - (such as id_slot)`);
    if (!isParamRule(rule)) throw new Error(`"${part}": write NAME=allow, NAME=remove or NAME=refuse`);
    out[name] = rule;
  }
  return out;
}

/** The checks that do something (refuse or remove), from the table with the overrides applied in order. */
export function paramChecks(...overrides: (Readonly<Record<string, ParamRule>> | undefined)[]): readonly ParamCheck[] {
  const rules = new Map<string, ParamRule>();
  for (const [name, e] of Object.entries(DEFAULT_PARAMS)) rules.set(name, e.rule);
  for (const o of overrides) if (o !== undefined) for (const [name, rule] of Object.entries(o)) rules.set(name, rule);
  const checks: ParamCheck[] = [];
  for (const [name, rule] of rules) if (rule !== 'allow') checks.push({ name, rule, above: DEFAULT_PARAMS[name]?.above });
  return checks;
}

/** True when `value` is one the check applies to (always, or a number above its bound). */
export function breaks(check: ParamCheck, value: unknown): boolean {
  // llama-server reads a value of another type as its default (json_value), so only numbers count.
  return check.above === undefined || (typeof value === 'number' && value > check.above);
}
