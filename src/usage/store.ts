// The `usage` table: one row per request, written in batches (never on the request path), and the
// reports the CLI and the admin API read from it.
import type Database from 'better-sqlite3';
import type { UsageRecord } from './exchange.js';

/** user: per end user inside each key (usage/end-user.ts): rows carry the key too. */
export type GroupBy = 'day' | 'key' | 'model' | 'user';

/** How reports name the requests that named no end user. */
export const NO_USER = '(none)';

export interface UsageFilter {
  /** key name or id */
  key?: string;
  /** end user (exact; `(none)` for requests that named none) */
  user?: string;
  /** ms since epoch, inclusive */
  since?: number;
  /** ms since epoch, exclusive */
  until?: number;
}

export interface UsageRow {
  /** the group: a day (YYYY-MM-DD, UTC), a key name, a model, or an end user (`(none)`) */
  group: string;
  /** by user: the key the end user is under (the same id under two keys is two people) */
  key?: string;
  requests: number;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  totalTokens: number;
  /** requests whose completion tokens are an estimate (client left mid-stream) */
  estimated: number;
  errors: number;
  /** sum of the stored costs; null when no request of the group has one (no prices set) */
  cost: number | null;
}

/** The rows of a report added up, as its TOTAL row (the CLI's last line, the admin API's `total`). */
export function usageTotal(rows: readonly UsageRow[]): UsageRow {
  const total: UsageRow = {
    group: 'TOTAL',
    requests: 0,
    promptTokens: 0,
    cachedTokens: 0,
    completionTokens: 0,
    totalTokens: 0,
    estimated: 0,
    errors: 0,
    cost: null,
  };
  for (const r of rows) {
    if (r.cost !== null) total.cost = (total.cost ?? 0) + r.cost;
    total.requests += r.requests;
    total.promptTokens += r.promptTokens;
    total.cachedTokens += r.cachedTokens;
    total.completionTokens += r.completionTokens;
    total.totalTokens += r.totalTokens;
    total.estimated += r.estimated;
    total.errors += r.errors;
  }
  return total;
}

const GROUP_SQL: Record<GroupBy, string> = {
  day: "strftime('%Y-%m-%d', ts / 1000, 'unixepoch')",
  key: "coalesce(key_name, '(no key)')",
  model: "coalesce(model, '(none)')",
  user: `coalesce(end_user, '${NO_USER}')`,
};

/** One cell of a per-day series: a day's requests and tokens for one key or model. */
export interface SeriesCell {
  /** YYYY-MM-DD, UTC */
  day: string;
  group: string;
  requests: number;
  tokens: number;
}

/** What a list of single requests is narrowed to (the admin console's drill-down). */
export interface RequestFilter extends UsageFilter {
  model?: string;
  /** 'ok', 'error' (any other outcome), or an HTTP status */
  status?: 'ok' | 'error' | number;
  /** start after this row (the previous page's last `ts` and `id`), newest first */
  before?: { ts: number; id: number };
}

/** One request as the console lists it: no bodies (the table holds none). */
export interface RequestRow {
  id: number;
  ts: number;
  requestId: string;
  keyId: string | null;
  keyName: string | null;
  route: string;
  model: string | null;
  status: number;
  outcome: string;
  streamed: number;
  promptTokens: number | null;
  cachedTokens: number | null;
  completionTokens: number | null;
  estimated: number;
  ttftMs: number | null;
  durationMs: number;
  clientIp: string | null;
  userAgent: string | null;
  endUser: string | null;
  cost: number | null;
}

/**
 * The usage table on either engine, as its callers (reports, the admin API, the CLI, budget seeds)
 * see it: UsageStore on the SQLite file answers at once, PgUsageStore (usage/pg-usage-store.ts) on
 * PostgreSQL with promises; the same rows and shapes for the same data. Callers `await`.
 */
