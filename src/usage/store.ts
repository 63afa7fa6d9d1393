// The `usage` table: one row per request, written in batches (never on the request path), and the
// reports the CLI and the admin API read from it.
import type Database from 'better-sqlite3';
import type { UsageRecord } from './exchange.js';

export type GroupBy = 'day' | 'key' | 'model';

export interface UsageFilter {
  /** key name or id */
  key?: string;
  /** ms since epoch, inclusive */
  since?: number;
  /** ms since epoch, exclusive */
  until?: number;
}

export interface UsageRow {
  /** the group: a day (YYYY-MM-DD, UTC), a key name, or a model */
  group: string;
  requests: number;
  promptTokens: number;
  cachedTokens: number;
  completionTokens: number;
  totalTokens: number;
  /** requests whose completion tokens are an estimate (client left mid-stream) */
  estimated: number;
  errors: number;
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
  };
  for (const r of rows) {
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
};

export class UsageStore {
  readonly #db: Database.Database;
  readonly #insert: Database.Statement;
  readonly #insertMany: (records: readonly UsageRecord[]) => void;

  constructor(db: Database.Database) {
    this.#db = db;
    // The connection is tuned where it is opened (storage/db.ts); a store sets nothing on it.
    // Positional parameters: binding by name costs a lookup per column per row.
    this.#insert = db.prepare(
      `INSERT INTO usage (ts, request_id, key_id, key_name, route, model, status, streamed, prompt_tokens, cached_tokens,
         completion_tokens, estimated, ttft_ms, duration_ms, bytes_in, bytes_out, client_ip, user_agent, outcome)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
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

  /** Totals per group, ordered by group. */
  report(filter: UsageFilter, by: GroupBy): UsageRow[] {
    const { sql, params } = this.#where(filter);
    const rows = this.#db
      .prepare(
        `SELECT ${GROUP_SQL[by]} AS "group", count(*) AS requests,
           coalesce(sum(prompt_tokens), 0) AS promptTokens, coalesce(sum(cached_tokens), 0) AS cachedTokens,
           coalesce(sum(completion_tokens), 0) AS completionTokens, sum(estimated) AS estimated,
           sum(CASE WHEN outcome = 'ok' THEN 0 ELSE 1 END) AS errors
         FROM usage ${sql} GROUP BY 1 ORDER BY 1`,
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

  /** Tokens (prompt + completion) per key id since `since`, for `keys list`. */
  tokensByKey(since: number): Map<string, number> {
    const rows = this.#db
      .prepare(
        'SELECT key_id AS keyId, coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0) AS tokens FROM usage WHERE ts >= ? AND key_id IS NOT NULL GROUP BY key_id',
      )
      .all(since) as { keyId: string; tokens: number }[];
    return new Map(rows.map((r) => [r.keyId, r.tokens]));
  }
}
