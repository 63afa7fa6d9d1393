// Admission: per-key limits, then the fair queue in front of the llama-servers' slots (DESIGN.md).
// In two parts:
//   admission (root)  the per-key counters and limits (admission/counters.ts, limits.ts), the
//                     scheduler (admission/scheduler.ts: the fair queue per model over its servers,
//                     following their state and slots through app.upstreams), the light queue, and
//                     failover (app.failover); built, decorated (app.queue, app.lightQueue,
//                     app.limits, app.failover) and stopped here.
//   admit             the authenticated scope's preHandler, after policy and routing: the key is
//                     known, the body parsed, its servers chosen (request.target); nothing has gone
//                     upstream yet. It leaves the server it got in request.backend.
//
//   limits   requests/min, tokens/min, tokens/day, concurrent → 429 + Retry-After + x-ratelimit-*
//   budgets  tokens per calendar day/week/month, per key and per end user under it (admission/
//            budgets.ts) → 429 insufficient_quota + Retry-After to the reset + x-budget-*
//   queue    at most each server's slots upstream at once; the rest wait, per model, a free slot
//            going to the key with the fewest running; bounded per key (429) and overall (503), with
//            a deadline (503). A client that leaves while waiting leaves the queue and never reaches
//            upstream. A key runs at most its share of its model's slots (GATEWAY_KEY_SLOTS); the
//            rest of its requests wait, and a free slot goes to another key's request at once.
//            A request counts as many slots as it runs llama-server tasks (taskCount); one that
//            runs more than its key's share is refused at once (400 too_many_tasks).
//            A client that leaves a non-streamed request llama-server is running keeps its slot
//            ~1.5 s more (ABANDONED_SLOT_HOLD_MS): llama-server notices only by polling.
//   affinity the next turn of a conversation prefers the server that served the last one
//            (GATEWAY_AFFINITY; upstreams/affinity.ts), when its model has several servers.
//   light    token counting waits in a queue of its own (GATEWAY_LIGHT_SLOTS), same rules, so it
//            never waits behind generations.
//
// Over 400 lines on purpose: the admit hook is one callback whose order (limits, budgets, queue,
// affinity) is the admission rule, and it re-enters itself (resume) with how far it got after an
// await (Redis, a budget's seed); split, that order and the states it resumes with would be read
// apart. What stands alone lives beside it: the wait for a slot (admission/slot-wait.ts) and the
// Redis branches (cluster/shared-admit.ts, cluster/shared-budgets-admit.ts).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { KEY_QUEUE_FULL, QUEUE_FULL, RATE_LIMITED, SHARED_STATE_UNAVAILABLE } from '../errors.js';
import { routeConfig } from '../http/route-config.js';
import type { Config } from '../config.js';
import { MemoryCounters } from '../admission/counters.js';
import { FairQueue, QueueFull, TooManyTasks } from '../admission/fair-queue.js';
import { Placement, failoverFor, lightServer } from '../admission/placement.js';
import { QUEUE_FULL_RETRY_S, slotWaiter, taskCount, tooManyTasks } from '../admission/slot-wait.js';
import { Scheduler, type SlotQueue, type Ticket } from '../admission/scheduler.js';
import { SharedScheduler } from '../cluster/shared-slots.js';
import type { Failover } from '../proxy/upstream.js';
import { AffinityMap, affinityKey, preferMs } from '../upstreams/affinity.js';
import type { UpstreamNode } from '../upstreams/upstream-set.js';
import type { RouteKind } from '../usage/exchange.js';
import { Limits } from '../admission/limits.js';
import { Budgets, budgetError } from '../admission/budgets.js';
import { SHARED_DOWN_RETRY_S, SharedCounting } from '../cluster/shared-counting.js';
import { BUDGETED, BUDGET_LOCAL, DECIDED, LOCAL, WAITING, sharedLimitsFor, type Hook, type Via } from '../cluster/shared-admit.js';
import { sharedBudgetsFor } from '../cluster/shared-budgets-admit.js';
import { NO_ALERTS } from '../alerts/events.js';
import { hasBudgets } from '../keys/key-budgets.js';
import { Calendar } from '../usage/calendar.js';
import { budgetSeeder, budgetUserSeeder } from '../usage/pg-usage-store.js';
import { reserveFor } from '../admission/token-estimate.js';
import type { JsonBody } from '../proxy/json-body.js';

/**
 * A client left a non-streamed request llama-server is running: its slot stays taken this long.
 * llama-server notices a closed non-streamed request only by polling about once a second (a
 * stream, at its next token write), so the slot stays busy upstream after the gateway is done;
 * given back at once, the next request would wait in llama-server's own queue instead (measured:
 * ~930 ms each for other keys behind a key that sent and abandoned one after another).
 */
