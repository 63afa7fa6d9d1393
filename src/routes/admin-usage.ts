// What the admin console (console/, served by admin-console.ts) reads beyond the key operations:
// tokens per day by key or model (the chart), single requests with filters (the drill-down), and
// the gateway's state now (llama-server, the fair queue, tokens per second). Registered by the
// admin API (admin.ts) inside its scope, so the admin key check guards every route here.
// The usage table holds no prompt or answer text; with GATEWAY_LOG_BODIES those are in the audit
// log only, so nothing here ever returns them.
import type { FastifyInstance } from 'fastify';
import { INVALID_PERIOD } from '../errors.js';
import type { KeyIdentity } from '../keys/key-index.js';
import type { SlotQueue } from '../admission/scheduler.js';
import type { UpstreamSet, UpstreamState } from '../upstreams/upstream-set.js';
import type { UsageRecord } from '../usage/exchange.js';
import { DAY_MS, usageFilter } from '../usage/period.js';
import { roundCost } from '../usage/prices.js';
import type { RequestFilter, UsageTable } from '../usage/store.js';

const DAY_PATTERN = '^\\d{4}-\\d{2}-\\d{2}$';
const seriesQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    key: { type: 'string', maxLength: 100 },
    since: { type: 'string', maxLength: 64 },
    until: { type: 'string', maxLength: 64 },
    by: { type: 'string', enum: ['key', 'model'] },
  },
} as const;
const requestsQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    key: { type: 'string', maxLength: 100 },
    user: { type: 'string', maxLength: 200 },
    model: { type: 'string', maxLength: 256 },
    status: { type: 'string', pattern: '^(ok|error|[1-5]\\d\\d)$' },
    day: { type: 'string', pattern: DAY_PATTERN },
    since: { type: 'string', maxLength: 64 },
    until: { type: 'string', maxLength: 64 },
    limit: { type: 'string', pattern: '^([1-9]\\d?|[1-4]\\d\\d|500)$' },
    after: { type: 'string', pattern: '^\\d{1,16}\\.\\d{1,16}$' },
  },
} as const;

const DEFAULT_PAGE = 50;
/** The live view's window: tokens per second are the last minute's tokens / 60. */
const WINDOW_S = 60;

interface SeriesQuery {
  key?: string;
  since?: string;
  until?: string;
  by?: 'key' | 'model';
}

interface RequestsQuery {
  key?: string;
  user?: string;
  model?: string;
  status?: string;
  day?: string;
  since?: string;
  until?: string;
  limit?: string;
  after?: string;
}

/**
 * Tokens and requests per second over the last minute, overall and per key: a ring of 60
 * one-second buckets each, filled by the usage records as they are emitted (no disk read).
 */
class RecentRate {
  readonly #seconds = new Float64Array(WINDOW_S);
  readonly #tokens = new Float64Array(WINDOW_S);
  readonly #requests = new Float64Array(WINDOW_S);
  readonly #byKey = new Map<string, { name: string; seconds: Float64Array; tokens: Float64Array; requests: Float64Array }>();

  add(r: UsageRecord, now: number): void {
    const second = Math.floor(now / 1000);
    const tokens = (r.promptTokens ?? 0) + (r.completionTokens ?? 0);
    RecentRate.#put(this.#seconds, this.#tokens, this.#requests, second, tokens);
    if (r.keyId === null) return;
    let k = this.#byKey.get(r.keyId);
    if (k === undefined) {
      k = {
        name: r.keyName ?? r.keyId,
        seconds: new Float64Array(WINDOW_S),
        tokens: new Float64Array(WINDOW_S),
        requests: new Float64Array(WINDOW_S),
      };
      this.#byKey.set(r.keyId, k);
    }
    k.name = r.keyName ?? r.keyId;
    RecentRate.#put(k.seconds, k.tokens, k.requests, second, tokens);
  }

