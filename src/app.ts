// buildApp(): the gateway's plugins in the order a request meets them. This order is the security
// model (DESIGN.md), so it stays here, explicit, in one list.
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import type { Config } from './config.js';
import { AuditLog } from './usage/audit-log.js';
import { AuthBrake } from './admission/auth-brake.js';
import { MemoryCounters } from './admission/counters.js';
import { FairQueue } from './admission/fair-queue.js';
import { Limits } from './admission/limits.js';
import { KeyRegistry } from './keys/key-registry.js';
import { UsageCompleter } from './usage/completion.js';
import { UsageRecorder } from './usage/recorder.js';
import { UsageStore } from './usage/store.js';
import { WalCheckpointer } from './storage/wal-checkpointer.js';
import admissionPlugin from './plugins/admission.js';
import authPlugin, { AuthGuard } from './plugins/auth.js';
import corsPlugin from './plugins/cors.js';
import { fromFastifyError } from './errors.js';
import errorsPlugin, { sendError } from './plugins/errors.js';
import jsonBodyPlugin from './plugins/json-body.js';
import { clientErrorHandler } from './http/malformed-http.js';
import metricsRoutes from './routes/metrics.js';
import policyPlugin from './plugins/policy.js';
import proxyPlugin from './plugins/proxy.js';
import requestLogPlugin from './plugins/request-log.js';
import usagePlugin, { recordClientClosed, recordLeftQueue } from './plugins/usage.js';
import adminRoutes from './routes/admin.js';
import healthRoutes from './routes/health.js';
import v1Routes from './routes/v1.js';

export interface BuildOptions {
  /** Fastify logger options; tests usually pass false. */
  logger?: FastifyServerOptions['logger'];
  /** Accepted client keys (LLM_API_KEYS and the key database); defaults to config.apiKeys only. */
  registry?: KeyRegistry;
  /** How often usage records are written (ms); tests shorten it. */
  usageFlushMs?: number;
  /** how often the WAL checkpoint worker runs (tests) */
  checkpointMs?: number;
  /** How often a stream waiting in the queue gets a keep-alive comment (ms); tests shorten it. */
  queuePingMs?: number;
}

/** Until llama-server says how many slots it has (GET /props total_slots). */
export const FALLBACK_SLOTS = 4;
const SLOTS_RECHECK_MS = 30_000;
const COUNTER_SWEEP_MS = 60_000;
/** A token hold whose request never produced a record is dropped after this (a safety net). */
const HOLD_MAX_AGE_MS = 3_600_000;

// Longest time a client may take to send one whole request (headers and body), against slow-body
// (slowloris) clients. Generous for a 50 MB upload over a slow link; responses are not limited.
const REQUEST_RECEIVE_TIMEOUT_MS = 300_000;

