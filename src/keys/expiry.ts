// "When does this key expire", as people write it: a date (valid through that day, UTC), an
// ISO timestamp, or a duration from now (30d, 12h, 90m, 45s). Shared by the CLI and the admin API;
// read like a report period (usage/period.ts), then checked to be a real day in the future.
import { DAY_MS, readTimeText } from '../usage/period.js';

// Far enough for any key; well inside what a JavaScript Date can hold (8.64e15 ms).
const LATEST = Date.parse('9999-12-31T00:00:00Z');

/** The date part of `value` names a real day (2099-02-30 does not). */
function realDay(value: string, at: number): boolean {
  return !Number.isNaN(at) && new Date(at).toISOString().slice(0, 10) === value.slice(0, 10);
}

/** ms since epoch; throws Error with a sentence for anything else or for a time not in the future. */
export function parseExpiry(text: string, now = Date.now()): number {
  const value = text.trim();
  const t = readTimeText(value, 'smhdw');
  let at: number;
  if (t === null) at = NaN;
  else if ('span' in t) at = now + t.span;
  // A plain date: the key works through the whole of that day (UTC).
  else if ('day' in t) at = realDay(value, t.day) ? t.day + DAY_MS : NaN;
  // Compare the day in UTC only when the time is given in UTC; offsets move the day legitimately.
  else at = /(Z|T\d{2}:\d{2}(:\d{2}(\.\d+)?)?)$/i.test(value) && !realDay(value, t.at) ? NaN : t.at;
  if (Number.isNaN(at)) {
    throw new Error(
      `"${text}" is not a date: use YYYY-MM-DD (valid through that day, UTC), an ISO time like 2026-12-31T18:00:00Z, or a duration like 30d, 12h, 90m`,
    );
  }
  if (at <= now) throw new Error(`"${text}" is in the past`);
  if (at > LATEST) throw new Error(`"${text}" is too far in the future (latest: 9999-12-30)`);
  return at;
}