  static #put(seconds: Float64Array, tokens: Float64Array, requests: Float64Array, second: number, n: number): void {
    const i = second % WINDOW_S;
    if (seconds[i] !== second) {
      seconds[i] = second;
      tokens[i] = 0;
      requests[i] = 0;
    }
    tokens[i]! += n;
    requests[i]! += 1;
  }

  static #sum(seconds: Float64Array, values: Float64Array, now: number): number {
    const oldest = Math.floor(now / 1000) - WINDOW_S;
    let total = 0;
    for (let i = 0; i < WINDOW_S; i++) if (seconds[i]! > oldest) total += values[i]!;
    return total;
  }

  total(now: number): { tokens: number; requests: number } {
    return { tokens: RecentRate.#sum(this.#seconds, this.#tokens, now), requests: RecentRate.#sum(this.#seconds, this.#requests, now) };
  }

  /** Keys with requests in the window (the others are forgotten). */
  keys(now: number): Map<string, { name: string; tokens: number; requests: number }> {
    const out = new Map<string, { name: string; tokens: number; requests: number }>();
    for (const [id, k] of this.#byKey) {
      const requests = RecentRate.#sum(k.seconds, k.requests, now);
      if (requests === 0) this.#byKey.delete(id);
      else out.set(id, { name: k.name, tokens: RecentRate.#sum(k.seconds, k.tokens, now), requests });
    }
    return out;
  }
}

/**
 * What the live view reads of the queue in front of llama-server (the FairQueue, or the scheduler of
 * issue 14): `runningFor` when it tells running requests per key, `maxInflight` when it has one
 * slot count (else the slots are the model servers' own).
 */
export interface QueueView {
  readonly running: number;
  readonly waiting: number;
  readonly maxInflight?: number;
  waitingFor(key: string): number;
  runningFor?(key: string): number;
}

/**
 * The fair queue as /admin/live shows it: the one place that reads queue state (the scheduler of
 * issue 14 replaces it). Keys listed: those waiting or running now, and those seen in the last minute.
 */
export function queueState(
  queue: QueueView,
  identities: Iterable<Pick<KeyIdentity, 'id' | 'name'>>,
  recent: ReadonlyMap<string, { name: string; tokens: number; requests: number }>,
  serverSlots: number,
): {
  running: number;
  waiting: number;
  slots: number;
  keys: { id: string; name: string; running: number | null; waiting: number; requests_last_minute: number; tokens_last_minute: number }[];
} {
  const keys = [];
  for (const k of identities) {
    const waiting = queue.waitingFor(k.id);
    const running = queue.runningFor === undefined ? null : queue.runningFor(k.id);
    const seen = recent.get(k.id);
    if (waiting === 0 && (running ?? 0) === 0 && seen === undefined) continue;
    keys.push({
      id: k.id,
      name: k.name,
      running,
      waiting,
      requests_last_minute: seen?.requests ?? 0,
      tokens_last_minute: seen?.tokens ?? 0,
    });
  }
  keys.sort((a, b) => a.name.localeCompare(b.name));
  return { running: queue.running, waiting: queue.waiting, slots: queue.maxInflight ?? serverSlots, keys };
}

interface UpstreamLive {
  name: string;
  url: string;
  state: UpstreamState;
  /** the model ids it serves (its first one: `model`) */
  model: string | null;
  models: string[];
  /** busy: requests the gateway runs there now (its slots taken) */
  slots: { total: number; busy: number };
}

/**
 * Each llama-server as the gateway follows it (upstreams/): no call to llama-server per view (its
 * /slots, polled, would restart the 1 s checks with which it notices a client that left).
 */
function readUpstreams(set: UpstreamSet, queue: SlotQueue): UpstreamLive[] {
  return set.nodes.map((n) => {
    const models = n.models.map((m) => m.id);
    return {
      name: n.name,
      url: n.url,
      state: n.state,
      model: models[0] ?? null,
      models,
      slots: { total: n.slots, busy: queue.runningOn(n) },
    };
  });
}

function iso(ms: number | undefined): string | null {
  return ms === undefined ? null : new Date(ms).toISOString();
}

export default async function adminUsageRoutes(app: FastifyInstance, opts: { usage: UsageTable }): Promise<void> {
  const { usage } = opts;
  const logBodies = app.usage?.logBodies ?? false;
  const rate = new RecentRate();
  app.usage?.onRecord((r) => rate.add(r, Date.now()));

  // Tokens and requests per day, by key or model: ?since=30d&until=&key=&by=key|model.
  app.get<{ Querystring: SeriesQuery }>('/usage/series', { schema: { querystring: seriesQuery } }, async (request) => {
    let filter;
    try {
      filter = usageFilter(request.query);
    } catch (err) {
      throw INVALID_PERIOD((err as Error).message);
    }
    const by = request.query.by ?? 'key';
    const cells = await usage.series(filter, by);
    const days = [...new Set(cells.map((c) => c.day))];
    const groups = [...new Set(cells.map((c) => c.group))].sort();
    const at = new Map(days.map((d, i) => [d, i]));
    const data = groups.map((group) => ({ [by]: group, requests: days.map(() => 0), tokens: days.map(() => 0) }));
    const row = new Map(groups.map((g, i) => [g, data[i]!]));
    for (const c of cells) {
      const r = row.get(c.group)!;
      const i = at.get(c.day)!;
      r.requests[i] = c.requests;
      r.tokens[i] = c.tokens;
    }
    return { object: 'usage_series', by, since: iso(filter.since), until: iso(filter.until), days, data };
  });

  // Single requests, newest first: ?key=&user=&model=&status=ok|error|429&day=YYYY-MM-DD&limit=50&after=<next>.
  app.get<{ Querystring: RequestsQuery }>('/requests', { schema: { querystring: requestsQuery } }, async (request) => {
    const q = request.query;
    let filter: RequestFilter;
    try {
      filter = usageFilter(q);
    } catch (err) {
      throw INVALID_PERIOD((err as Error).message);
    }
    if (q.day !== undefined) {
      const start = Date.parse(`${q.day}T00:00:00Z`);
      if (Number.isNaN(start) || new Date(start).toISOString().slice(0, 10) !== q.day) throw INVALID_PERIOD(`day "${q.day}" is not a date`);
      filter.since = Math.max(filter.since ?? start, start);
      filter.until = Math.min(filter.until ?? start + DAY_MS, start + DAY_MS);
    }
    if (q.model !== undefined && q.model !== '') filter.model = q.model;
    if (q.status !== undefined) filter.status = q.status === 'ok' || q.status === 'error' ? q.status : Number(q.status);
    if (q.after !== undefined) {
      const [ts, id] = q.after.split('.');
      filter.before = { ts: Number(ts), id: Number(id) };
    }
    const limit = q.limit === undefined ? DEFAULT_PAGE : Number(q.limit);
    const rows = await usage.requests(filter, limit + 1);
    const more = rows.length > limit;
    const page = more ? rows.slice(0, limit) : rows;
    const last = page.at(-1);
    return {
      object: 'list',
      data: page.map((r) => ({
        id: r.id,
        ts: new Date(r.ts).toISOString(),
        request_id: r.requestId,
        key_id: r.keyId,
        key_name: r.keyName,
        route: r.route,
        model: r.model,
        status: r.status,
        outcome: r.outcome,
        streamed: r.streamed === 1,
        prompt_tokens: r.promptTokens,
        cached_tokens: r.cachedTokens,
        completion_tokens: r.completionTokens,
        total_tokens: (r.promptTokens ?? 0) + (r.completionTokens ?? 0),
        estimated: r.estimated === 1,
        ttft_ms: r.ttftMs === null ? null : Math.round(r.ttftMs),
        duration_ms: Math.round(r.durationMs),
        client_ip: r.clientIp,
        user_agent: r.userAgent,
        end_user: r.endUser,
        cost: roundCost(r.cost),
      })),
      has_more: more,
      next: more && last !== undefined ? `${last.ts}.${last.id}` : null,
      // Bodies are never in the usage table; with GATEWAY_LOG_BODIES the audit log has them.
      bodies_in_audit_log: logBodies,
    };
  });

  // The gateway now: each llama-server's state, the fair queue, tokens per second over the last
  // minute. Servers not probed yet (no discovery: tests) are probed first.
  app.get('/live', async () => {
    const set = app.upstreams;
    if (set.nodes.some((n) => n.state === 'unknown')) await set.refresh();
    const now = Date.now();
    const upstreams = readUpstreams(set, app.queue);
    const serverSlots = upstreams.reduce((sum, u) => sum + u.slots.total, 0);
    const recent = rate.keys(now);
    const total = rate.total(now);
    const usageOn = app.usage !== null;
    return {
      object: 'live',
      at: new Date(now).toISOString(),
      upstreams,
      queue: queueState(app.queue, app.keyRegistry.index.identities(), recent, serverSlots),
      window_seconds: WINDOW_S,
      tokens_per_second: usageOn ? Math.round((total.tokens / WINDOW_S) * 10) / 10 : null,
      requests_last_minute: usageOn ? total.requests : null,
    };
  });
}
