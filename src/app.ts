// buildApp(): the gateway's plugins, in order, and nothing else. This order is the security model
// (DESIGN.md), so it stays here, explicit, in one list. Each plugin builds what it uses, decorates
// what others read, and closes it (onClose); what one needs from another is in its fastify-plugin
// `dependencies`.
//
// Shutdown order is decided here too: Fastify runs onClose hooks last-registered first, so the
// plugins below close bottom to top:
//   admission    the counter sweep and the /props poll stop
//   auth         the brake sweep stops; the key registry writes its last-used times
//   usage        the completer finishes pending token counts (upstream pools still open), then
//                the recorder's last flush (usage table, audit log)
//   alerts       pending webhook deliveries get a last try (at most 2 s)
//   proxy        the upstream pools end
//   cluster      the Redis link closes (after admission gave its slot leases back)
//   database     the WAL checkpointer's last checkpoint, after every write above
// and server.ts closes the database connection after app.close().
import type pg from 'pg';
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import type { Config } from './config.js';
import type { WebhookTuning } from './alerts/webhook.js';
import { fromFastifyError, sendError } from './errors.js';
import { clientErrorHandler } from './http/malformed-http.js';
import { KeyRegistry } from './keys/key-registry.js';
import type { MediaFetchTesting } from './policy/media-fetch.js';
import admissionPlugin, { admit } from './plugins/admission.js';
import alertsPlugin from './plugins/alerts.js';
import authPlugin, { checkKey } from './plugins/auth.js';
import clusterPlugin from './plugins/cluster.js';
import corsPlugin from './plugins/cors.js';
import databasePlugin from './plugins/database.js';
import endUserPlugin from './plugins/end-user.js';
import errorsPlugin from './plugins/errors.js';
import jsonBodyPlugin from './plugins/json-body.js';
import policyPlugin from './plugins/policy.js';
import proxyPlugin from './plugins/proxy.js';
import requestLogPlugin from './plugins/request-log.js';
import routePlugin from './plugins/route.js';
import usagePlugin, { usageRecords } from './plugins/usage.js';
import adminConsoleRoutes from './routes/admin-console.js';
import adminRoutes from './routes/admin.js';
import healthRoutes from './routes/health.js';
import metricsRoutes from './routes/metrics.js';
import v1Routes from './routes/v1.js';

export interface BuildOptions {
  /** Fastify logger options; tests usually pass false. */
  logger?: FastifyServerOptions['logger'];
  /** Accepted client keys (LLM_API_KEYS and the key database); defaults to config.apiKeys only. */
  registry?: KeyRegistry;
  /** How often usage records are written (ms); tests shorten it. */
  usageFlushMs?: number;
  /** How often the WAL checkpoint worker runs (ms); tests shorten it. */
  checkpointMs?: number;
  /** How often a stream waiting in the queue gets a keep-alive comment (ms); tests shorten it. */
  queuePingMs?: number;
  /**
   * Follow the llama-servers in the background: /health polls, /v1/models and /props (default
   * true). Tests that count the upstream requests they cause turn it off.
   */
  discovery?: boolean;
  /** The alerts webhook's retry timings and limits (alerts/webhook.ts); tests shorten them. */
  webhook?: Partial<WebhookTuning>;
  /** For tests only: remote media fetches treat the test's server as public (policy/media-fetch.ts). */
  mediaFetch?: MediaFetchTesting;
  /** The PostgreSQL pool (GATEWAY_DATABASE_URL), migrated, opened by the caller (server.ts) and ended by it after app.close(). */
  pg?: pg.Pool;
}

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
  app.decorateRequest('routeConfigSeen', null); // http/route-config.ts
  const registry = options.registry ?? new KeyRegistry(config.apiKeys);

  // Everywhere, before anything else: OpenAI-shaped errors and 404s, CORS.
  await app.register(errorsPlugin, { bodyLimit: config.bodyLimit });
  if (config.corsAllowOrigin !== null) await app.register(corsPlugin, { origins: config.corsAllowOrigin });

  // What the gateway holds (closed bottom to top, see above).
  // app.db, app.pg, app.checkpointer
  await app.register(databasePlugin, { store: registry.sqlite, checkpointMs: options.checkpointMs, pg: options.pg });
  await app.register(clusterPlugin, { config }); // app.redis, app.gatewayId (closes after admission)
  await app.register(proxyPlugin, { config, discovery: options.discovery }); // app.upstreams, app.upstream
  await app.register(alertsPlugin, { config, registry, tuning: options.webhook }); // app.alerts (closes after usage: see plugins/alerts.ts)
  await app.register(usagePlugin, { config, flushMs: options.usageFlushMs }); // app.usage, app.usageStore
  await app.register(authPlugin, { config, registry }); // app.authGuard, app.keyRegistry
  await app.register(admissionPlugin, { config, pingMs: options.queuePingMs }); // app.queue, app.lightQueue, app.limits, app.failover
  await app.register(requestLogPlugin);

  // Public: no key. /metrics: the admin key or a local scraper.
  await app.register(healthRoutes);
  await app.register(metricsRoutes, { adminKey: config.adminKey, keySlots: config.keySlots });

  // Everything else needs a key: auth (onRequest, before the body is read) → JSON body → policy
  // (model allowed for this key?) → route (which servers serve that model?) → admission (limits,
  // fair queue: a slot on one of them) → routes; every answer in this
  // scope is a usage record.
  await app.register(async function authenticated(api) {
    await api.register(checkKey);
    await api.register(jsonBodyPlugin);
    await api.register(endUserPlugin, { config }); // request.endUser: who inside the key (accounting only)
    await api.register(policyPlugin, { config, mediaFetch: options.mediaFetch }); // models, request policy (may rewrite the body)
    await api.register(routePlugin);
    await api.register(admit, { config, pingMs: options.queuePingMs });
    await api.register(v1Routes);
    await api.register(usageRecords);
  });

  // The admin API has its own key and exists only when GATEWAY_ADMIN_KEY is set; so does the
  // console's page (/admin/: static files, no key, the page asks for it and calls the API with it).
  if (config.adminKey !== '' && registry.store !== undefined && app.usageStore !== null) {
    await app.register(adminConsoleRoutes, {});
    await app.register(adminRoutes, {
      prefix: '/admin',
      adminKey: config.adminKey,
      guard: app.authGuard,
      registry,
      store: registry.store,
      usage: app.usageStore,
      currency: config.priceCurrency,
    });
  }

  return app;
}
