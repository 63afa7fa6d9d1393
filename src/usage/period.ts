// Report periods as people write them, for `llm-gateway usage` and GET /admin/usage:
// --since 7d (the last 7 days), 24h, 2026-11-01 (from that day's start, UTC), or an ISO time;
// --until 2026-11-30 (through that day, UTC) or an ISO time.
import type { GroupBy, UsageFilter } from './store.js';

const UNIT_MS: Readonly<Record<string, number>> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };
export const DAY_MS = 86_400_000;

/** A time as people write it, before it is tied to now: a span, a day's start (UTC) or an instant. */
export type TimeText = { readonly span: number } | { readonly day: number } | { readonly at: number };

/**
 * Reads an amount with one of `units` (s m h d w: 90m, 12h, 30d), a date YYYY-MM-DD or an ISO time;
 * null for anything else, NaN where the date does not parse. Shared with key expiry (keys/expiry.ts).
 */
export function readTimeText(text: string, units: string): TimeText | null {
  const value = text.trim();
  const span = new RegExp(`^(\\d+)\\s*([${units}])$`, 'i').exec(value);
  if (span) return { span: Number(span[1]) * UNIT_MS[span[2]!.toLowerCase()]! };
  if (/^\d{4}-\d{2}-\d{2}$/.test(value)) return { day: Date.parse(`${value}T00:00:00Z`) };
  if (/^\d{4}-\d{2}-\d{2}T/.test(value)) return { at: Date.parse(value) };
  return null;
}

function parseMoment(text: string, what: string, endOfDay: boolean, now: number): number {
  const t = readTimeText(text, 'mhdw');
  if (t !== null && 'span' in t) return now - t.span;
  if (t !== null && 'day' in t && !Number.isNaN(t.day)) return endOfDay ? t.day + DAY_MS : t.day;
  if (t !== null && 'at' in t && !Number.isNaN(t.at)) return t.at;
  throw new Error(`${what} "${text}" is not a time: use 7d, 24h, 90m, a date YYYY-MM-DD or an ISO time`);
}

const GROUPS: readonly GroupBy[] = ['day', 'key', 'model', 'user'];

export interface PeriodInput {
  key?: string | undefined;
  /** an end user (usage/end-user.ts), or `(none)` */
  user?: string | undefined;
  since?: string | undefined;
  until?: string | undefined;
}

/** The filter for a report; throws Error with a sentence naming the bad part. */
export function usageFilter(input: PeriodInput, now = Date.now()): UsageFilter {
  const filter: UsageFilter = {};
  if (input.key !== undefined && input.key !== '') filter.key = input.key;
  if (input.user !== undefined && input.user !== '') filter.user = input.user;
  if (input.since !== undefined && input.since !== '') filter.since = parseMoment(input.since, 'since', false, now);
  if (input.until !== undefined && input.until !== '') filter.until = parseMoment(input.until, 'until', true, now);
  if (filter.since !== undefined && filter.until !== undefined && filter.until <= filter.since)
    throw new Error('until must be after since');
  return filter;
}

export function groupBy(text: string | undefined): GroupBy {
  if (text === undefined || text === '') return 'day';
  if ((GROUPS as readonly string[]).includes(text)) return text as GroupBy;
  throw new Error(`by must be one of ${GROUPS.join(', ')}, got "${text}"`);
}
