// A key's request policy and token budgets (issue #15): the keys table's summaries, and the form's
// fields with what they change. The documents are the admin API's (`policy`, `budgets`): a PATCH
// merges them field by field and a null field removes it (back to the gateway's default), so the
// form sends only what changed; `params` and `per_user` are sent whole (they are replaced whole).
// The state of a budget is shown as words and numbers ("month 12% of 1,000,000"), the bar beside it
// is only a help to the eye.
import type { BudgetPeriod, BudgetState, KeyJson, KeyPolicy, MediaRule, ParamRule, PeriodBudgets } from './api.js';
import { h } from './dom.js';
import { formatNumber, formatTime, t, type Key } from './i18n.js';

const PERIODS: readonly { period: BudgetPeriod; label: Key; field: Key }[] = [
  { period: 'day', label: 'periodDay', field: 'budgetDay' },
  { period: 'week', label: 'periodWeek', field: 'budgetWeek' },
  { period: 'month', label: 'periodMonth', field: 'budgetMonth' },
];
const MEDIA: Record<MediaRule, Key> = { refuse: 'mediaRefused', fetch: 'mediaFetched', allow: 'mediaAllowed' };
const PARAM_RULES: readonly ParamRule[] = ['allow', 'remove', 'refuse'];
type PolicyNumber = 'max_tokens' | 'max_prompt_bytes' | 'max_prompt_tokens';
const POLICY_NUMBERS: readonly { name: PolicyNumber; label: Key; summary: Key }[] = [
  { name: 'max_tokens', label: 'maxTokens', summary: 'capTokens' },
  { name: 'max_prompt_bytes', label: 'maxPromptBytes', summary: 'capPromptBytes' },
  { name: 'max_prompt_tokens', label: 'maxPromptTokens', summary: 'capPromptTokens' },
];

/** The keys table's policy cell: one line per rule the key sets itself. */
export function policyCell(p: KeyPolicy | null | undefined): HTMLElement | string {
  if (p === null || p === undefined) return t('defaultPolicy');
  const parts: string[] = [];
  for (const f of POLICY_NUMBERS) {
    const n = p[f.name];
    if (typeof n === 'number') parts.push(t(f.summary, { n: formatNumber(n) }));
  }
  if (p.remote_media !== null && p.remote_media !== undefined) parts.push(t(MEDIA[p.remote_media]));
  const params = Object.entries(p.params ?? {});
  if (params.length > 0) parts.push(t('paramsLine', { list: params.map(([k, v]) => `${k}=${v}`).join(', ') }));
  return parts.length === 0 ? t('defaultPolicy') : h('div', { class: 'policy' }, ...parts.map((x) => h('div', {}, x)));
}

function periodsText(b: PeriodBudgets): string {
  return PERIODS.filter((p) => typeof b[p.period] === 'number')
    .map((p) => t('budgetConfigured', { period: t(p.label), limit: formatNumber(b[p.period]!) }))
    .join(' · ');
}

function stateLines(s: BudgetState): HTMLElement[] {
  return s.periods.map((p) => {
    const label = t(PERIODS.find((x) => x.period === p.period)?.label ?? 'periodDay');
    const ratio = p.limit > 0 ? p.used / p.limit : 1;
    const percent = ratio > 0 && ratio < 0.01 ? '<1' : String(Math.floor(ratio * 100));
    const spent = p.remaining <= 0;
    return h(
      'div',
      { class: 'budget-line', 'data-period': p.period },
      h(
        'span',
        { class: spent ? 'budget-text spent' : 'budget-text' },
        spent ? h('span', { 'aria-hidden': 'true' }, '⚠ ') : null,
        t('budgetLine', { period: label, percent, limit: formatNumber(p.limit) }),
        spent ? ` — ${t(s.mode === 'soft' ? 'budgetOver' : 'budgetSpent')}` : null,
      ),
      // The bar repeats the words for the eye; screen readers get the words only.
      h('meter', { min: 0, max: p.limit, value: Math.min(p.used, p.limit), high: p.limit * 0.8, 'aria-hidden': 'true' }),
      h('span', { class: 'muted' }, t('budgetResets', { time: formatTime(p.resets_at) })),
    );
  });
}

