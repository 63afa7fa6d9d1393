// The admin API, called with the admin key as a Bearer header. The key lives in sessionStorage
// (this tab only; never in a URL, a cookie or localStorage) and is forgotten on sign-out or when the
// API refuses it.

const STORAGE_KEY = 'llm-gateway.console.adminKey';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null,
    readonly param: string | null,
    readonly retryAfter: number | null = null,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export function adminKey(): string | null {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function rememberKey(key: string): void {
  sessionStorage.setItem(STORAGE_KEY, key);
}

export function forgetKey(): void {
  sessionStorage.removeItem(STORAGE_KEY);
}

/** Called when the API refuses the stored key (set by main.ts: back to the sign-in page). */
let onRefused: () => void = () => {};
export function whenRefused(fn: () => void): void {
  onRefused = fn;
}

/** Calls the admin API at `path` (below /admin/); resolves with the JSON body, throws ApiError. */
export async function api<T>(method: string, path: string, body?: unknown, key = adminKey()): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (key !== null) headers.authorization = `Bearer ${key}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(new URL(path, new URL('/admin/', location.origin)), {
    method,
    headers,
    body: body === undefined ? null : JSON.stringify(body),
    credentials: 'omit',
    cache: 'no-store',
    referrerPolicy: 'no-referrer',
  });
  const text = await res.text();
  let json: unknown = null;
  try {
    json = text === '' ? null : JSON.parse(text);
  } catch {
    // not JSON: described below
  }
  if (res.ok) return json as T;
  const err = (json as { error?: { message?: unknown; code?: unknown; param?: unknown } } | null)?.error;
  const retry = res.headers.get('retry-after');
  const apiError = new ApiError(
    res.status,
    typeof err?.message === 'string' ? err.message : `HTTP ${res.status}`,
    typeof err?.code === 'string' ? err.code : null,
    typeof err?.param === 'string' ? err.param : null,
    retry === null ? null : Number(retry),
  );
  if (res.status === 401 && key !== null && key === adminKey()) onRefused();
  throw apiError;
}

export interface Limits {
  rpm: number | null;
  tpm: number | null;
  tpd: number | null;
  concurrency: number | null;
}

export interface KeyJson {
  id: string;
  name: string;
  note: string;
  prefix: string;
  enabled: boolean;
  created_at: string;
  expires_at: string | null;
  last_used_at: string | null;
  models: string[] | null;
  origins: string[] | null;
  limits: Limits;
  /** issue #15; absent from a gateway before it */
  policy?: KeyPolicy | null;
  budgets?: KeyBudgets | null;
  /** the budgets' use now (the gateway's memory, else the usage table); only for a key with budgets */
  budget_state?: BudgetState | null;
}

export type ParamRule = 'allow' | 'remove' | 'refuse';
export type MediaRule = 'refuse' | 'fetch' | 'allow';
export type BudgetPeriod = 'day' | 'week' | 'month';

export interface KeyPolicy {
  max_tokens?: number | null;
  params?: Record<string, ParamRule> | null;
  remote_media?: MediaRule | null;
  max_prompt_bytes?: number | null;
  max_prompt_tokens?: number | null;
}

export type PeriodBudgets = Partial<Record<BudgetPeriod, number | null>>;

interface KeyBudgets extends PeriodBudgets {
  mode?: 'hard' | 'soft' | null;
  per_user?: PeriodBudgets | null;
}

export interface BudgetState {
  tz: string;
  mode: 'hard' | 'soft';
  periods: { period: BudgetPeriod; limit: number; used: number; held: number; remaining: number; resets_at: string }[];
}

export interface UsageReportRow {
  key?: string;
  model?: string;
  day?: string;
  /** by=user: the end user, null for requests without one */
  user?: string | null;
  /** with prices set (GATEWAY_PRICES): the rows' summed cost; null when no row had a price */
  cost?: number | null;
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
  errors: number;
}

export interface UsageReport {
  data: UsageReportRow[];
  total: { requests: number; prompt_tokens: number; completion_tokens: number; total_tokens: number; cost?: number | null };
  /** the price currency (GATEWAY_PRICE_CURRENCY), when the report carries costs */
  currency?: string;
}

export interface UsageSeries {
  by: 'key' | 'model';
  days: string[];
  data: ({ requests: number[]; tokens: number[] } & Record<'key' | 'model', string>)[];
}

export interface RequestJson {
  id: number;
  ts: string;
  request_id: string;
  key_id: string | null;
  key_name: string | null;
  route: string;
  model: string | null;
  status: number;
  outcome: string;
  streamed: boolean;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  total_tokens: number;
  estimated: boolean;
  duration_ms: number;
  end_user?: string | null;
  cost?: number | null;
}

export interface RequestsPage {
  data: RequestJson[];
  has_more: boolean;
  next: string | null;
}

export interface LiveJson {
  at: string;
  upstreams: {
    name: string;
    url: string | null;
    state: 'unknown' | 'ready' | 'loading' | 'down';
    model: string | null;
    models: string[];
    slots: { total: number | null; busy: number | null };
  }[];
  queue: {
    running: number;
    waiting: number;
    slots: number;
    keys: { id: string; name: string; running: number | null; waiting: number; requests_last_minute: number; tokens_last_minute: number }[];
  };
  tokens_per_second: number | null;
  requests_last_minute: number | null;
}
