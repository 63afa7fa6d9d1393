// The usage table on PostgreSQL (GATEWAY_DATABASE_URL): the same inserts and reports as the SQLite
// UsageStore (usage/store.ts), the same rows and shapes for the same data, answered with promises.
//
// A batch is ONE statement: the columns as 21 arrays through unnest() (a prepared statement whose
// text does not depend on the batch size). Measured on this machine, 250 records a batch: unnest
// ~10-15 ms and ~2 ms of Node CPU, COPY (pg-copy-streams, a dependency more) ~13 ms and ~4 ms,
// a multi-row VALUES with 5,250 parameters ~30-50 ms; the commit's fsync is most of it.
// The same statement records the batch's id in usage_batches (ON CONFLICT DO NOTHING): a batch
// written before, or being written by a statement not yet committed, inserts no row, so a batch
// replayed from the spool (usage/spool.ts) after a crash between its commit and its file's
// removal is written once.
//
// SQLite's reports translated: days by to_char(to_timestamp(ts / 1000) AT TIME ZONE 'UTC') as
// strftime('%Y-%m-%d', ts / 1000, 'unixepoch'); sums cast to BIGINT (read as numbers, storage/pg.ts)
// where PostgreSQL would give NUMERIC; text ordered byte-wise (COLLATE "C", SQLite's BINARY).
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { seederFor, userSeederFor, type Seeder, type UserSeeder } from '../admission/budgets.js';
import type { UsageRecord } from './exchange.js';
import type { UsageRecorder } from './recorder.js';
import {
  NO_USER,
  UsageStore,
  type GroupBy,
  type RequestFilter,
  type RequestRow,
  type SeriesCell,
  type UsageFilter,
  type UsageRow,
  type UsageTable,
} from './store.js';

/** The usage table's columns a record fills, in the order usageColumns() gives them. */
const COLUMNS =
  'ts, request_id, key_id, key_name, route, model, status, streamed, prompt_tokens, cached_tokens, completion_tokens, ' +
  'estimated, ttft_ms, duration_ms, bytes_in, bytes_out, client_ip, user_agent, outcome, end_user, cost';
const TYPES = [
  'bigint',
  'text',
  'text',
  'text',
  'text',
  'text',
  'integer',
  'integer',
  'bigint',
  'bigint',
  'bigint',
  'integer',
  'float8',
  'float8',
  'bigint',
  'bigint',
  'text',
  'text',
  'text',
  'text',
  'float8',
];

/**
 * Each column's value as PostgreSQL takes it, where SQLite took anything: TEXT refuses a NUL
 * (a key holder's body `model` is recorded verbatim), BIGINT/INTEGER a fraction or a number beyond
 * their range (an upstream's usage object). One such value made the whole batch fail (22021,
 * 22P02, 22003) and be set aside with every other key's records in it.
 */
const MAX_INTEGER = 2_147_483_647;
function fitInteger(max: number): (v: unknown) => unknown {
  return (v) => {
    if (typeof v !== 'number' || (Number.isInteger(v) && v <= max && v >= -max)) return v;
    return Number.isNaN(v) ? null : Math.max(-max, Math.min(max, Math.round(v)));
  };
}
const fitText = (v: unknown): unknown => (typeof v === 'string' && v.includes('\u0000') ? v.replaceAll('\u0000', '\ufffd') : v);
const fitAny = (v: unknown): unknown => v;
const FIT = TYPES.map((t) =>
  t === 'text' ? fitText : t === 'bigint' ? fitInteger(Number.MAX_SAFE_INTEGER) : t === 'integer' ? fitInteger(MAX_INTEGER) : fitAny,
);

/** One record as the usage table's columns (COLUMNS' order): what a batch inserts and the spool keeps. */
export type UsageColumns = (string | number | null)[];

/** Where each value a spooled batch's budget count needs sits in UsageColumns. */
export const COLUMN = { ts: 0, keyId: 2, promptTokens: 8, completionTokens: 10, endUser: 19 } as const;

export function usageColumns(r: UsageRecord): UsageColumns {
  return [
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
  ];
}

const INSERT_BATCH = `WITH batch AS (INSERT INTO usage_batches (id, at) VALUES ($22, $23) ON CONFLICT (id) DO NOTHING RETURNING id)
  INSERT INTO usage (${COLUMNS}) SELECT u.* FROM unnest(${TYPES.map((t, i) => `$${i + 1}::${t}[]`).join(', ')}) AS u
  WHERE EXISTS (SELECT 1 FROM batch)`;

const GROUP_SQL: Record<GroupBy, string> = {
  day: "to_char(to_timestamp(ts / 1000) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
  key: "coalesce(key_name, '(no key)')",
  model: "coalesce(model, '(none)')",
  user: `coalesce(end_user, '${NO_USER}')`,
};