/** The keys table's budget cell: each period's use now, the mode and the per-user budgets. */
export function budgetCell(k: KeyJson): HTMLElement | string {
  const b = k.budgets;
  if (b === null || b === undefined) return t('noBudget');
  const s = k.budget_state;
  const soft = (s?.mode ?? b.mode) === 'soft';
  const perUser = b.per_user === null || b.per_user === undefined ? '' : periodsText(b.per_user);
  return h(
    'div',
    { class: 'budget' },
    ...(s === null || s === undefined ? [h('div', {}, periodsText(b))] : stateLines(s)),
    h('div', { class: 'muted' }, t(soft ? 'budgetSoft' : 'budgetHard'), s === null || s === undefined ? '' : ` · ${s.tz}`),
    perUser === '' ? null : h('div', { class: 'muted' }, t('perUserBudget', { list: perUser })),
  );
}

const fieldId = (path: string): string => `f-${path.replace(/\./g, '-')}`;

function numberInput(path: string, value: number | null | undefined): HTMLInputElement {
  return h('input', {
    id: fieldId(path),
    name: path,
    type: 'number',
    min: '1',
    step: '1',
    inputmode: 'numeric',
    value: typeof value === 'number' ? String(value) : '',
  });
}

function select(path: string, value: string, options: readonly { value: string; label: Key }[]): HTMLSelectElement {
  return h(
    'select',
    { id: fieldId(path), name: path },
    ...options.map((o) => h('option', { value: o.value, selected: o.value === value }, t(o.label))),
  );
}

function cell(label: Key, el: HTMLElement): HTMLElement {
  return h('div', { class: 'field' }, h('label', { for: el.id }, t(label)), el);
}

const numberOf = (el: HTMLInputElement): number | null => (el.value.trim() === '' ? null : Number(el.value));

/** `NAME=rule` entries, one per line or comma-separated; throws naming the first one that is not. */
function parseParams(text: string): Record<string, ParamRule> | null {
  const out: Record<string, ParamRule> = {};
  for (const entry of text.split(/[\n,]/).map((s) => s.trim())) {
    if (entry === '') continue;
    const m = /^([\w.-]+)\s*=\s*(\w+)$/.exec(entry);
    if (m === null || !PARAM_RULES.includes(m[2] as ParamRule)) throw new Error(t('paramsInvalid', { entry }));
    out[m[1]!] = m[2] as ParamRule;
  }
  return Object.keys(out).length === 0 ? null : out;
}

/** JSON with objects' fields in order, so {a,b} and {b,a} compare equal. */
const sorted = (_k: string, v: unknown): unknown =>
  v !== null && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.entries(v).sort()) : v;
const sameJson = (a: unknown, b: unknown): boolean => JSON.stringify(a, sorted) === JSON.stringify(b, sorted);

/** A set field that changed: the new value, or null to remove it (the default again). */
function diff(out: Record<string, unknown>, name: string, next: unknown, before: unknown, creating: boolean): void {
  if (creating ? next !== null : !sameJson(next, before ?? null)) out[name] = next;
}

export interface RuleFields {
  readonly nodes: HTMLElement[];
  /** What to send: `policy` and `budgets` only when something changed; throws a message for a field the API would not understand. */
  changes(): { policy?: Record<string, unknown>; budgets?: Record<string, unknown> };
}