const ABANDONED_SLOT_HOLD_MS = 1500;
/** Cloudflare drops a connection silent for ~100 s; a queued stream says something every 15 s. */
const DEFAULT_QUEUE_PING_MS = 15_000;

const COUNTER_SWEEP_MS = 60_000;
/** Window counts are kept this long after their window (the longest window is a day). */
const COUNTER_MAX_AGE_MS = 2 * 86_400_000;
/** A token hold whose request never produced a record is dropped after this (a safety net). */
const HOLD_MAX_AGE_MS = 3_600_000;

declare module 'fastify' {
  interface FastifyInstance {
    /** The fair queue in front of the llama-servers' slots: per model, over every server of it. */
    queue: SlotQueue;
    /** Sends a request that failed before its answer started to another server (proxy/upstream.ts). */
    failover: Failover;
    /** The light calls' queue (token counting, model list): GATEWAY_LIGHT_SLOTS at once. */
    lightQueue: FairQueue;
    /** Per-key limits and token holds. */
    limits: Limits;
    /** Token budgets over calendar periods, per key and end user (admission/budgets.ts). */
    budgets: Budgets;
    /** Per-key limits counted in Redis (null: no GATEWAY_REDIS_URL): cluster/shared-counting.ts. */
    sharedCounting: SharedCounting | null;
  }
  interface FastifyContextConfig {
    /**
     * true: the route's work runs in a llama-server slot, it takes its turn in the fair queue.
     * 'light': a short call (token counting, model list), queued apart in the light queue.
     */
    queued?: boolean | 'light';
    /** the API the route speaks (usage, prompt-cache affinity) */
    kind?: RouteKind;
  }
  interface FastifyRequest {
    /** The llama-server this request was given (a slot there for generations); null before admission. */
    backend: UpstreamNode | null;
    /** Its place in the queue, kept for failover (null for requests not queued). */
    placement: Placement | null;
  }
}

