// `llm-gateway usage …`: who used how many tokens, from the usage table (PostgreSQL with
// GATEWAY_DATABASE_URL, else the SQLite file GATEWAY_DB; the same output for the same rows). A readable
// table with totals by default; --csv for billing spreadsheets; --json for scripts. A COST column
// appears when some request of the selection has a stored cost (GATEWAY_PRICES was set when it
// ran): the sum of those, never recomputed with today's prices.
import type { ParseArgsConfig } from 'node:util';
import { SETTINGS, readSetting } from '../config.js';
import { groupBy, usageFilter } from '../usage/period.js';
import { roundCost } from '../usage/prices.js';
import { openDatabase } from '../storage/db.js';
import { UsageStore, usageTotal, type GroupBy, type UsageFilter, type UsageRow } from '../usage/store.js';
import { UsageError, commandLine, databaseUrl, dbPath, openKeyDatabase, run } from './common.js';
import { columnWidths, table } from './format.js';

const HELP = `Usage: llm-gateway usage [options]

Token usage per day, key, model or end user, as llama-server reported it (PostgreSQL with
GATEWAY_DATABASE_URL, else GATEWAY_DB; .env is read), and its cost when GATEWAY_PRICES was set.

Options:
  --key NAME       only this key (name or id)
  --user ID        only this end user ("(none)": requests that named none)
  --since WHEN     from: 7d, 24h, 90m, a date YYYY-MM-DD (UTC) or an ISO time (default: all)
  --until WHEN     to: a date (through that day, UTC), an ISO time, or 7d (7 days ago)
  --by day|key|model|user   group rows (default: day); user: per end user inside each key
  --csv            CSV with a header row (for billing)
  --json           JSON
  --db PATH        database file (default: GATEWAY_DB or ./data/gateway.db; wins over
                   GATEWAY_DATABASE_URL)
  -h, --help       show help

"est." counts requests whose client left mid-stream: their completion tokens are the chunks
delivered, not llama-server's count. An end user is the client's word (GATEWAY_END_USER), for
accounting only.
`;

const OPTIONS = {
  key: { type: 'string' },
  user: { type: 'string' },
  since: { type: 'string' },
  until: { type: 'string' },
  by: { type: 'string' },
  csv: { type: 'boolean' },
  json: { type: 'boolean' },
  db: { type: 'string' },
} as const satisfies ParseArgsConfig['options'];

const COLUMNS = ['requests', 'prompt_tokens', 'cached_tokens', 'completion_tokens', 'total_tokens', 'estimated', 'errors'] as const;

function cells(r: UsageRow): number[] {
  return [r.requests, r.promptTokens, r.cachedTokens, r.completionTokens, r.totalTokens, r.estimated, r.errors];
}

/**
 * A CSV cell. A text cell starting with = + - @ (or a tab / CR) is a formula to a spreadsheet, and
 * end users are the client's word: `=HYPERLINK(…)` must stay text, so such a cell gets a leading
 * ' (OWASP's advice; the spreadsheet shows the value, the quote only marks it as text).
 */
function csvCell(v: string | number): string {
  let s = String(v);
  if (typeof v === 'string' && /^[=+\-@\t\r]/.test(s)) s = `'${s}`;
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** GATEWAY_PRICE_CURRENCY (.env read by dbPath), for the cost column's name. */
function priceCurrency(): string {
  try {
    return readSetting(SETTINGS.priceCurrency, process.env);
  } catch {
    return SETTINGS.priceCurrency.fallback;
  }
}

function csvCost(cost: number | null): string {
  return cost === null ? '' : String(roundCost(cost));
}

function tableCost(cost: number | null): string {
  return cost === null ? '-' : cost.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 6 });
}

export function usageCommand(argv: string[]): Promise<number> {
  return run('llm-gateway usage --help', () => {
    const args = commandLine(argv, OPTIONS, HELP);
    if (args === null) return 0;
    const { values } = args;
    if (values.csv === true && values.json === true) throw new UsageError('choose one of --csv and --json');
    let filter;
    let by;
    try {
      filter = usageFilter({ key: values.key, user: values.user, since: values.since, until: values.until });
      by = groupBy(values.by);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
    // The SQLite file is read and the report written at once (no await: what tests and scripts saw).
    if (values.db !== undefined || databaseUrl() === '') {
      const db = openDatabase(dbPath(values.db));
      let rows: UsageRow[];
      try {
        rows = new UsageStore(db).report(filter, by);
      } finally {
        db.close();
      }
      return printReport(rows, by, filter, values);
    }
    return openKeyDatabase(undefined).then(async (db) => {
      try {
        return printReport(await db.usage.report(filter, by), by, filter, values);
      } finally {
        await db.close();
      }
    });
  });
}

/** The report as a table with a TOTAL row, CSV or JSON. */
function printReport(rows: UsageRow[], by: GroupBy, filter: UsageFilter, values: { csv?: boolean; json?: boolean }): number {
  const total = usageTotal(rows);
  const priced = total.cost !== null;
  const currency = priced ? priceCurrency() : '';
  // by user: the key is a column of its own, before the end user.
  const byUser = by === 'user';
  if (values.json === true) {
    const shape = (r: UsageRow): Record<string, unknown> => ({
      ...(byUser ? { key: r.key } : {}),
      [by]: r.group,
      ...Object.fromEntries(COLUMNS.map((c, i) => [c, cells(r)[i]])),
      ...(priced ? { cost: roundCost(r.cost) } : {}),
    });
    console.log(
      JSON.stringify(
        {
          by,
          since: filter.since ?? null,
          until: filter.until ?? null,
          ...(priced ? { currency } : {}),
          data: rows.map(shape),
          total: { ...shape(total), key: undefined, [by]: undefined },
        },
        null,
        2,
      ),
    );
    return 0;
  }
  if (values.csv === true) {
    const lines = [[...(byUser ? ['key'] : []), by, ...COLUMNS, ...(priced ? [`cost_${currency.toLowerCase()}`] : [])].join(',')];
    for (const r of rows)
      lines.push(
        [...(byUser ? [csvCell(r.key ?? '')] : []), csvCell(r.group), ...cells(r), ...(priced ? [csvCost(r.cost)] : [])].join(','),
      );
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  }
  if (rows.length === 0) {
    console.log('No usage recorded for this selection.');
    return 0;
  }
  const header = [
    ...(byUser ? ['KEY'] : []),
    by.toUpperCase(),
    'REQUESTS',
    'PROMPT',
    'CACHED',
    'COMPLETION',
    'TOTAL',
    'EST.',
    'ERRORS',
    ...(priced ? [`COST (${currency})`] : []),
  ];
  const body = [...rows, total].map((r) => [
    ...(byUser ? [r === total ? '' : (r.key ?? '')] : []),
    r.group,
    ...cells(r).map((n) => n.toLocaleString('en-US')),
    ...(priced ? [tableCost(r.cost)] : []),
  ]);
  const all = [header, ...body];
  const first = byUser ? 1 : 0;
  const lines = table(all, { right: (c) => c > first });
  const rule = columnWidths(all)
    .map((w) => '-'.repeat(w))
    .join('  ');
  const out = [...lines.slice(0, -1), rule, lines.at(-1)!];
  console.log(out.join('\n'));
  return 0;
}
