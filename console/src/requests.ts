// A day's requests (the usage page's drill-down): newest first, filtered by key, model, end user and
// status, paged with "load more", exported as CSV. The end user and cost columns appear when the
// rows carry them. Prompts and answers are never shown.
import { api, type RequestJson, type RequestsPage } from './api.js';
import { csv, download, h, replace, table } from './dom.js';
import { formatCost, formatNumber, formatTime, t, type Key } from './i18n.js';

/** The cost column's heading, with the price currency when the API names one. */
export function costHeading(currency: string | null): string {
  return currency === null ? t('cost') : t('costIn', { currency });
}

/** What the usage page knows of the range shown: the filters' choices and the price currency. */
export interface Shown {
  keys: string[];
  models: string[];
  users: string[];
  currency: string | null;
}

/** A day's requests in `drill`, newest first, with filters; "load more" pages on. */
export async function showDay(drill: HTMLElement, error: HTMLElement, day: string, shown: Shown): Promise<void> {
  const filters = { key: '', model: '', user: '', status: '' };
  const select = (name: 'key' | 'model' | 'user' | 'status', label: Key, options: { value: string; label: string }[]): HTMLElement => {
    const el = h(
      'select',
      {
        id: `f-${name}`,
        onchange: () => {
          filters[name] = el.value;
          void list(true);
        },
      },
      h('option', { value: '' }, t('any')),
      ...options.map((o) => h('option', { value: o.value }, o.label)),
    );
    return h('div', { class: 'field inline' }, h('label', { for: el.id }, t(label)), el);
  };
  const keyOptions = shown.keys.map((k) => ({ value: k, label: k }));
  const modelOptions = shown.models.map((m) => ({ value: m, label: m }));
  const userOptions = shown.users.map((u) => ({ value: u, label: u }));
  const rowsBox = h('div', {});
  const more = h('button', { type: 'button', id: 'load-more', hidden: true, onclick: () => void list(false) }, t('loadMore'));
  const heading = h('h2', { id: 'drill-title', tabindex: -1 }, t('requestsOf', { day }));
  let rows: RequestJson[] = [];
  let next: string | null = null;
  replace(
    drill,
    heading,
    h('p', { class: 'muted' }, t('bodiesNote')),
    h(
      'div',
      { class: 'toolbar' },
      keyOptions.length > 0 ? select('key', 'key', keyOptions) : null,
      modelOptions.length > 0 ? select('model', 'model', modelOptions) : null,
      userOptions.length > 0 ? select('user', 'endUser', userOptions) : null,
      select('status', 'status', [
        { value: 'ok', label: t('statusOk') },
        { value: 'error', label: t('statusError') },
      ]),
      h(
        'button',
        {
          type: 'button',
          id: 'export-requests',
          onclick: () =>
            download(
              `requests-${day}.csv`,
              csv([
                [
                  'time',
                  'request_id',
                  'key',
                  'model',
                  'route',
                  'status',
                  'outcome',
                  'prompt_tokens',
                  'completion_tokens',
                  'total_tokens',
                  'estimated',
                  'duration_ms',
                  'end_user',
                  'cost',
                ],
                ...rows.map((r) => [
                  r.ts,
                  r.request_id,
                  r.key_name,
                  r.model,
                  r.route,
                  r.status,
                  r.outcome,
                  r.prompt_tokens,
                  r.completion_tokens,
                  r.total_tokens,
                  r.estimated,
                  r.duration_ms,
                  r.end_user ?? null,
                  r.cost ?? null,
                ]),
              ]),
            ),
        },
        '⤓ ',
        t('exportCsv'),
      ),
    ),
    rowsBox,
    more,
  );
  heading.focus();

  async function list(fresh: boolean): Promise<void> {
    if (fresh) {
      rows = [];
      next = null;
    }
    const params = new URLSearchParams({ day, limit: '50' });
    for (const [k, v] of Object.entries(filters)) if (v !== '') params.set(k, v);
    if (next !== null) params.set('after', next);
    try {
      const page = await api<RequestsPage>('GET', `requests?${params.toString()}`);
      rows = rows.concat(page.data);
      next = page.next;
      more.hidden = !page.has_more;
      // The end user and cost columns only when some row has one (end users named, prices set).
      const users = rows.some((r) => r.end_user !== null && r.end_user !== undefined);
      const costs = rows.some((r) => typeof r.cost === 'number');
      replace(
        rowsBox,
        rows.length === 0
          ? h('p', { class: 'empty' }, t('noRequests'))
          : table(
              t('requestsOf', { day }),
              [
                t('time'),
                t('key'),
                ...(users ? [t('endUser')] : []),
                t('model'),
                t('route'),
                t('status'),
                t('outcome'),
                t('promptTokens'),
                t('completionTokens'),
                ...(costs ? [costHeading(shown.currency)] : []),
                t('duration'),
              ],
              rows.map((r) => [
                formatTime(r.ts, true),
                r.key_name ?? '—',
                ...(users ? [r.end_user ?? '—'] : []),
                r.model ?? '—',
                r.route,
                String(r.status),
                h(
                  'span',
                  { class: `badge ${r.outcome === 'ok' ? 'ok' : 'off'}` },
                  h('span', { 'aria-hidden': 'true' }, r.outcome === 'ok' ? '✓ ' : '✕ '),
                  r.outcome,
                ),
                r.prompt_tokens === null ? '—' : formatNumber(r.prompt_tokens),
                r.completion_tokens === null ? '—' : `${formatNumber(r.completion_tokens)}${r.estimated ? ' ≈' : ''}`,
                ...(costs ? [typeof r.cost === 'number' ? formatCost(r.cost) : '—'] : []),
                `${formatNumber(r.duration_ms)} ms`,
              ]),
              'requests',
            ),
      );
    } catch (err) {
      error.textContent = err instanceof Error ? err.message : String(err);
    }
  }
  await list(true);
}