const TOKENS = '(coalesce(sum(prompt_tokens), 0) + coalesce(sum(completion_tokens), 0))::bigint';

/** The filter's conditions, with their values appended to `params` ($1, $2, …). */
function conditions(filter: UsageFilter, params: unknown[]): string[] {
  const p = (v: unknown): string => `$${params.push(v)}`;
  const parts: string[] = [];
  if (filter.key !== undefined) {
    const k = p(filter.key);
    parts.push(`(key_name = ${k} OR key_id = ${k})`);
  }
  if (filter.user !== undefined) parts.push(filter.user === NO_USER ? 'end_user IS NULL' : `end_user = ${p(filter.user)}`);
  if (filter.since !== undefined) parts.push(`ts >= ${p(filter.since)}`);
  if (filter.until !== undefined) parts.push(`ts < ${p(filter.until)}`);
  return parts;
}

function whereOf(parts: string[]): string {
  return parts.length === 0 ? '' : `WHERE ${parts.join(' AND ')}`;
}

export class PgUsageStore implements UsageTable {
  readonly #pool: pg.Pool;

  constructor(pool: pg.Pool) {
    this.#pool = pool;
  }

  insert(records: readonly UsageRecord[]): Promise<void> {
    if (records.length === 0) return Promise.resolve();
    return this.insertBatch(records.map(usageColumns), randomUUID()).then(() => undefined);
  }

  /**
   * Writes one batch, all or nothing, unless a batch with this id was written before: then
   * nothing, and false. Rejects when PostgreSQL cannot be reached or the statement times out.
   */
  async insertBatch(rows: readonly UsageColumns[], id: string): Promise<boolean> {
    if (rows.length === 0) return true;
    const values: unknown[] = FIT.map((fit, c) => rows.map((r) => fit(r[c])));
    values.push(id, Date.now());
    const res = await this.#pool.query({ name: 'llmgw-usage-batch', text: INSERT_BATCH, values });
    return res.rowCount === rows.length;
  }

  /** Forgets the ids of batches written before `before` (ms): a spool older than that is not expected. */
  async pruneBatches(before: number): Promise<void> {
    await this.#pool.query('DELETE FROM usage_batches WHERE at < $1', [before]);
  }

