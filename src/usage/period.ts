// Report periods as people write them, for `llm-gateway usage` and GET /admin/usage:
// --since 7d (the last 7 days), 24h, 2026-11-01 (from that day's start, UTC), or an ISO time;
// --until 2026-11-30 (through that day, UTC) or an ISO time.
import type { GroupBy, UsageFilter } from './store.js';

const UNIT_MS: Record<string, number> = { m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
const DAY_MS = 86_400_000;

function parseMoment(text: string, what: string, endOfDay: boolean, now: number): number {
  const value = text.trim();
  const ago = /^(\d+)\s*([mhdw])$/i.exec(value);
  if (ago) return now - Number(ago[1]) * UNIT_MS[ago[2]!.toLowerCase()]!;
  if (/^\d{4}-\d{2}-\d{2}$/.test(value)) {
    const start = Date.parse(`${value}T00:00:00Z`);
    if (!Number.isNaN(start)) return endOfDay ? start + DAY_MS : start;
  } else if (/^\d{4}-\d{2}-\d{2}T/.test(value)) {
    const at = Date.parse(value);
    if (!Number.isNaN(at)) return at;
  }
  throw new Error(`${what} "${text}" is not a time: use 7d, 24h, 90m, a date YYYY-MM-DD or an ISO time`);
}

export const GROUPS: readonly GroupBy[] = ['day', 'key', 'model'];

export interface PeriodInput {
  key?: string | undefined;
  since?: string | undefined;
  until?: string | undefined;
}

/** The filter for a report; throws Error with a sentence naming the bad part. */
export function usageFilter(input: PeriodInput, now = Date.now()): UsageFilter {
  const filter: UsageFilter = {};
  if (input.key !== undefined && input.key !== '') filter.key = input.key;
  if (input.since !== undefined && input.since !== '') filter.since = parseMoment(input.since, 'since', false, now);
  if (input.until !== undefined && input.until !== '') filter.until = parseMoment(input.until, 'until', true, now);
  if (filter.since !== undefined && filter.until !== undefined && filter.until <= filter.since) throw new Error('until must be after since');
  return filter;
}

export function groupBy(text: string | undefined): GroupBy {
  if (text === undefined || text === '') return 'day';
  if ((GROUPS as readonly string[]).includes(text)) return text as GroupBy;
  throw new Error(`by must be one of ${GROUPS.join(', ')}, got "${text}"`);
}