export default fp(
  async function admissionPlugin(app: FastifyInstance, opts: { config: Config; pingMs?: number | undefined }) {
    const { config } = opts;
    const pingMs = opts.pingMs ?? DEFAULT_QUEUE_PING_MS;
    // Per-key limits count in a CounterStore (in memory for one process).
    const counters = new MemoryCounters();
    const limits = new Limits(counters, {
      rpm: config.defaultRpm,
      tpm: config.defaultTpm,
      tpd: config.defaultTpd,
      concurrency: config.defaultConcurrency,
    });
    if (config.reserveTokens !== null) limits.completionHold = config.reserveTokens;
    app.decorate('limits', limits);
    // Budgets count in the same store, from the usage table and the records not yet written to it.
    const budgets = new Budgets({
      counters,
      calendar: new Calendar(config.budgetTz),
      warnAt: config.budgetWarnAt,
      seed: budgetSeeder(app.usageStore, app.usage),
      seedUsers: budgetUserSeeder(app.usageStore, app.usage),
      alerts: () => (app.hasDecorator('alerts') ? app.alerts : NO_ALERTS),
    });
    app.decorate('budgets', budgets);
    // With Redis (GATEWAY_REDIS_URL) a key's limits are counted there, shared by every gateway;
    // the process-local ones above decide while it does not answer (GATEWAY_REDIS_DOWN=local).
    const redis = app.hasDecorator('redis') ? app.redis : null;
    const shared =
      redis === null
        ? null
        : new SharedCounting({
            link: redis,
            prefix: config.redisPrefix,
            gatewayId: app.gatewayId,
            leaseMs: config.slotLeaseMs,
            whenDown: config.redisDown,
            log: app.log,
            budgets: {
              calendar: budgets.calendar,
              warnAt: config.budgetWarnAt,
              seed: budgetSeeder(app.usageStore, app.usage),
              seedUsers: budgetUserSeeder(app.usageStore, app.usage),
              alerts: () => (app.hasDecorator('alerts') ? app.alerts : NO_ALERTS),
            },
          });
    app.decorate('sharedCounting', shared);
    // A request's usage record settles the tokens its key held for it with the real ones.
    app.usage?.onRecord((r) => {
      if (r.keyId === null) return;
      const tokens = (r.promptTokens ?? 0) + (r.completionTokens ?? 0);
      limits.settle(r.keyId, r.requestId, tokens, Date.now());
      budgets.settle(r.requestId, r.keyId, r.endUser ?? null, r.ts, tokens);
      if (shared !== null) {
        void shared.limits.settle(r.keyId, r.requestId, tokens);
        void shared.budgets.settle(r.requestId, r.keyId, r.endUser ?? null, r.ts, tokens);
      }
    });
    const sweep = setInterval(() => {
      const now = Date.now();
      counters.sweep(now, COUNTER_MAX_AGE_MS);
      limits.sweep(now, HOLD_MAX_AGE_MS);
      budgets.sweep(now, HOLD_MAX_AGE_MS);
      shared?.limits.sweep(now, HOLD_MAX_AGE_MS);
      shared?.budgets.sweep(now, HOLD_MAX_AGE_MS);
    }, COUNTER_SWEEP_MS);
    sweep.unref();

    // The fair queue holds this process's share of the llama-servers' slots, per model, over every
    // server of that model (admission/scheduler.ts); a key holds at most its share of a model's slots
    // (GATEWAY_KEY_SLOTS, default all but one). Each server's slot count is its /props total_slots
    // (or GATEWAY_MAX_INFLIGHT, or the upstreams file), followed as it changes (upstreams/). Light
    // calls (token counting) wait in a small queue of their own, never behind generations; each
    // server's light pool has as many connections (GATEWAY_LIGHT_SLOTS).
    // With Redis (GATEWAY_REDIS_URL) the slots are shared by every gateway, and so is the fair
    // queue in front of them (cluster/shared-slots.ts); the light queue stays per process.
    const set = app.upstreams;
    const queueOpts = {
      maxQueue: config.maxQueue,
      maxQueuePerKey: config.maxQueuePerKey,
      timeoutMs: config.queueTimeoutMs,
      keySlots: config.keySlots,
    };
    const slotsLink = app.hasDecorator('redis') ? app.redis : null;
    const queue: SlotQueue =
      slotsLink === null
        ? new Scheduler(queueOpts)
        : new SharedScheduler({
            ...queueOpts,
            link: slotsLink,
            prefix: config.redisPrefix,
            gatewayId: app.gatewayId,
            leaseMs: config.slotLeaseMs,
            whenDown: config.redisDown,
            servers: () => set.nodes,
            refusal: () => SHARED_STATE_UNAVAILABLE,
            log: app.log,
          });
    set.onChange(() => queue.changed());
    app.decorate('queue', queue);
    app.decorateRequest('backend', null);
    app.decorateRequest('placement', null);
    const lightQueue = new FairQueue({
      maxInflight: config.lightSlots,
      maxQueue: config.maxQueue,
      maxQueuePerKey: config.maxQueuePerKey,
      timeoutMs: config.queueTimeoutMs,
      keySlots: config.keySlots,
    });
    app.decorate('lightQueue', lightQueue);

    // A request that failed before its answer started goes once more (admission/placement.ts).
    app.decorate('failover', failoverFor(set, queue, pingMs));

    // GATEWAY_RESERVE_TOKENS=auto: a request that names no max_tokens holds its server's context per
    // slot (/props default_generation_settings.n_ctx), the most one generation can reach.
    if (config.reserveTokens === null) {
      const follow = (): void => {
        let ctx = 0;
        for (const n of set.nodes) if (n.nCtx !== null && n.nCtx > ctx) ctx = n.nCtx;
        if (ctx > 0) limits.completionHold = ctx;
      };
      set.onChange(follow);
    }
    app.addHook('onClose', async () => {
      clearInterval(sweep);
      queue.close(); // ends slot holds (ABANDONED_SLOT_HOLD_MS)
      await shared?.close(); // gives this process's concurrency entries and holds back
    });
  },
  { name: 'admission', fastify: '5.x', dependencies: ['proxy', 'usage'] },
);

export interface AdmitOptions {
  config: Config;
  /** How often a waiting stream gets a keep-alive comment (and, the first time, its headers). */
  pingMs?: number | undefined;
}

/** Routes that read a prompt and generate nothing: they hold only their prompt's tokens. */
const PROMPT_ONLY = new Set(['/v1/embeddings', '/v1/rerank']);
/**
 * An audio upload's bytes say little about its tokens (audio runs ~25 tokens a second, ~16 KB of
 * 16-bit WAV): it holds its completion allowance and this for the audio (about 10 minutes of it).
 */
const UPLOAD_HOLD_TOKENS = 16_384;