export interface UsageTable {
  insert(records: readonly UsageRecord[]): void | Promise<void>;
  report(filter: UsageFilter, by: GroupBy): UsageRow[] | Promise<UsageRow[]>;
  records(filter: UsageFilter, limit?: number): Record<string, unknown>[] | Promise<Record<string, unknown>[]>;
  series(filter: UsageFilter, by: 'key' | 'model'): SeriesCell[] | Promise<SeriesCell[]>;
  requests(filter: RequestFilter, limit: number): RequestRow[] | Promise<RequestRow[]>;
  tokensByKey(since: number): Map<string, number> | Promise<Map<string, number>>;
  tokensSince(keyId: string, since: number, user?: string | null): number | Promise<number>;
  tokensByUserSince(keyId: string, since: number): Map<string, number> | Promise<Map<string, number>>;
}

export class UsageStore implements UsageTable {
  readonly #db: Database.Database;
  readonly #insert: Database.Statement;
  readonly #insertMany: (records: readonly UsageRecord[]) => void;

  constructor(db: Database.Database) {
    this.#db = db;
    // The connection is tuned where it is opened (storage/db.ts); a store sets nothing on it.
    // Positional parameters: binding by name costs a lookup per column per row.
    this.#insert = db.prepare(
      `INSERT INTO usage (ts, request_id, key_id, key_name, route, model, status, streamed, prompt_tokens, cached_tokens,
         completion_tokens, estimated, ttft_ms, duration_ms, bytes_in, bytes_out, client_ip, user_agent, outcome, end_user, cost)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.#insertMany = db.transaction((records: readonly UsageRecord[]) => {
      for (const r of records) {
        this.#insert.run(
          r.ts,
          r.requestId,
          r.keyId,
          r.keyName,
          r.route,
          r.model,
          r.status,
          r.streamed ? 1 : 0,
          r.promptTokens,
          r.cachedTokens,
          r.completionTokens,
          r.estimated ? 1 : 0,
          r.ttftMs,
          r.durationMs,
          r.bytesIn,
          r.bytesOut,
          r.clientIp,
          r.userAgent,
          r.outcome,
          r.endUser ?? null,
          r.cost ?? null,
        );
      }
    });
  }

  insert(records: readonly UsageRecord[]): void {
    if (records.length > 0) this.#insertMany(records);
  }

  #where(filter: UsageFilter): { sql: string; params: Record<string, unknown> } {
    const parts: string[] = [];
    const params: Record<string, unknown> = {};
    if (filter.key !== undefined) {
      parts.push('(key_name = @key OR key_id = @key)');
      params.key = filter.key;
    }
    if (filter.user !== undefined) {
      if (filter.user === NO_USER) parts.push('end_user IS NULL');
      else {
        parts.push('end_user = @user');
        params.user = filter.user;
      }
    }
    if (filter.since !== undefined) {
      parts.push('ts >= @since');
      params.since = filter.since;
    }
    if (filter.until !== undefined) {
      parts.push('ts < @until');
      params.until = filter.until;
    }
    return { sql: parts.length === 0 ? '' : `WHERE ${parts.join(' AND ')}`, params };
  }

  /** Totals per group, ordered by group (by user: by key, then end user). */
  report(filter: UsageFilter, by: GroupBy): UsageRow[] {
    const { sql, params } = this.#where(filter);
    // An end user is someone inside one key: the same id under two keys (two apps) is two rows.
    const [keyColumn, groups] = by === 'user' ? [`${GROUP_SQL.key} AS key, `, '1, 2'] : ['', '1'];
    const rows = this.#db
      .prepare(
        `SELECT ${keyColumn}${GROUP_SQL[by]} AS "group", count(*) AS requests,
           coalesce(sum(prompt_tokens), 0) AS promptTokens, coalesce(sum(cached_tokens), 0) AS cachedTokens,
           coalesce(sum(completion_tokens), 0) AS completionTokens, sum(estimated) AS estimated,
           sum(CASE WHEN outcome = 'ok' THEN 0 ELSE 1 END) AS errors, sum(cost) AS cost
         FROM usage ${sql} GROUP BY ${groups} ORDER BY ${groups}`,
      )
      .all(params) as Omit<UsageRow, 'totalTokens'>[];
    return rows.map((r) => ({ ...r, totalTokens: r.promptTokens + r.completionTokens }));
  }

  /** Every record matching the filter, oldest first (for --json/--csv exports of single requests). */
  records(filter: UsageFilter, limit = 100_000): Record<string, unknown>[] {
    const { sql, params } = this.#where(filter);
    return this.#db.prepare(`SELECT * FROM usage ${sql} ORDER BY ts, id LIMIT @limit`).all({ ...params, limit }) as Record<
      string,
      unknown
    >[];
  }

  /** Requests and tokens per day and key (or model), ordered by day then group: the console's chart. */
  series(filter: UsageFilter, by: 'key' | 'model'): SeriesCell[] {
    const { sql, params } = this.#where(filter);
    return this.#db
      .prepare(
        `SELECT ${GROUP_SQL.day} AS day, ${GROUP_SQL[by]} AS "group", count(*) AS requests,
           coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0) AS tokens
         FROM usage ${sql} GROUP BY 1, 2 ORDER BY 1, 2`,
      )
      .all(params) as SeriesCell[];
  }

  /**
   * Single requests, newest first, `limit` at most (the usage_ts index gives the order: ts, then
   * row id). Page on with `before` set to the last row's ts and id.
   */
  requests(filter: RequestFilter, limit: number): RequestRow[] {
    const { sql, params } = this.#where(filter);
    const parts = sql === '' ? [] : [sql.slice('WHERE '.length)];
    if (filter.model !== undefined) {
      parts.push("coalesce(model, '(none)') = @model");
      params.model = filter.model;
    }
    if (filter.status === 'ok') parts.push("outcome = 'ok'");
    else if (filter.status === 'error') parts.push("outcome <> 'ok'");
    else if (filter.status !== undefined) {
      parts.push('status = @status');
      params.status = filter.status;
    }
    if (filter.before !== undefined) {
      parts.push('(ts < @beforeTs OR (ts = @beforeTs AND id < @beforeId))');
      params.beforeTs = filter.before.ts;
      params.beforeId = filter.before.id;
    }
    return this.#db
      .prepare(
        `SELECT id, ts, request_id AS requestId, key_id AS keyId, key_name AS keyName, route, model, status, outcome, streamed,
           prompt_tokens AS promptTokens, cached_tokens AS cachedTokens, completion_tokens AS completionTokens, estimated,
           ttft_ms AS ttftMs, duration_ms AS durationMs, client_ip AS clientIp, user_agent AS userAgent,
           end_user AS endUser, cost
         FROM usage ${parts.length === 0 ? '' : `WHERE ${parts.join(' AND ')}`} ORDER BY ts DESC, id DESC LIMIT @limit`,
      )
      .all({ ...params, limit }) as RequestRow[];
  }

  /** Tokens (prompt + completion) per key id since `since`, for `keys list`. */
  tokensByKey(since: number): Map<string, number> {
    const rows = this.#db
      .prepare(
        'SELECT key_id AS keyId, coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0) AS tokens FROM usage WHERE ts >= ? AND key_id IS NOT NULL GROUP BY key_id',
      )
      .all(since) as { keyId: string; tokens: number }[];
    return new Map(rows.map((r) => [r.keyId, r.tokens]));
  }

  /**
   * Tokens (prompt + completion) of one key since `since` (ms), and of one end user under it when
   * `user` is given: where a budget's count starts (admission/budgets.ts), and `keys show`. Index
   * usage_key_ts; asked once per key and period, so the statement is not kept.
   */
  tokensSince(keyId: string, since: number, user: string | null = null): number {
    const sql =
      'SELECT coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0) AS tokens FROM usage WHERE key_id = ? AND ts >= ?';
    const row = (
      user === null ? this.#db.prepare(sql).get(keyId, since) : this.#db.prepare(`${sql} AND end_user = ?`).get(keyId, since, user)
    ) as { tokens: number };
    return row.tokens;
  }

  /**
   * Tokens of each end user under one key since `since` (users with none left out): where the
   * per-user budgets of a key start, in one pass over the key's rows (index usage_key_ts) per
   * period instead of one per user (admission/budgets.ts).
   */
  tokensByUserSince(keyId: string, since: number): Map<string, number> {
    const rows = this.#db
      .prepare(
        `SELECT end_user AS user, coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0) AS tokens FROM usage
         WHERE key_id = ? AND ts >= ? AND end_user IS NOT NULL GROUP BY end_user HAVING tokens > 0`,
      )
      .all(keyId, since) as { user: string; tokens: number }[];
    return new Map(rows.map((r) => [r.user, r.tokens]));
  }
}
