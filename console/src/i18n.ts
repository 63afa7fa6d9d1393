// The console's words in English and Simplified Chinese. The language comes from the browser
// (navigator.language) until the user picks one with the switch (kept in localStorage: not a secret).
// `{name}` in a string is filled from `vars`. The Chinese words are in i18n-zh.ts.
import { ZH } from './i18n-zh.js';

const EN = {
  appTitle: 'LLM Gateway admin',
  skip: 'Skip to content',
  navKeys: 'Keys',
  navUsage: 'Usage',
  navLive: 'Live',
  language: 'Language',
  signOut: 'Sign out',
  signInTitle: 'Sign in',
  signInIntro:
    'Paste the gateway’s admin key (GATEWAY_ADMIN_KEY). It stays in this tab only and is sent to the admin API as a header; closing the tab or signing out forgets it.',
  adminKey: 'Admin key',
  signIn: 'Sign in',
  signingIn: 'Checking…',
  wrongKey: 'This admin key was refused. Check GATEWAY_ADMIN_KEY and try again.',
  blocked: 'Too many wrong keys from this address; wait {seconds} s and try again.',
  sessionEnded: 'The admin key was refused; sign in again.',
  networkError: 'The gateway could not be reached: {message}',
  loading: 'Loading…',
  search: 'Search keys',
  searchPlaceholder: 'name, prefix, note, model',
  newKey: 'New key',
  name: 'Name',
  prefix: 'Prefix',
  state: 'State',
  expires: 'Expires',
  lastUsed: 'Last used',
  tokensToday: 'Tokens today',
  limits: 'Limits',
  models: 'Models',
  origins: 'Origins',
  note: 'Note',
  actions: 'Actions',
  stateEnabled: 'Enabled',
  stateDisabled: 'Disabled',
  stateExpired: 'Expired',
  never: 'never',
  allModels: 'all',
  anyOrigin: 'any',
  defaultLimits: 'defaults',
  edit: 'Edit',
  disable: 'Disable',
  enable: 'Enable',
  rotate: 'Rotate',
  revoke: 'Revoke',
  cancel: 'Cancel',
  save: 'Save',
  create: 'Create',
  close: 'Close',
  noKeys: 'No stored keys yet. Keys from LLM_API_KEYS are not listed here.',
  noMatch: 'No key matches “{query}”.',
  keyCount: '{shown} of {total} keys',
  createTitle: 'New key',
  editTitle: 'Edit key {name}',
  enabledField: 'Enabled (clients may use it)',
  expiresHelp: 'Empty: never. A date (2026-12-31, valid through that day, UTC), an ISO time, or a duration: 30d, 12h, 90m.',
  modelsHelp: 'One per line or comma-separated. Empty: every model.',
  originsHelp: 'Websites (https://app.example.com) that may use this key from a browser. Empty: any.',
  limitsHelp: 'Per-key limits. Empty: the gateway’s defaults.',
  rpm: 'Requests / minute',
  tpm: 'Tokens / minute',
  tpd: 'Tokens / day',
  concurrency: 'At once',
  noteHelp: 'Who the key is for, where it is used.',
  keyShownTitle: 'Key {name}',
  keyShownOnce: 'Copy this key now: you will not see it again. The gateway keeps only its digest.',
  copy: 'Copy',
  copied: 'Copied',
  copyFailed: 'Copy failed; select the key and copy it by hand.',
  done: 'I have copied it',
  rotateTitle: 'Rotate key {name}?',
  rotateText: 'A new secret replaces the old one at once; clients still using the old one get 401.',
  revokeTitle: 'Revoke key {name}?',
  revokeText: 'The key is deleted; clients using it get 401 at once. This cannot be undone. Its usage rows stay.',
  disabledNotice: 'Key {name} disabled.',
  enabledNotice: 'Key {name} enabled.',
  revokedNotice: 'Key {name} revoked.',
  savedNotice: 'Key {name} saved.',
  range: 'Range',
  last7: 'Last 7 days',
  last30: 'Last 30 days',
  last90: 'Last 90 days',
  custom: 'Custom',
  since: 'From',
  until: 'Through',
  apply: 'Apply',
  groupBy: 'Stack by',
  byKey: 'key',
  byModel: 'model',
  tokensPerDay: 'Tokens per day (UTC), by {group}',
  chartHelp: 'Click a bar, or a day’s button below, to list that day’s requests.',
  exportCsv: 'Export CSV',
  day: 'Day',
  requests: 'Requests',
  tokens: 'Tokens',
  promptTokens: 'Prompt',
  completionTokens: 'Completion',
  errors: 'Errors',
  perDay: 'Per day',
  perKey: 'Per key',
  perModel: 'Per model',
  showRequests: 'Requests of {day}',
  noUsage: 'No requests in this range.',
  total: 'Total',
  requestsOf: 'Requests on {day}',
  key: 'Key',
  model: 'Model',
  status: 'Status',
  any: 'any',
  statusOk: 'ok',
  statusError: 'errors',
  time: 'Time',
  route: 'Route',
  outcome: 'Outcome',
  duration: 'Duration',
  loadMore: 'Load more',
  noRequests: 'No requests match.',
  bodiesNote: 'Prompts and answers are never shown here; with GATEWAY_LOG_BODIES they are in the audit log.',
  liveTitle: 'Live',
  updatedAt: 'Updated {time}, every {seconds} s',
  paused: 'Paused while this tab is hidden.',
  upstreams: 'Model servers',
  upReady: 'Ready',
  upUnknown: 'Not probed yet',
  upLoading: 'Loading',
  upDown: 'Down',
  slots: 'Slots',
  slotsBusy: '{busy} busy of {total}',
  unknown: 'unknown',
  inFlight: 'In flight',
  waiting: 'Waiting',
  queueLine: '{running} running on {slots} slots, {waiting} waiting',
  tokensPerSecond: 'Tokens / s (last minute)',
  requestsLastMinute: 'Requests (last minute)',
  perKeyNow: 'Keys now',
  noActivity: 'No key is running, waiting, or was seen in the last minute.',
  usageOff: 'off (GATEWAY_USAGE=off)',
  budget: 'Budget',
  policy: 'Policy',
  noBudget: 'none',
  defaultPolicy: 'defaults',
  periodDay: 'day',
  periodWeek: 'week',
  periodMonth: 'month',
  budgetLine: '{period} {percent}% of {limit}',
  budgetResets: 'resets {time}',
  budgetSpent: 'spent, refused until it resets',
  budgetOver: 'over, warned only',
  budgetSoft: 'soft: warns, never refuses',
  budgetHard: 'hard: refused once spent',
  budgetConfigured: '{period} ≤ {limit}',
  perUserBudget: 'per end user: {list}',
  capTokens: 'output ≤ {n} tokens',
  capPromptBytes: 'prompt ≤ {n} bytes',
  capPromptTokens: 'prompt ≤ {n} tokens',
  mediaRefused: 'media URLs refused',
  mediaFetched: 'media URLs fetched by the gateway',
  mediaAllowed: 'media URLs passed on',
  paramsLine: 'parameters: {list}',
  budgetsLegend: 'Token budgets',
  budgetsHelp: 'Tokens per calendar day, week (from Monday) and month in the gateway’s time zone (GATEWAY_BUDGET_TZ). Empty: no budget.',
  budgetDay: 'Per day',
  budgetWeek: 'Per week',
  budgetMonth: 'Per month',
  budgetMode: 'When spent',
  modeHard: 'refuse (hard)',
  modeSoft: 'warn only (soft)',
  perUserHelp: 'The same for each end user under this key (X-OpenWebUI-User-Id or the body’s user field). Empty: none.',
  policyLegend: 'Request policy',
  policyHelp: 'What a call with this key may ask for. Empty: the gateway’s defaults (GATEWAY_MAX_TOKENS, GATEWAY_PARAM_POLICY, …).',
  maxTokens: 'Max output tokens',
  maxPromptBytes: 'Max prompt bytes',
  maxPromptTokens: 'Max prompt tokens',
  remoteMedia: 'Remote media URLs',
  mediaDefault: 'default',
  mediaRefuseOpt: 'refuse',
  mediaFetchOpt: 'fetch (by the gateway)',
  mediaAllowOpt: 'allow (llama-server fetches)',
  params: 'Parameters',
  paramsHelp: 'One per line: NAME=allow, NAME=remove or NAME=refuse (id_slot=allow). Empty: the gateway’s table.',
  paramsInvalid: 'Parameters: “{entry}” is not NAME=allow, NAME=remove or NAME=refuse.',
  perUser: 'Per end user',
  endUser: 'End user',
  noEndUser: '(none)',
  cost: 'Cost',
  costIn: 'Cost ({currency})',
  allKeys: 'all keys',
} as const;

