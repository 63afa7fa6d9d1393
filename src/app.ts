// buildApp(): the gateway's plugins in the order a request meets them. This order is the security
// model (DESIGN.md), so it stays here, explicit, in one list.
import Fastify, { LogController, type FastifyInstance, type FastifyServerOptions } from 'fastify';
import type { Config } from './config.js';
import { KeyRegistry } from './lib/key-registry.js';
import authPlugin from './plugins/auth.js';
import corsPlugin from './plugins/cors.js';
import errorsPlugin from './plugins/errors.js';
import jsonBodyPlugin from './plugins/json-body.js';
import policyPlugin from './plugins/policy.js';
import proxyPlugin from './plugins/proxy.js';
import requestLogPlugin from './plugins/request-log.js';
import adminRoutes from './routes/admin.js';
import healthRoutes from './routes/health.js';
import v1Routes from './routes/v1.js';

export interface BuildOptions {
  /** Fastify logger options; tests usually pass false. */
  logger?: FastifyServerOptions['logger'];
  /** Accepted client keys (LLM_API_KEYS and the key database); defaults to config.apiKeys only. */
  registry?: KeyRegistry;
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
  });

  // Everywhere, before anything else: OpenAI-shaped errors and 404s, CORS, the upstream pool.
  await app.register(errorsPlugin, { bodyLimit: config.bodyLimit });
  if (config.corsAllowOrigin !== null) await app.register(corsPlugin, { origins: config.corsAllowOrigin });
  await app.register(proxyPlugin, { config });
  await app.register(requestLogPlugin);

  // Public: no key.
  await app.register(healthRoutes);

  // Everything else needs a key: auth (onRequest, before the body is read) → JSON body → policy
  // (model allowed for this key?) → routes.
  const registry = options.registry ?? new KeyRegistry(config.apiKeys);
  registry.start(app.log);
  app.addHook('onClose', async () => registry.stop());
  await app.register(async function authenticated(api) {
    await api.register(authPlugin, { registry });
    await api.register(jsonBodyPlugin);
    await api.register(policyPlugin);
    await api.register(v1Routes);
  });

  // The admin API has its own key and exists only when GATEWAY_ADMIN_KEY is set.
  if (config.adminKey !== '' && registry.store !== undefined) {
    await app.register(adminRoutes, { prefix: '/admin', adminKey: config.adminKey, registry, store: registry.store });
  }

  return app;
}
