// The admin API: the `llm-gateway keys` operations as JSON, under /admin. Registered only when
// GATEWAY_ADMIN_KEY is set; it has its own key check (constant time, never a client key), so a
// client key gets 401 here. A wrong admin key counts in the failed-auth brake like a wrong client
// key, and a blocked address gets 429 here too. Bodies are validated by JSON schema.
// Its errors are entries of the error table (src/errors.ts); the key store's refusals are mapped to
// them here.
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { INVALID_JSON, INVALID_KEY_FIELD, INVALID_PERIOD, KEY_DB_UNUSABLE, KEY_NAME_TAKEN, KEY_NOT_FOUND } from '../errors.js';
import type { BudgetState } from '../admission/budgets.js';
import { parseExpiry } from '../keys/expiry.js';
import type { KeyPolicy } from '../keys/key-policy.js';
import type { KeyRegistry } from '../keys/key-registry.js';
import type { KeyRepository } from '../keys/key-repository.js';
import { KeyStoreError, keyJson, type KeyChanges, type KeyLimits, type KeyRecord } from '../keys/key-store.js';
import { hasBudgets, type KeyBudgets } from '../keys/key-budgets.js';
import { groupBy, usageFilter } from '../usage/period.js';
import { roundCost } from '../usage/prices.js';
import { usageTotal, type UsageTable } from '../usage/store.js';
import { adminKeyCheck, type AuthGuard } from '../http/auth-guard.js';
import adminUsageRoutes from './admin-usage.js';

const nullableStrings = { type: ['array', 'null'], items: { type: 'string', minLength: 1, maxLength: 500 }, maxItems: 1000 } as const;
const nullableLimit = { type: ['integer', 'null'], minimum: 1 } as const;
// A key's request policy (keys/key-policy.ts checks it again and names the field at fault); null
// clears it, a null field removes that field (the key follows the GATEWAY_* default again).
const policySchema = {
  type: ['object', 'null'],
  additionalProperties: false,
  properties: {
    max_tokens: nullableLimit,
    max_prompt_bytes: nullableLimit,
    max_prompt_tokens: nullableLimit,
    remote_media: { type: ['string', 'null'], enum: ['refuse', 'fetch', 'allow', null] },
    params: {
      type: ['object', 'null'],
      maxProperties: 200,
      propertyNames: { pattern: '^[A-Za-z_][A-Za-z0-9_.-]{0,63}$' },
      additionalProperties: { type: ['string', 'null'], enum: ['allow', 'remove', 'refuse', null] },
    },
  },
} as const;
const fields = {
  name: { type: 'string', minLength: 1, maxLength: 64 },
  note: { type: 'string', maxLength: 2000 },
  enabled: { type: 'boolean' },
  expires: { type: ['string', 'null'], maxLength: 64 },
  models: nullableStrings,
  origins: nullableStrings,
  policy: policySchema,
  limits: {
    type: 'object',
    additionalProperties: false,
    properties: { rpm: nullableLimit, tpm: nullableLimit, tpd: nullableLimit, concurrency: nullableLimit },
  },
  // Token budgets (keys/key-budgets.ts): PATCH merges field by field, null removes one (or all).
  budgets: {
    type: ['object', 'null'],
    additionalProperties: false,
    properties: {
      day: nullableLimit,
      week: nullableLimit,
      month: nullableLimit,
      mode: { type: ['string', 'null'], enum: ['hard', 'soft', null] },
      per_user: {
        type: ['object', 'null'],
        additionalProperties: false,
        properties: { day: nullableLimit, week: nullableLimit, month: nullableLimit },
      },
    },
  },
} as const;
const createSchema = { type: 'object', additionalProperties: false, required: ['name'], properties: fields } as const;
const patchSchema = { type: 'object', additionalProperties: false, minProperties: 1, properties: fields } as const;
const idParams = { type: 'object', required: ['id'], properties: { id: { type: 'string', minLength: 1, maxLength: 100 } } } as const;

