// Usage: tokens per day stacked by key or model over a chosen range (UTC days), the same range per
// day, per key, per model and (when the gateway records them) per end user as tables, with a cost
// column when prices are set; a day's requests (requests.ts, from a bar or a day's button) with
// filters, and CSV exports of what is shown.
import { ApiError, api, type UsageReport, type UsageReportRow, type UsageSeries } from './api.js';
import { stackedBars } from './chart.js';
import { csv, download, h, replace, table } from './dom.js';
import { formatCost, formatNumber, t, type Key } from './i18n.js';
import { costHeading, showDay as showRequests, type Shown } from './requests.js';

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
  let shown: Shown & { days: string[]; series: UsageSeries | null } = {
    days: [],
    series: null,
    keys: [],
    models: [],
    users: [],
    currency: null,
  };
  /** The per-user table's key filter ('' = every key). */
  let userKey = '';
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

  /** A report as a table: its group column(s), tokens, errors, and the cost when prices are set. */
  function reportTable(
    caption: string,
    report: UsageReport,
    groups: readonly { label: Key; of: (r: UsageReportRow) => string }[],
  ): HTMLElement {
    const costs = typeof report.total.cost === 'number' || report.data.some((r) => typeof r.cost === 'number');
    const cost = (c: number | null | undefined): string[] => (costs ? [typeof c === 'number' ? formatCost(c) : '—'] : []);
    const numbers = (r: Pick<UsageReportRow, 'requests' | 'prompt_tokens' | 'completion_tokens' | 'total_tokens'>): string[] => [
      formatNumber(r.requests),
      formatNumber(r.prompt_tokens),
      formatNumber(r.completion_tokens),
      formatNumber(r.total_tokens),
    ];
    return table(
      caption,
      [
        ...groups.map((g) => t(g.label)),
        t('requests'),
        t('promptTokens'),
        t('completionTokens'),
        t('tokens'),
        t('errors'),
        ...(costs ? [costHeading(report.currency ?? null)] : []),
      ],
      [
        ...report.data.map((r) => [...groups.map((g) => g.of(r)), ...numbers(r), formatNumber(r.errors), ...cost(r.cost)]),
        [t('total'), ...groups.slice(1).map(() => ''), ...numbers(report.total), '', ...cost(report.total.cost)],
      ],
      'numbers',
    );
  }

  const section = (caption: string, ...children: HTMLElement[]): HTMLElement =>
    h('section', { 'data-report': caption }, h('h2', {}, caption), ...children);

  /** The per-user report, or null from a gateway that does not group by end user (before #15). */
  async function byUser(q: string): Promise<UsageReport | null> {
    const key = userKey === '' ? '' : `&key=${encodeURIComponent(userKey)}`;
    return api<UsageReport>('GET', `usage?${q}&by=user${key}`).catch((err: unknown) => {
      if (err instanceof ApiError && err.status === 400) return null;
      throw err;
    });
  }

  /** The per-user section: a key filter above the table (one key is often one app with many people). */
  function userSection(q: string, report: UsageReport): HTMLElement {
    const box = h('div', {});
    const draw = (r: UsageReport): void =>
      replace(
        box,
        r.data.length === 0
          ? h('p', { class: 'empty' }, t('noUsage'))
          : reportTable(t('perUser'), r, [
              { label: 'endUser', of: (x) => (x.user === null || x.user === undefined || x.user === '' ? t('noEndUser') : x.user) },
              { label: 'key', of: (x) => x.key ?? '—' },
            ]),
      );
    const keySelect = h(
      'select',
      {
        id: 'user-key',
        onchange: () => {
          userKey = keySelect.value;
          byUser(q).then(
            (r) => r !== null && alive && draw(r),
            (err: unknown) => (error.textContent = err instanceof Error ? err.message : String(err)),
          );
        },
      },
      h('option', { value: '' }, t('allKeys')),
      ...shown.keys.map((k) => h('option', { value: k, selected: k === userKey }, k)),
    );
    draw(report);
    return section(t('perUser'), h('div', { class: 'field inline' }, h('label', { for: 'user-key' }, t('key')), keySelect), box);
  }

  async function load(): Promise<void> {
    const q = `since=${state.range.since}&until=${state.range.until}`;
    replace(chartTitle, t('tokensPerDay', { group: t(state.by === 'key' ? 'byKey' : 'byModel') }));
    try {
      const [series, byKey, byModel, users] = await Promise.all([
        api<UsageSeries>('GET', `usage/series?${q}&by=${state.by}`),
        api<UsageReport>('GET', `usage?${q}&by=key`),
        api<UsageReport>('GET', `usage?${q}&by=model`),
        byUser(q),
      ]);
      if (!alive) return;
      error.textContent = '';
      const days = daysOf(state.range);
      const named = (users?.data ?? []).flatMap((r) => (r.user === null || r.user === undefined || r.user === '' ? [] : [r.user]));
      shown = {
        days,
        series,
        keys: byKey.data.map((r) => r.key ?? ''),
        models: byModel.data.map((r) => r.model ?? ''),
        users: [...new Set(named)].sort(),
        currency: byKey.currency ?? null,
      };
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
          (i) => void showRequests(drill, error, days[i]!, shown),
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
          h(
            'button',
            { type: 'button', 'data-day': x.d, onclick: () => void showRequests(drill, error, x.d, shown) },
            t('showRequests', { day: x.d }),
          ),
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
        section(t('perKey'), reportTable(t('perKey'), byKey, [{ label: 'key', of: (r) => r.key ?? '' }])),
        section(t('perModel'), reportTable(t('perModel'), byModel, [{ label: 'model', of: (r) => r.model ?? '' }])),
        // Only with end users recorded: a gateway with GATEWAY_END_USER=off has nothing to split.
        users === null || shown.users.length === 0 ? null : userSection(q, users),
      );
    } catch (err) {
      if (alive) error.textContent = err instanceof Error ? err.message : String(err);
    }
  }

  void load();
  return () => {
    alive = false;
    removeChart();
  };
}