export type Key = keyof typeof EN;

export type Lang = 'en' | 'zh-CN';
export const LANGS: readonly { lang: Lang; label: string }[] = [
  { lang: 'en', label: 'English' },
  { lang: 'zh-CN', label: '简体中文' },
];

const STORAGE_KEY = 'llm-gateway.console.lang';

function detect(): Lang {
  try {
    const saved = localStorage.getItem(STORAGE_KEY);
    if (saved === 'en' || saved === 'zh-CN') return saved;
  } catch {
    // storage blocked: follow the browser
  }
  const wanted = navigator.languages.length > 0 ? navigator.languages : [navigator.language];
  for (const l of wanted) {
    if (l.toLowerCase().startsWith('zh')) return 'zh-CN';
    if (l.toLowerCase().startsWith('en')) return 'en';
  }
  return 'en';
}

let current: Lang = detect();

export function lang(): Lang {
  return current;
}

export function setLang(l: Lang): void {
  current = l;
  document.documentElement.lang = l;
  try {
    localStorage.setItem(STORAGE_KEY, l);
  } catch {
    // not kept: fine
  }
}

export function t(key: Key, vars: Readonly<Record<string, string | number>> = {}): string {
  const text = (current === 'zh-CN' ? ZH : EN)[key];
  return text.replace(/\{(\w+)\}/g, (whole, name: string) => (name in vars ? String(vars[name]) : whole));
}

export function formatNumber(n: number): string {
  return new Intl.NumberFormat(current).format(n);
}

/** A time in the browser's zone, to the minute (or second). */
export function formatTime(iso: string | null, seconds = false): string {
  if (iso === null) return '—';
  return new Intl.DateTimeFormat(current, {
    year: 'numeric',
    month: '2-digit',
    day: '2-digit',
    hour: '2-digit',
    minute: '2-digit',
    ...(seconds ? { second: '2-digit' } : {}),
  }).format(new Date(iso));
}

/** A cost in the price currency: cents, and below one unit the fractions a cheap request costs (stored to 1e-6). */
export function formatCost(n: number): string {
  return new Intl.NumberFormat(current, { minimumFractionDigits: 2, maximumFractionDigits: Math.abs(n) >= 1 ? 2 : 6 }).format(n);
}