/** The authenticated scope's preHandler: limits, budgets, then a turn in the fair queue. */
export const admit = fp(
  async function admitPlugin(app: FastifyInstance, opts: AdmitOptions) {
    const { limits, budgets, queue, lightQueue } = app;
    let warnedNoUsage = false;
    /** What a request may cost, held against its key's token limits and budgets (token-estimate.ts). */
    const holdFor = (body: JsonBody, url: string | undefined): number =>
      body.form === true
        ? UPLOAD_HOLD_TOKENS + limits.completionHold
        : reserveFor(body.raw, body.json, !PROMPT_ONLY.has(url ?? ''), limits.completionHold);
    const set = app.upstreams;
    const { queueTimeoutMs, maxQueuePerKey } = opts.config;
    // Prompt-cache affinity (GATEWAY_AFFINITY): the next turn of a conversation goes to the server
    // that served the last one, when its model has several servers (upstreams/affinity.ts).
    const affinity = opts.config.affinity ? new AffinityMap() : null;
    // A server that went down or is loading (a model reload) has lost its slots' caches.
    if (affinity !== null)
      set.onChange((node) => {
        if (node.state === 'down' || node.state === 'loading') affinity.forget(node.index);
      });
    // Usage records settle token holds (GATEWAY_USAGE=on); else a hold ends with its response.
    const settledByRecords = app.usage !== null;
    const waitForSlot = slotWaiter({
      pingMs: opts.pingMs ?? DEFAULT_QUEUE_PING_MS,
      queueTimeoutMs,
      maxQueuePerKey,
      accounting: app.usageAccounting,
    });
    const shared = app.sharedCounting;
    /**
     * Requests that come back into the hook after an await (a Redis script, a budget's seed being
     * read), with how far they got; `resuming` counts them, so the common path never looks here.
     */
    const resumed = new WeakMap<FastifyRequest, Via>();
    let resuming = 0;
    /** Runs the hook again for a request that waited (unless its client left meanwhile). */
    function resume(request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void, hook: Hook, via: Via): void {
      if (reply.raw.destroyed || request.raw.socket.destroyed) {
        reply.hijack(); // the client left while the request waited: nobody to answer, nothing to run
        return;
      }
      resumed.set(request, via);
      resuming++;
      hook(request, reply, done);
    }

    // A key's limits in Redis (GATEWAY_REDIS_URL): cluster/shared-admit.ts.
    const sharedLimits = shared === null ? null : sharedLimitsFor(shared, holdFor, settledByRecords, resume);
    // A key's budgets in Redis: cluster/shared-budgets-admit.ts.
    const sharedBudgets = shared === null ? null : sharedBudgetsFor(shared, shared.budgets, settledByRecords, resume);

    // A callback hook: the common case (no limit refuses, a slot is free) finishes synchronously,
    // without a promise, a microtask hop or a ping timer per request. Only a request that has to
    // wait takes the async path.
    app.addHook('preHandler', function admitHook(request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) {
      const key = request.apiKey;
      if (key === null) return done();
      const res = reply.raw;
      const route = routeConfig(request);
      const queued = route.queued;
      const body = request.body as JsonBody | undefined;
      /** how far a request that waited got (see resume()); undefined on the common path */
      let back: Via | undefined;
      if (resuming !== 0 && (back = resumed.get(request)) !== undefined) {
        resumed.delete(request);
        resuming--;
      }
      /** what this request may cost, held against token limits and budgets alike (computed once) */
      let hold: number | undefined;
      const l = limits.of(key);
      if (Limits.any(l)) {
        // With Redis the key's limits count there, for every gateway: a script away (async), then
        // this hook runs again from the top and goes on below (sharedLimits).
        const via =
          back ?? (sharedLimits === null ? LOCAL : sharedLimits(request, reply, done, admitHook, key.id, l, queued, body, route.url));
        if (via === WAITING) return;
        if (via === LOCAL) {
          const now = Date.now();
          const refusal = limits.check(key.id, l, now);
          if (refusal !== undefined) {
            reply.headers(limits.headers(key.id, l, now)).header('retry-after', String(refusal.retryAfter));
            return done(RATE_LIMITED(refusal.limit, refusal.max, refusal.retryAfter));
          }
          const end = limits.admit(key.id, now);
          res.once('close', end);
          // A key with a token limit holds what this generation may cost until its usage record
          // settles it (the admission plugin); without usage records the hold ends with the response.
          if (queued === true && Limits.holdsTokens(l) && body !== undefined) {
            hold = holdFor(body, route.url);
            limits.reserve(key.id, request.id, hold, now);
            if (!settledByRecords) res.once('close', () => limits.release(request.id));
          }
          reply.headers(limits.headers(key.id, l, now));
        }
      }
      // Token budgets over calendar periods (the key's, its end user's): only work that runs on a
      // llama-server is refused and held; every answer to the key says what is left.
      if (key.budgets !== null && hasBudgets(key.budgets)) {
        const work = queued === true;
        const tokens = work && body !== undefined ? (hold ??= holdFor(body, route.url)) : 0;
        // With Redis the budgets count there, for every gateway: a script away, then back here (BUDGETED).
        const via =
          back === undefined || back < BUDGETED
            ? sharedBudgets === null
              ? LOCAL
              : sharedBudgets(request, reply, done, admitHook, key, tokens, work)
            : back === BUDGET_LOCAL
              ? LOCAL
              : DECIDED;
        if (via === WAITING) return;
        if (via === LOCAL) {
          const check = budgets.admit(key, request.endUser ?? null, request.id, tokens, Date.now(), work);
          if (check.pending !== undefined) {
            // A count still being read from the usage table (PostgreSQL): decide once it is there.
            check.pending.then(
              () => resume(request, reply, done, admitHook, BUDGET_LOCAL),
              (err: Error) => {
                request.log.error({ error: err.message }, "a budget's count could not be read from the usage table");
                reply.header('retry-after', String(SHARED_DOWN_RETRY_S));
                done(SHARED_STATE_UNAVAILABLE);
              },
            );
            return;
          }
          reply.headers(check.headers);
          if (check.refusal !== undefined) {
            reply.header('retry-after', String(check.refusal.retryAfter));
            return done(budgetError(check.refusal));
          }
          if (tokens > 0 && !settledByRecords) {
            if (!warnedNoUsage) request.log.warn('GATEWAY_USAGE is off: token budgets hold requests but count nothing');
            warnedNoUsage = true;
            res.once('close', () => budgets.release(request.id));
          }
        }
      }

      const target = request.target;
      if (queued === undefined || queued === false || target === null) return done();
      const light = queued === 'light';
      const json = body?.json;
      const tasks = light || json === undefined ? 1 : taskCount(route.url, json);
      let placement: Placement;
      let affine: string | null = null;
      try {
        if (light) {
          placement = new Placement(lightQueue.enter(key.id, tasks), key.id, target, tasks, true);
          request.backend = lightServer(target.nodes);
        } else {
          let prefer: UpstreamNode | undefined;
          let wait = 0;
          if (affinity !== null && target.nodes.length > 1 && json !== undefined && body !== undefined) {
            affine = affinityKey(route.kind ?? 'chat', json, key.id);
            const at = affine === null ? undefined : affinity.get(affine);
            prefer = at === undefined ? undefined : set.nodes[at];
            if (prefer !== undefined) wait = preferMs(body.raw.length, prefer.client.rates.speeds().prompt);
          }
          const ticket =
            prefer === undefined
              ? queue.enter(key.id, target.model, target.nodes, tasks)
              : queue.enter(key.id, target.model, target.nodes, tasks, { prefer, preferMs: wait });
          placement = new Placement(ticket, key.id, target, tasks, false);
          if (ticket.server !== undefined) {
            request.backend = ticket.server as UpstreamNode;
            if (affine !== null) affinity!.set(affine, request.backend.index);
          }
        }
      } catch (err) {
        if (err instanceof TooManyTasks) return done(tooManyTasks(err, json));
        if (!(err instanceof QueueFull)) throw err;
        reply.header('retry-after', String(QUEUE_FULL_RETRY_S));
        return done(err.scope === 'key' ? KEY_QUEUE_FULL(maxQueuePerKey) : QUEUE_FULL);
      }
      // Leaving while waiting takes the request out of the queue; after admission, the same
      // call gives the slot back (the response finished, or the client left mid-answer). A
      // non-streamed one left before its answer came keeps the slot a while (ABANDONED_SLOT_HOLD_MS).
      // (Through the placement: a failover swaps its ticket.)
      request.placement = placement;
      if (light || json?.stream === true) res.once('close', () => placement.ticket.cancel());
      else
        res.once('close', () => {
          const ticket = placement.ticket;
          if (ticket.started && !res.writableFinished && !res.headersSent) queue.hold(ticket.cancel, ABANDONED_SLOT_HOLD_MS);
          else ticket.cancel();
        });
      if (placement.ticket.immediate) return done();
      waitForSlot(request, reply, placement.ticket, key.name, light).then(() => {
        const server = light ? undefined : (placement.ticket as Ticket).server;
        if (request.backend === null && server !== undefined) {
          request.backend = server as UpstreamNode;
          if (affine !== null) affinity!.set(affine, request.backend.index);
        }
        done();
      }, done);
    });
  },
  { name: 'admit', fastify: '5.x', dependencies: ['admission', 'check-key'] },
);