  async report(filter: UsageFilter, by: GroupBy): Promise<UsageRow[]> {
    const params: unknown[] = [];
    const where = whereOf(conditions(filter, params));
    const [keyColumn, groups, order] =
      by === 'user' ? [`${GROUP_SQL.key} AS "key", `, '1, 2', '"key" COLLATE "C", "group" COLLATE "C"'] : ['', '1', '"group" COLLATE "C"'];
    const res = await this.#pool.query<Omit<UsageRow, 'totalTokens'>>(
      `SELECT * FROM (
         SELECT ${keyColumn}${GROUP_SQL[by]} AS "group", count(*) AS requests,
           coalesce(sum(prompt_tokens), 0)::bigint AS "promptTokens", coalesce(sum(cached_tokens), 0)::bigint AS "cachedTokens",
           coalesce(sum(completion_tokens), 0)::bigint AS "completionTokens", sum(estimated) AS estimated,
           sum(CASE WHEN outcome = 'ok' THEN 0 ELSE 1 END) AS errors, sum(cost) AS cost
         FROM usage ${where} GROUP BY ${groups}) r
       ORDER BY ${order}`,
      params,
    );
    return res.rows.map((r) => ({ ...r, totalTokens: r.promptTokens + r.completionTokens }));
  }

  async records(filter: UsageFilter, limit = 100_000): Promise<Record<string, unknown>[]> {
    const params: unknown[] = [];
    const where = whereOf(conditions(filter, params));
    params.push(limit);
    const res = await this.#pool.query<Record<string, unknown>>(
      `SELECT * FROM usage ${where} ORDER BY ts, id LIMIT $${params.length}`,
      params,
    );
    return res.rows;
  }

  async series(filter: UsageFilter, by: 'key' | 'model'): Promise<SeriesCell[]> {
    const params: unknown[] = [];
    const where = whereOf(conditions(filter, params));
    const res = await this.#pool.query<SeriesCell>(
      `SELECT * FROM (
         SELECT ${GROUP_SQL.day} AS day, ${GROUP_SQL[by]} AS "group", count(*) AS requests, ${TOKENS} AS tokens
         FROM usage ${where} GROUP BY 1, 2) s
       ORDER BY day COLLATE "C", "group" COLLATE "C"`,
      params,
    );
    return res.rows;
  }

  async requests(filter: RequestFilter, limit: number): Promise<RequestRow[]> {
    const params: unknown[] = [];
    const p = (v: unknown): string => `$${params.push(v)}`;
    const parts = conditions(filter, params);
    if (filter.model !== undefined) parts.push(`coalesce(model, '(none)') = ${p(filter.model)}`);
    if (filter.status === 'ok') parts.push("outcome = 'ok'");
    else if (filter.status === 'error') parts.push("outcome <> 'ok'");
    else if (filter.status !== undefined) parts.push(`status = ${p(filter.status)}`);
    if (filter.before !== undefined) {
      const ts = p(filter.before.ts);
      parts.push(`(ts < ${ts} OR (ts = ${ts} AND id < ${p(filter.before.id)}))`);
    }
    const res = await this.#pool.query<RequestRow>(
      `SELECT id, ts, request_id AS "requestId", key_id AS "keyId", key_name AS "keyName", route, model, status, outcome, streamed,
         prompt_tokens AS "promptTokens", cached_tokens AS "cachedTokens", completion_tokens AS "completionTokens", estimated,
         ttft_ms AS "ttftMs", duration_ms AS "durationMs", client_ip AS "clientIp", user_agent AS "userAgent",
         end_user AS "endUser", cost
       FROM usage ${whereOf(parts)} ORDER BY ts DESC, id DESC LIMIT ${p(limit)}`,
      params,
    );
    return res.rows;
  }

  async tokensByKey(since: number): Promise<Map<string, number>> {
    const res = await this.#pool.query<{ keyId: string; tokens: number }>(
      `SELECT key_id AS "keyId", ${TOKENS} AS tokens FROM usage WHERE ts >= $1 AND key_id IS NOT NULL GROUP BY key_id`,
      [since],
    );
    return new Map(res.rows.map((r) => [r.keyId, r.tokens]));
  }

  async tokensSince(keyId: string, since: number, user: string | null = null): Promise<number> {
    const sql = `SELECT ${TOKENS} AS tokens FROM usage WHERE key_id = $1 AND ts >= $2`;
    const res =
      user === null
        ? await this.#pool.query<{ tokens: number }>(sql, [keyId, since])
        : await this.#pool.query<{ tokens: number }>(`${sql} AND end_user = $3`, [keyId, since, user]);
    return res.rows[0]?.tokens ?? 0;
  }

  async tokensByUserSince(keyId: string, since: number): Promise<Map<string, number>> {
    const res = await this.#pool.query<{ user: string; tokens: number }>(
      `SELECT end_user AS "user", ${TOKENS} AS tokens FROM usage
       WHERE key_id = $1 AND ts >= $2 AND end_user IS NOT NULL GROUP BY end_user HAVING ${TOKENS} > 0`,
      [keyId, since],
    );
    return new Map(res.rows.map((r) => [r.user, r.tokens]));
  }
}

/** A budget seed on PostgreSQL: a query, then the records not yet written (see UsageRecorder.counted). */
export type AsyncSeeder = (keyId: string, since: number, user: string | null) => Promise<number>;
export type AsyncUserSeeder = (keyId: string, since: number) => Promise<Map<string, number>>;

/**
 * Where a budget's count starts (admission/budgets.ts), on either engine: SQLite's seeders as they
 * are, or on PostgreSQL the sum in the table plus the records the recorder has not written yet
 * (pending, being written, or spooled), read while no batch commits, so each record counts once.
 */
export function budgetSeeder(store: UsageTable | null, recorder: UsageRecorder | null): Seeder | AsyncSeeder | null {
  if (store instanceof PgUsageStore)
    return (keyId, since, user) =>
      counted(recorder, async () => (await store.tokensSince(keyId, since, user)) + (recorder?.pendingTokens(keyId, since, user) ?? 0));
  return store instanceof UsageStore ? seederFor(store, recorder) : null;
}

/** budgetSeeder for every end user under a key at once (one grouped query per key and period). */
export function budgetUserSeeder(store: UsageTable | null, recorder: UsageRecorder | null): UserSeeder | AsyncUserSeeder | null {
  if (store instanceof PgUsageStore)
    return (keyId, since) =>
      counted(recorder, async () => {
        const users = await store.tokensByUserSince(keyId, since);
        if (recorder !== null) for (const [u, n] of recorder.pendingByUser(keyId, since)) users.set(u, (users.get(u) ?? 0) + n);
        return users;
      });
  return store instanceof UsageStore ? userSeederFor(store, recorder) : null;
}

function counted<T>(recorder: UsageRecorder | null, read: () => Promise<T>): Promise<T> {
  return recorder === null ? read() : recorder.counted(read);
}
