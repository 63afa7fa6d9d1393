// Usage: tokens per day stacked by key or model over a chosen range (UTC days), the same range per
// day, per key and per model as tables, a day's requests (from a bar or a day's button) with
// filters, and CSV exports of what is shown.
import { api, type RequestJson, type RequestsPage, type UsageReport, type UsageReportRow, type UsageSeries } from './api.js';
import { stackedBars } from './chart.js';
import { csv, download, h, replace, table } from './dom.js';
import { formatNumber, formatTime, t, type Key } from './i18n.js';

const DAY_MS = 86_400_000;
const RANGES: readonly { days: number; label: Key }[] = [
  { days: 7, label: 'last7' },
  { days: 30, label: 'last30' },
  { days: 90, label: 'last90' },
];

interface Range {
  since: string;
  until: string;
}

function utcDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

function lastDays(n: number): Range {
  const now = Date.now();
  return { since: utcDay(now - (n - 1) * DAY_MS), until: utcDay(now) };
}

/** Every UTC day from `since` through `until`. */
function daysOf(r: Range): string[] {
  const out: string[] = [];
  for (let d = Date.parse(`${r.since}T00:00:00Z`); d <= Date.parse(`${r.until}T00:00:00Z`) && out.length < 400; d += DAY_MS)
    out.push(utcDay(d));
  return out;
}

/** Page state kept across visits in this tab (not the key: sessionStorage holds only that). */
const state: { range: Range; preset: number | null; by: 'key' | 'model' } = { range: lastDays(7), preset: 7, by: 'key' };