interface KeyBody {
  name?: string;
  note?: string;
  enabled?: boolean;
  expires?: string | null;
  models?: string[] | null;
  origins?: string[] | null;
  policy?: KeyPolicy | null;
  limits?: Partial<KeyLimits>;
  budgets?: KeyBudgets | null;
}

/** The key store's refusal as the admin API answers it; a database it cannot use is logged, not told. */
function fromStoreError(err: unknown, log: FastifyBaseLogger): unknown {
  if (!(err instanceof KeyStoreError)) return err;
  switch (err.code) {
    case 'key_not_found':
      return KEY_NOT_FOUND(err.message);
    case 'key_name_taken':
      return KEY_NAME_TAKEN(err.message);
    case 'invalid_key_field':
      return INVALID_KEY_FIELD(err.message, err.param);
    case 'db_unusable':
      log.error({ err: { code: err.code, message: err.message } }, 'admin: the key database cannot be used');
      return KEY_DB_UNUSABLE;
  }
}

function changesFrom(body: KeyBody): KeyChanges {
  const changes: KeyChanges = {};
  if (body.name !== undefined) changes.name = body.name;
  if (body.note !== undefined) changes.note = body.note;
  if (body.enabled !== undefined) changes.enabled = body.enabled;
  if (body.models !== undefined) changes.models = body.models;
  if (body.origins !== undefined) changes.origins = body.origins;
  if (body.policy !== undefined) changes.policy = body.policy;
  if (body.limits !== undefined) changes.limits = body.limits;
  if (body.budgets !== undefined) changes.budgets = body.budgets;
  if (body.expires !== undefined) {
    try {
      changes.expiresAt = body.expires === null ? null : parseExpiry(body.expires);
    } catch (err) {
      throw INVALID_KEY_FIELD(`expires: ${(err as Error).message}`, 'expires');
    }
  }
  return changes;
}

const usageQuery = {
  type: 'object',
  additionalProperties: false,
  properties: {
    key: { type: 'string', maxLength: 100 },
    user: { type: 'string', maxLength: 200 },
    since: { type: 'string', maxLength: 64 },
    until: { type: 'string', maxLength: 64 },
    by: { type: 'string', enum: ['day', 'key', 'model', 'user'] },
  },
} as const;