export async function buildApp(config: Config, options: BuildOptions = {}): Promise<FastifyInstance> {
  const app = Fastify({
    logger: options.logger ?? false,
    bodyLimit: config.bodyLimit,
    // One log line per request (request-log plugin) instead of Fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    exposeHeadRoutes: false,
    requestTimeout: REQUEST_RECEIVE_TIMEOUT_MS,
    // The errors plugin answers requests that arrive while closing, in OpenAI's shape.
    return503OnClosing: false,
    routerOptions: { caseSensitive: true, ignoreTrailingSlash: false, ignoreDuplicateSlashes: false },
    // Admin API bodies are validated strictly: unknown fields and wrong types are errors, not
    // silently dropped or coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false } },
    // Errors found while routing (a malformed %-escape, a path parameter over the length limit)
    // happen before any hook; answer them in OpenAI shape too.
    frameworkErrors: (err, _request, reply) => sendError(reply, fromFastifyError(err, config.bodyLimit)),
    // Malformed HTTP (parser errors, header overflow, receive timeout) and a missing Host header
    // are answered in OpenAI shape too (malformed-http.ts): Node's bare 400 for Host is off.
    clientErrorHandler,
    http: { requireHostHeader: false },
  });

  // Shutdown order: Fastify runs onClose hooks last-registered first, so what is registered here
  // first closes last: the WAL checkpointer (a last checkpoint), after the usage recorder (a last
  // flush), after the usage completer (pending token counts), after the upstream pools.
  const registry = options.registry ?? new KeyRegistry(config.apiKeys);
  // The database's write-ahead log is copied back into the file by a worker thread, not inside a
  // usage or key write on this thread (a disk sync there would stall every stream).
  if (registry.store !== undefined && registry.store.path !== ':memory:') {
    const checkpointer = new WalCheckpointer(registry.store.db, registry.store.path, { log: app.log, ...(options.checkpointMs === undefined ? {} : { everyMs: options.checkpointMs }) });
    app.addHook('onClose', () => checkpointer.stop()); // runs after the usage flush below (onClose hooks run last-registered first)
    app.decorate('checkpointer', checkpointer);
  }

  // Usage accounting: records written in batches to the key database's usage table and the
  // audit log (GATEWAY_USAGE=off turns it off, and with it the taps on the hot path).
  const usage = config.usage
    ? new UsageRecorder({
        ...(registry.store === undefined ? {} : { store: new UsageStore(registry.store.db) }),
        ...(config.auditLog === '' ? {} : { audit: new AuditLog(config.auditLog, config.auditKeepDays, (err) => app.log.error({ err: { message: err.message } }, 'audit log write failed')) }),
        logBodies: config.logBodies,
      })
    : null;
  app.decorate('usage', usage);
  if (usage !== null) {
    usage.start(app.log, options.usageFlushMs);
    app.addHook('onClose', () => usage.close()); // runs once every connection is done, before the checkpointer's last checkpoint
  }

  // Admission: per-key limits count in a CounterStore (in memory for one process); the fair queue
  // holds this process's share of llama-server's slots. Every credential check (client keys, the
  // admin key on /admin and /metrics) goes through one AuthGuard: one failed-auth brake, with its
  // own bounded memory, and one count of refusals for /metrics.
  const counters = new MemoryCounters();
  const sweep = setInterval(() => {
    const now = Date.now();
    counters.sweep(now, 2 * 86_400_000);
    brake.sweep(now);
    limits.sweep(now, HOLD_MAX_AGE_MS);
  }, COUNTER_SWEEP_MS);
  sweep.unref();
  app.addHook('onClose', async () => clearInterval(sweep));
  const limits = new Limits(counters, { rpm: config.defaultRpm, tpm: config.defaultTpm, tpd: config.defaultTpd, concurrency: config.defaultConcurrency });
  const brake = new AuthBrake(config.authFailLimit, config.authBlockMs);
  const authGuard = new AuthGuard(brake, config.trustProxy);
  // A request's usage record settles the tokens its key held for it (admission) with the real ones.
  usage?.onRecord((r) => {
    if (r.keyId !== null) limits.settle(r.keyId, r.requestId, (r.promptTokens ?? 0) + (r.completionTokens ?? 0), Date.now());
  });
  // A key holds at most its share of the slots (GATEWAY_KEY_SLOTS, default all but one). Light
  // calls (token counting, the model list) wait in a small queue of their own, never behind
  // generations; the proxy's light pool has as many connections (GATEWAY_LIGHT_SLOTS).
  const queue = new FairQueue({ maxInflight: config.maxInflight ?? FALLBACK_SLOTS, maxQueue: config.maxQueue, maxQueuePerKey: config.maxQueuePerKey, timeoutMs: config.queueTimeoutMs, keySlots: config.keySlots });
  app.decorate('queue', queue);
  const lightQueue = new FairQueue({ maxInflight: config.lightSlots, maxQueue: config.maxQueue, maxQueuePerKey: config.maxQueuePerKey, timeoutMs: config.queueTimeoutMs, keySlots: config.keySlots });
  app.decorate('lightQueue', lightQueue);

  // Everywhere, before anything else: OpenAI-shaped errors and 404s, CORS, the upstream pool.
  await app.register(errorsPlugin, { bodyLimit: config.bodyLimit });
  if (config.corsAllowOrigin !== null) await app.register(corsPlugin, { origins: config.corsAllowOrigin });
  // Records of requests that ended without llama-server's usage (the client left, the stream broke,
  // prompt arrays) are completed with its token counts off the request path (usage-completion.ts).
  const completer = usage === null ? null : new UsageCompleter({ call: (path, body) => app.upstream.post(path, body), emit: (r) => usage.record(r), rates: { speeds: () => app.upstream.rates.speeds() }, log: app.log });
  await app.register(proxyPlugin, { config, usage, ...(usage === null ? {} : { clientClosed: recordClientClosed(usage, config.trustProxy, completer) }) });
  // onClose hooks run last-registered first: this one runs before the proxy's (which ends the
  // upstream pools) and the recorder's last flush (above), so pending counts finish or are written.
  if (completer !== null) app.addHook('onClose', () => completer.drain());
  await app.register(requestLogPlugin);

  // Public: no key. /metrics: the admin key or a local scraper.
  await app.register(healthRoutes);
  await app.register(metricsRoutes, { recorder: usage, queue, lightQueue, adminKey: config.adminKey, guard: authGuard });

  // Everything else needs a key: auth (onRequest, before the body is read) → JSON body → policy
  // (model allowed for this key?) → routes; every answer in this scope is a usage record.
  registry.start(app.log);
  app.addHook('onClose', async () => registry.stop());
  await app.register(async function authenticated(api) {
    if (usage !== null) await api.register(usagePlugin, { recorder: usage, trustProxy: config.trustProxy, completer });
    await api.register(authPlugin, { registry, guard: authGuard });
    await api.register(jsonBodyPlugin);
    await api.register(policyPlugin);
    await api.register(admissionPlugin, {
      limits,
      queue,
      lightQueue,
      queueTimeoutMs: config.queueTimeoutMs,
      maxQueuePerKey: config.maxQueuePerKey,
      reserveTokens: config.reserveTokens,
      settledByRecords: usage !== null,
      ...(options.queuePingMs === undefined ? {} : { pingMs: options.queuePingMs }),
      ...(usage === null ? {} : { onLeftQueue: recordLeftQueue(usage, config.trustProxy) }),
    });
    await api.register(v1Routes);
  });

  // The admin API has its own key and exists only when GATEWAY_ADMIN_KEY is set.
  if (config.adminKey !== '' && registry.store !== undefined) {
    await app.register(adminRoutes, { prefix: '/admin', adminKey: config.adminKey, guard: authGuard, registry, store: registry.store, usage: new UsageStore(registry.store.db) });
  }

  // GATEWAY_MAX_INFLIGHT unset: as many at once as llama-server has slots, read from its /props at
  // start and again every 30 s (so a restarted llama-server with another -np is followed).
  if (config.maxInflight === null) {
    const readSlots = async (): Promise<void> => {
      try {
        const answer = await app.upstream.get('/props');
        const slots = (JSON.parse(answer.text) as { total_slots?: unknown }).total_slots;
        if (answer.statusCode === 200 && typeof slots === 'number' && Number.isInteger(slots) && slots > 0 && slots !== queue.maxInflight) {
          queue.setMaxInflight(slots);
          app.log.info({ slots }, 'llama-server slots: requests run upstream at once');
        }
      } catch {
        // unreachable or not llama-server: keep the current number, try again later
      }
    };
    let timer: NodeJS.Timeout | undefined;
    app.addHook('onReady', async () => {
      void readSlots();
      timer = setInterval(() => void readSlots(), SLOTS_RECHECK_MS);
      timer.unref();
    });
    app.addHook('onClose', async () => clearInterval(timer));
  }

  return app;
}

declare module 'fastify' {
  interface FastifyInstance {
    /** The fair queue in front of llama-server's slots. */
    queue: FairQueue;
    /** The light calls' queue (token counting, model list): GATEWAY_LIGHT_SLOTS at once. */
    lightQueue: FairQueue;
    /** Usage records (null with GATEWAY_USAGE=off). */
    usage: UsageRecorder | null;
    /** Checkpoints the database's WAL off the main thread (absent without a key database). */
    checkpointer?: WalCheckpointer;
  }
}