export function usagePage(main: HTMLElement): () => void {
  let alive = true;
  let removeChart: () => void = () => {};
  let shown: { days: string[]; series: UsageSeries | null; keys: string[]; models: string[] } = {
    days: [],
    series: null,
    keys: [],
    models: [],
  };
  const error = h('p', { class: 'error', role: 'alert' });
  const chartBox = h('div', { class: 'chart', id: 'usage-chart' });
  const chartTitle = h('h2', { id: 'chart-title' });
  const tables = h('div', { class: 'tables' });
  const drill = h('section', { id: 'drill', 'aria-live': 'polite' });

  const since = h('input', { id: 'since', type: 'date', value: state.range.since });
  const until = h('input', { id: 'until', type: 'date', value: state.range.until });
  const custom = h('div', { class: 'custom-range', hidden: state.preset !== null });
  const presetSelect = h(
    'select',
    {
      id: 'range',
      onchange: () => {
        const v = presetSelect.value;
        custom.hidden = v !== 'custom';
        if (v !== 'custom') {
          state.preset = Number(v);
          state.range = lastDays(state.preset);
          since.value = state.range.since;
          until.value = state.range.until;
          void load();
        }
      },
    },
    ...RANGES.map((r) => h('option', { value: r.days, selected: state.preset === r.days }, t(r.label))),
    h('option', { value: 'custom', selected: state.preset === null }, t('custom')),
  );
  replace(
    custom,
    h('label', { for: 'since' }, t('since')),
    since,
    h('label', { for: 'until' }, t('until')),
    until,
    h(
      'button',
      {
        type: 'button',
        onclick: () => {
          if (since.value === '' || until.value === '' || until.value < since.value) return;
          state.preset = null;
          state.range = { since: since.value, until: until.value };
          void load();
        },
      },
      t('apply'),
    ),
  );
  const byRadio = (by: 'key' | 'model', label: Key): HTMLElement =>
    h(
      'label',
      { class: 'radio' },
      h('input', {
        type: 'radio',
        name: 'by',
        value: by,
        checked: state.by === by,
        onchange: () => {
          state.by = by;
          void load();
        },
      }),
      ' ',
      t(label),
    );

  replace(
    main,
    h('h1', {}, t('navUsage')),
    h(
      'div',
      { class: 'toolbar' },
      h('label', { for: 'range' }, t('range')),
      presetSelect,
      custom,
      h('fieldset', { class: 'inline' }, h('legend', {}, t('groupBy')), byRadio('key', 'byKey'), byRadio('model', 'byModel')),
      h('button', { type: 'button', id: 'export-usage', onclick: () => exportShown() }, '⤓ ', t('exportCsv')),
    ),
    error,
    h('section', { 'aria-labelledby': 'chart-title' }, chartTitle, h('p', { class: 'muted' }, t('chartHelp')), chartBox),
    tables,
    drill,
  );

  function exportShown(): void {
    const s = shown.series;
    if (s === null) return;
    const rows: (string | number)[][] = [['day', s.by, 'requests', 'tokens']];
    shown.days.forEach((day) => {
      const i = s.days.indexOf(day);
      for (const g of s.data) if (i >= 0 && (g.requests[i] ?? 0) > 0) rows.push([day, g[s.by], g.requests[i] ?? 0, g.tokens[i] ?? 0]);
    });
    download(`usage-by-${s.by}-${state.range.since}-${state.range.until}.csv`, csv(rows));
  }

  function reportTable(caption: string, first: Key, report: UsageReport, field: 'key' | 'model'): HTMLElement {
    const row = (
      name: string,
      r: Pick<UsageReportRow, 'requests' | 'prompt_tokens' | 'completion_tokens' | 'total_tokens'>,
      errors: number | string,
    ) => [
      name,
      formatNumber(r.requests),
      formatNumber(r.prompt_tokens),
      formatNumber(r.completion_tokens),
      formatNumber(r.total_tokens),
      typeof errors === 'number' ? formatNumber(errors) : errors,
    ];
    return h(
      'section',
      {},
      h('h2', {}, caption),
      table(
        caption,
        [t(first), t('requests'), t('promptTokens'), t('completionTokens'), t('tokens'), t('errors')],
        [...report.data.map((r) => row(r[field] ?? '', r, r.errors)), row(t('total'), report.total, '')],
        'numbers',
      ),
    );
  }

  async function load(): Promise<void> {
    const q = `since=${state.range.since}&until=${state.range.until}`;
    replace(chartTitle, t('tokensPerDay', { group: t(state.by === 'key' ? 'byKey' : 'byModel') }));
    try {
      const [series, byKey, byModel] = await Promise.all([
        api<UsageSeries>('GET', `usage/series?${q}&by=${state.by}`),
        api<UsageReport>('GET', `usage?${q}&by=key`),
        api<UsageReport>('GET', `usage?${q}&by=model`),
      ]);
      if (!alive) return;
      error.textContent = '';
      const days = daysOf(state.range);
      shown = { days, series, keys: byKey.data.map((r) => r.key ?? ''), models: byModel.data.map((r) => r.model ?? '') };
      const at = new Map(series.days.map((d, i) => [d, i]));
      const pick = (values: number[]): number[] => days.map((d) => values[at.get(d) ?? -1] ?? 0);
      removeChart();
      const perDay = days.map((d) =>
        series.data.reduce((acc, g) => ({ r: acc.r + (g.requests[at.get(d) ?? -1] ?? 0), k: acc.k + (g.tokens[at.get(d) ?? -1] ?? 0) }), {
          r: 0,
          k: 0,
        }),
      );
      if (series.data.length === 0) {
        removeChart = () => {};
        replace(chartBox, h('p', { class: 'empty' }, t('noUsage')));
      } else {
        removeChart = stackedBars(
          chartBox,
          days,
          series.data.map((g) => ({ label: g[series.by], values: pick(g.tokens) })),
          formatNumber,
          (i) => void showDay(days[i]!),
        );
      }
      const dayRows = days
        .map((d, i) => ({ d, ...perDay[i]! }))
        .filter((x) => x.r > 0)
        .reverse()
        .map((x) => [
          x.d,
          formatNumber(x.r),
          formatNumber(x.k),
          h('button', { type: 'button', 'data-day': x.d, onclick: () => void showDay(x.d) }, t('showRequests', { day: x.d })),
        ]);
      replace(
        tables,
        h(
          'section',
          {},
          h('h2', {}, t('perDay')),
          dayRows.length === 0
            ? h('p', { class: 'empty' }, t('noUsage'))
            : table(t('perDay'), [t('day'), t('requests'), t('tokens'), t('actions')], dayRows, 'numbers'),
        ),
        reportTable(t('perKey'), 'key', byKey, 'key'),
        reportTable(t('perModel'), 'model', byModel, 'model'),
      );
    } catch (err) {
      if (alive) error.textContent = err instanceof Error ? err.message : String(err);
    }
  }

  /** A day's requests, newest first, with filters; "load more" pages on. */
  async function showDay(day: string): Promise<void> {
    const filters = { key: '', model: '', status: '' };
    const select = (name: 'key' | 'model' | 'status', label: Key, options: { value: string; label: string }[]): HTMLElement => {
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
        replace(
          rowsBox,
          rows.length === 0
            ? h('p', { class: 'empty' }, t('noRequests'))
            : table(
                t('requestsOf', { day }),
                [
                  t('time'),
                  t('key'),
                  t('model'),
                  t('route'),
                  t('status'),
                  t('outcome'),
                  t('promptTokens'),
                  t('completionTokens'),
                  t('duration'),
                ],
                rows.map((r) => [
                  formatTime(r.ts, true),
                  r.key_name ?? '—',
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

  void load();
  return () => {
    alive = false;
    removeChart();
  };
}
