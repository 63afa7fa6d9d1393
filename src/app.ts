// buildApp(): the gateway's plugins in the order a request meets them. This order is the security
// model (DESIGN.md), so it stays here, explicit, in one list.
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import type { Config } from './config.js';
import { AuditLog } from './lib/audit-log.js';
import { KeyRegistry } from './lib/key-registry.js';
import { UsageRecorder } from './lib/usage-recorder.js';
import { UsageStore } from './lib/usage-store.js';
import authPlugin from './plugins/auth.js';
import corsPlugin from './plugins/cors.js';
import { fromFastifyError } from './errors.js';
import errorsPlugin, { sendError } from './plugins/errors.js';
import jsonBodyPlugin from './plugins/json-body.js';
import metricsRoutes from './plugins/metrics.js';
import policyPlugin from './plugins/policy.js';
import proxyPlugin from './plugins/proxy.js';
import requestLogPlugin from './plugins/request-log.js';
import usagePlugin, { recordClientClosed } from './plugins/usage.js';
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
    return503OnClosing: true,
    routerOptions: { caseSensitive: true, ignoreTrailingSlash: false, ignoreDuplicateSlashes: false },
    // Admin API bodies are validated strictly: unknown fields and wrong types are errors, not
    // silently dropped or coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false } },
    // Errors found while routing (a malformed %-escape, a path parameter over the length limit)
    // happen before any hook; answer them in OpenAI shape too.
    frameworkErrors: (err, _request, reply) => sendError(reply, fromFastifyError(err, config.bodyLimit)),
  });

  // Usage accounting: records written in batches to the key database's usage table and the
  // audit log (GATEWAY_USAGE=off turns it off, and with it the taps on the hot path).
  const registry = options.registry ?? new KeyRegistry(config.apiKeys);
  const usage = config.usage
    ? new UsageRecorder({
        ...(registry.store === undefined ? {} : { store: new UsageStore(registry.store.db) }),
        ...(config.auditLog === '' ? {} : { audit: new AuditLog(config.auditLog, config.auditKeepDays, (err) => app.log.error({ err: { message: err.message } }, 'audit log write failed')) }),
        logBodies: config.logBodies,
      })
    : null;
  if (usage !== null) {
    usage.start(app.log, options.usageFlushMs);
    app.addHook('onClose', () => usage.close()); // runs once every connection is done
  }

  // Everywhere, before anything else: OpenAI-shaped errors and 404s, CORS, the upstream pool.
  await app.register(errorsPlugin, { bodyLimit: config.bodyLimit });
  if (config.corsAllowOrigin !== null) await app.register(corsPlugin, { origins: config.corsAllowOrigin });
  await app.register(proxyPlugin, { config, usage, ...(usage === null ? {} : { clientClosed: recordClientClosed(usage) }) });
  await app.register(requestLogPlugin);

  // Public: no key. /metrics: the admin key or a local scraper.
  await app.register(healthRoutes);
  await app.register(metricsRoutes, { recorder: usage, adminKey: config.adminKey });

  // Everything else needs a key: auth (onRequest, before the body is read) → JSON body → policy
  // (model allowed for this key?) → routes; every answer in this scope is a usage record.
  registry.start(app.log);
  app.addHook('onClose', async () => registry.stop());
  await app.register(async function authenticated(api) {
    if (usage !== null) await api.register(usagePlugin, { recorder: usage });
    await api.register(authPlugin, { registry });
    await api.register(jsonBodyPlugin);
    await api.register(policyPlugin);
    await api.register(v1Routes);
  });

  // The admin API has its own key and exists only when GATEWAY_ADMIN_KEY is set.
  if (config.adminKey !== '' && registry.store !== undefined) {
    await app.register(adminRoutes, { prefix: '/admin', adminKey: config.adminKey, registry, store: registry.store, usage: new UsageStore(registry.store.db) });
  }

  return app;
}
