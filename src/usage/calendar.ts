// Calendar periods in the operator's time zone (GATEWAY_BUDGET_TZ, issue #15): a day starts at
// local midnight, a week on Monday at 00:00 (ISO 8601, as most of the world's calendars and
// invoices count it), a month on the 1st at 00:00. Never "24 hours" or "30 days": a day across a
// DST change is 23 or 25 hours long, February has 28 or 29 days, and a budget that resets at the
// wrong instant is the bug every hand-rolled one has had.
//
// Intl.DateTimeFormat knows the zones (Node ships full ICU): an instant's local wall time comes
// from formatToParts, and a local wall time's instant from the zone's offsets around it. No
// dependency. A zone whose midnight does not exist on some day (clocks jump 00:00 → 01:00, e.g.
// America/Santiago, Asia/Beirut) starts that day at the jump.
import type { BudgetPeriod } from '../keys/key-budgets.js';

/** Far enough on either side of a wall time to see the offsets before and after any transition. */
const OFFSET_PROBE_MS = 36 * 3_600_000;

/**
 * The zone's name as Intl spells it (`utc` → UTC), or throws RangeError for a name Intl does not
 * know. A link keeps the operator's name: ICU resolves Asia/Kolkata to Asia/Calcutta and
 * Europe/Kyiv to Europe/Kiev, names people should not read back in their 429s and `keys show`.
 */
export function canonicalZone(tz: string): string {
  const resolved = new Intl.DateTimeFormat('en-US', { timeZone: tz }).resolvedOptions().timeZone;
  return resolved.toLowerCase() === tz.toLowerCase() ? resolved : tz;
}

/** A local calendar date: year, month 1-12, day 1-31 (may overflow: Date.UTC normalises). */
interface LocalDate {
  readonly y: number;
  readonly m: number;
  readonly d: number;
}

/** One period's bounds: [start, end) in ms since epoch. */
export interface PeriodBounds {
  readonly start: number;
  readonly end: number;
}

export class Calendar {
  readonly tz: string;
  readonly #format: Intl.DateTimeFormat;
  /** The last bounds computed per period: the hot path asks for the current period again and again. */
  readonly #cache: Record<BudgetPeriod, PeriodBounds> = {
    day: { start: 0, end: 0 },
    week: { start: 0, end: 0 },
    month: { start: 0, end: 0 },
  };

  constructor(tz: string) {
    this.tz = canonicalZone(tz);
    this.#format = new Intl.DateTimeFormat('en-US', {
      timeZone: this.tz,
      hourCycle: 'h23',
      year: 'numeric',
      month: 'numeric',
      day: 'numeric',
      hour: 'numeric',
      minute: 'numeric',
      second: 'numeric',
    });
  }

  /** The period of kind `period` that holds `now`. Allocation-free while `now` stays in the last one asked. */
  bounds(period: BudgetPeriod, now: number): PeriodBounds {
    const cached = this.#cache[period];
    if (now >= cached.start && now < cached.end) return cached;
    const today = this.#localDate(now);
    let first: LocalDate;
    let next: LocalDate;
    if (period === 'day') {
      first = today;
      next = { y: today.y, m: today.m, d: today.d + 1 };
    } else if (period === 'week') {
      // getUTCDay of the local date: 0 Sunday … 6 Saturday; back to Monday.
      const back = (new Date(Date.UTC(today.y, today.m - 1, today.d)).getUTCDay() + 6) % 7;
      first = { y: today.y, m: today.m, d: today.d - back };
      next = { y: today.y, m: today.m, d: today.d - back + 7 };
    } else {
      first = { y: today.y, m: today.m, d: 1 };
      next = { y: today.y, m: today.m + 1, d: 1 };
    }
    const bounds = { start: this.#midnight(first), end: this.#midnight(next) };
    this.#cache[period] = bounds;
    return bounds;
  }

  /** The zone's offset from UTC at `t`, ms (New York in winter: −5 h). */
  offsetMs(t: number): number {
    return this.#wall(t) - t;
  }

  /** The local wall time of `t` read as if it were UTC, ms (so wall − t is the zone's offset at t). */
  #wall(t: number): number {
    let y = 0;
    let mo = 0;
    let d = 0;
    let h = 0;
    let mi = 0;
    let s = 0;
    for (const p of this.#format.formatToParts(t)) {
      if (p.type === 'year') y = Number(p.value);
      else if (p.type === 'month') mo = Number(p.value);
      else if (p.type === 'day') d = Number(p.value);
      else if (p.type === 'hour') h = Number(p.value);
      else if (p.type === 'minute') mi = Number(p.value);
      else if (p.type === 'second') s = Number(p.value);
    }
    return Date.UTC(y, mo - 1, d, h, mi, s) + (((t % 1000) + 1000) % 1000);
  }

  #localDate(t: number): LocalDate {
    const wall = new Date(this.#wall(t));
    return { y: wall.getUTCFullYear(), m: wall.getUTCMonth() + 1, d: wall.getUTCDate() };
  }

  /** The first instant of a local date: its midnight (the earlier one if it happens twice), or the jump over it. */
  #midnight(date: LocalDate): number {
    const wall = Date.UTC(date.y, date.m - 1, date.d);
    let exact = Infinity;
    let latest = -Infinity;
    for (const probe of [wall - OFFSET_PROBE_MS, wall, wall + OFFSET_PROBE_MS]) {
      const t = wall - (this.#wall(probe) - probe);
      if (this.#wall(t) === wall && t < exact) exact = t;
      if (t > latest) latest = t;
    }
    // No instant reads 00:00 there: the clocks jumped over midnight; the day starts at the jump,
    // which is midnight by the offset before it (the smaller offset: the later instant).
    return exact !== Infinity ? exact : latest;
  }
}

/** ISO time of an instant in the calendar's zone with its offset, e.g. 2026-12-01T00:00:00-05:00 (for people). */
export function localIso(calendar: Calendar, t: number): string {
  const offsetMin = Math.round(calendar.offsetMs(t) / 60_000);
  const abs = Math.abs(offsetMin);
  const wall = new Date(t + offsetMin * 60_000).toISOString().slice(0, 19);
  return `${wall}${offsetMin < 0 ? '-' : '+'}${String(Math.floor(abs / 60)).padStart(2, '0')}:${String(abs % 60).padStart(2, '0')}`;
}