export default async function adminRoutes(
  app: FastifyInstance,
  opts: { adminKey: string; guard: AuthGuard; registry: KeyRegistry; store: KeyRepository; usage: UsageTable; currency?: string },
): Promise<void> {
  const isAdmin = adminKeyCheck(opts.adminKey);
  const { guard, registry, store, usage } = opts;

  // JSON bodies; an empty one (curl -X POST -H 'Content-Type: application/json' …/rotate) is no body.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, text, done) => {
    if (text === '') {
      done(null, undefined);
      return;
    }
    try {
      done(null, JSON.parse(text as string) as unknown);
    } catch (err) {
      done(INVALID_JSON((err as Error).message));
    }
  });

  app.addHook('onRequest', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
    const ip = guard.address(request);
    if (guard.refuseBlocked(request, reply, ip)) return;
    if (!isAdmin(request)) return guard.refuseWrong(request, reply, ip, 'admin');
    done();
  });

  /**
   * Runs a store operation (SQLite or PostgreSQL: keys/key-repository.ts); reloads at once after
   * our own writes (SQLite's data_version does not count them; PostgreSQL tells them too, later).
   */
  const write = async <T>(fn: () => T | Promise<T>): Promise<T> => {
    try {
      const result = await fn();
      await registry.reload();
      return result;
    } catch (err) {
      throw fromStoreError(err, app.log);
    }
  };
  const read = async <T>(fn: () => T | Promise<T>): Promise<T> => {
    try {
      return await fn();
    } catch (err) {
      throw fromStoreError(err, app.log);
    }
  };

  // A key with budgets carries its budget state (none without): the gateway's own counts, held
  // tokens included.
  /** A key's JSON with its budget state: as every gateway counts it when they share Redis, else this process's count. */
  const withBudget = async (k: KeyRecord): Promise<Record<string, unknown>> => {
    if (!hasBudgets(k.budgets) || !app.hasDecorator('budgets')) return keyJson(k);
    const budgets = k.budgets;
    const local = (): BudgetState => app.budgets.state(k.id, budgets, Date.now());
    const shared = app.hasDecorator('sharedCounting') ? app.sharedCounting : null;
    const state = shared !== null && shared.link.up ? await shared.budgets.state(k).catch(local) : local();
    return { ...keyJson(k), budget_state: state };
  };

  app.get('/keys', async () => ({ object: 'list', data: await Promise.all((await read(() => store.list())).map(withBudget)) }));

  app.post<{ Body: KeyBody }>('/keys', { schema: { body: createSchema } }, async (request, reply) => {
    const changes = changesFrom(request.body);
    const { record, key } = await write(() => store.create({ ...changes, name: request.body.name ?? '' }));
    request.log.info({ keyId: record.id, keyName: record.name }, 'admin: key created');
    return reply.code(201).send({ ...keyJson(record), key });
  });

  app.get<{ Params: { id: string } }>('/keys/:id', { schema: { params: idParams } }, async (request) =>
    withBudget(await read(() => store.get(request.params.id))),
  );

  app.patch<{ Params: { id: string }; Body: KeyBody }>(
    '/keys/:id',
    { schema: { params: idParams, body: patchSchema } },
    async (request) => {
      const changes = changesFrom(request.body);
      const record = await write(() => store.update(request.params.id, changes));
      request.log.info({ keyId: record.id, keyName: record.name, fields: Object.keys(request.body) }, 'admin: key changed');
      return keyJson(record);
    },
  );

  app.delete<{ Params: { id: string } }>('/keys/:id', { schema: { params: idParams } }, async (request) => {
    const record = await write(() => store.revoke(request.params.id));
    request.log.info({ keyId: record.id, keyName: record.name }, 'admin: key revoked');
    return { id: record.id, name: record.name, deleted: true };
  });

  app.post<{ Params: { id: string } }>('/keys/:id/rotate', { schema: { params: idParams } }, async (request) => {
    const { record, key } = await write(() => store.rotate(request.params.id));
    request.log.info({ keyId: record.id, keyName: record.name }, 'admin: key rotated');
    return { ...keyJson(record), key };
  });

  // Usage report: totals per day, key, model or end user, with the CLI's filters
  // (?key=&user=&since=7d&until=&by=). by=user rows name the key too; cost: stored costs summed.
  app.get<{ Querystring: { key?: string; user?: string; since?: string; until?: string; by?: string } }>(
    '/usage',
    { schema: { querystring: usageQuery } },
    async (request) => {
      let filter;
      let by;
      try {
        filter = usageFilter(request.query);
        by = groupBy(request.query.by);
      } catch (err) {
        throw INVALID_PERIOD((err as Error).message);
      }
      const rows = await usage.report(filter, by);
      const t = usageTotal(rows);
      const total = {
        requests: t.requests,
        prompt_tokens: t.promptTokens,
        cached_tokens: t.cachedTokens,
        completion_tokens: t.completionTokens,
        total_tokens: t.totalTokens,
        cost: roundCost(t.cost),
      };
      return {
        object: 'usage_report',
        by,
        currency: opts.currency ?? 'USD',
        since: filter.since === undefined ? null : new Date(filter.since).toISOString(),
        until: filter.until === undefined ? null : new Date(filter.until).toISOString(),
        data: rows.map((r) => ({
          ...(by === 'user' ? { key: r.key } : {}),
          [by]: r.group,
          requests: r.requests,
          prompt_tokens: r.promptTokens,
          cached_tokens: r.cachedTokens,
          completion_tokens: r.completionTokens,
          total_tokens: r.totalTokens,
          estimated: r.estimated,
          errors: r.errors,
          cost: roundCost(r.cost),
        })),
        total,
      };
    },
  );

  // What the admin console reads (per-day series, single requests, live state): same key check.
  await app.register(adminUsageRoutes, { usage });
}