/** The form's policy and budget fieldsets, filled from the key (null: a new key). */
export function ruleFields(existing: KeyJson | null): RuleFields {
  const p = existing?.policy ?? {};
  const b = existing?.budgets ?? {};
  const creating = existing === null;
  const numbers = POLICY_NUMBERS.map((f) => ({ ...f, el: numberInput(`policy.${f.name}`, p[f.name]) }));
  const media = select('policy.remote_media', p.remote_media ?? '', [
    { value: '', label: 'mediaDefault' },
    { value: 'refuse', label: 'mediaRefuseOpt' },
    { value: 'fetch', label: 'mediaFetchOpt' },
    { value: 'allow', label: 'mediaAllowOpt' },
  ]);
  const params = h(
    'textarea',
    { id: fieldId('policy.params'), name: 'policy.params', rows: 2, spellcheck: 'false', 'aria-describedby': 'h-policy-params' },
    Object.entries(p.params ?? {})
      .map(([k, v]) => `${k}=${v}`)
      .join('\n'),
  );
  const periods = PERIODS.map((x) => ({ ...x, el: numberInput(`budgets.${x.period}`, b[x.period]) }));
  const perUser = PERIODS.map((x) => ({ ...x, el: numberInput(`budgets.per_user.${x.period}`, b.per_user?.[x.period]) }));
  const mode = select('budgets.mode', b.mode === 'soft' ? 'soft' : 'hard', [
    { value: 'hard', label: 'modeHard' },
    { value: 'soft', label: 'modeSoft' },
  ]);

  const nodes = [
    h(
      'fieldset',
      { 'aria-describedby': 'h-budgets' },
      h('legend', {}, t('budgetsLegend')),
      h('p', { class: 'help', id: 'h-budgets' }, t('budgetsHelp')),
      h('div', { class: 'limits' }, ...periods.map((x) => cell(x.field, x.el)), cell('budgetMode', mode)),
      h(
        'fieldset',
        { 'aria-describedby': 'h-per-user' },
        h('legend', {}, t('perUser')),
        h('p', { class: 'help', id: 'h-per-user' }, t('perUserHelp')),
        h('div', { class: 'limits' }, ...perUser.map((x) => cell(x.field, x.el))),
      ),
    ),
    h(
      'fieldset',
      { 'aria-describedby': 'h-policy' },
      h('legend', {}, t('policyLegend')),
      h('p', { class: 'help', id: 'h-policy' }, t('policyHelp')),
      h('div', { class: 'limits' }, ...numbers.map((f) => cell(f.label, f.el)), cell('remoteMedia', media)),
      h(
        'div',
        { class: 'field' },
        h('label', { for: params.id }, t('params')),
        params,
        h('p', { class: 'help', id: 'h-policy-params' }, t('paramsHelp')),
      ),
    ),
  ];

  return {
    nodes,
    changes() {
      const policy: Record<string, unknown> = {};
      for (const f of numbers) diff(policy, f.name, numberOf(f.el), p[f.name], creating);
      diff(policy, 'remote_media', media.value === '' ? null : media.value, p.remote_media, creating);
      let parsed: Record<string, ParamRule> | null;
      try {
        parsed = parseParams(params.value);
      } catch (err) {
        params.setAttribute('aria-invalid', 'true');
        params.focus();
        throw err;
      }
      diff(policy, 'params', parsed, p.params, creating);
      const budgets: Record<string, unknown> = {};
      for (const x of periods) diff(budgets, x.period, numberOf(x.el), b[x.period], creating);
      // hard is the default: sent as null (removed) rather than stored
      diff(budgets, 'mode', mode.value === 'soft' ? 'soft' : null, b.mode === 'soft' ? 'soft' : null, creating);
      const users: Record<string, number> = {};
      for (const x of perUser) if (numberOf(x.el) !== null) users[x.period] = numberOf(x.el)!;
      const before = Object.fromEntries(Object.entries(b.per_user ?? {}).filter(([, v]) => v !== null));
      diff(budgets, 'per_user', Object.keys(users).length === 0 ? null : users, Object.keys(before).length === 0 ? null : before, creating);
      return {
        ...(Object.keys(policy).length > 0 ? { policy } : {}),
        ...(Object.keys(budgets).length > 0 ? { budgets } : {}),
      };
    },
  };
}

/**
 * The form control an API error names: `policy.max_tokens`, `body/budgets/per_user/day`,
 * `policy.params.id_slot` (→ the params field), `limits.rpm` (→ the field named `rpm`).
 */
export function fieldFor(form: HTMLElement, path: string): HTMLElement | null {
  const parts = path.split(/[./]/).filter((s) => s !== '');
  for (let n = parts.length; n > 0; n--) {
    const el = form.querySelector<HTMLElement>(`[name="${CSS.escape(parts.slice(0, n).join('.'))}"]`);
    if (el !== null) return el;
  }
  const last = parts.at(-1);
  return last === undefined ? null : form.querySelector<HTMLElement>(`[name="${CSS.escape(last)}"]`);
}
