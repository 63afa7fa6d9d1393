// Who is calling, in two parts:
//   auth (root)     the AuthGuard every credential check goes through (http/auth-guard.ts: one
//                   failed-auth brake, one count of refusals; /admin and /metrics use it too) and
//                   the live key registry (keys/key-registry.ts), polled for changes made elsewhere;
//                   both built, decorated and stopped here.
//   check-key       the authenticated scope's onRequest hook, so it runs before a byte of the body
//                   is read: a request without a valid key is answered 401 and never parsed, never
//                   forwarded. A stored key may also be disabled, expired, or kept to certain
//                   browser origins (per-key CORS): checked here too, since none needs the body.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config.js';
import { KEY_DISABLED, KEY_EXPIRED, ORIGIN_NOT_ALLOWED } from '../errors.js';
import { AuthBrake } from '../admission/auth-brake.js';
import { SharedBrake } from '../cluster/shared-brake.js';
import { AuthGuard, presentedKey } from '../http/auth-guard.js';
import type { KeyIdentity } from '../keys/key-index.js';
import type { KeyRegistry } from '../keys/key-registry.js';

/** How often the brake forgets addresses whose block or count has run out. */
const BRAKE_SWEEP_MS = 60_000;

declare module 'fastify' {
  interface FastifyInstance {
    /** Every credential check's brake and refusal count (auth, /admin, /metrics). */
    authGuard: AuthGuard;
    /** The keys the gateway accepts now (LLM_API_KEYS and the key database). */
    keyRegistry: KeyRegistry;
  }
  interface FastifyRequest {
    /**
     * The key this request authenticated with (null before auth or on public routes); also set
     * when a known key was refused (disabled, expired, origin), so its usage record names it.
     */
    apiKey: KeyIdentity | null;
  }
}

export default fp(
  async function authPlugin(app: FastifyInstance, opts: { config: Config; registry: KeyRegistry }) {
    const { config, registry } = opts;
    const brake = new AuthBrake(config.authFailLimit, config.authBlockMs);
    // Several gateways (GATEWAY_REDIS_URL): failures also counted in Redis, blocks shared.
    const redis = app.hasDecorator('redis') ? app.redis : null;
    const shared =
      redis === null
        ? null
        : new SharedBrake({
            link: redis,
            prefix: config.redisPrefix,
            brake,
            limit: config.authFailLimit,
            blockMs: config.authBlockMs,
            log: app.log,
          });
    app.decorate('authGuard', new AuthGuard(brake, config.trustProxy));
    app.decorate('keyRegistry', registry);
    const sweep = setInterval(() => brake.sweep(Date.now()), BRAKE_SWEEP_MS);
    sweep.unref();
    registry.start(app.log);
    // The registry's last-used times are written at close, while the database is still checkpointed
    // (the usage plugin, registered earlier, closes after this).
    app.addHook('onClose', async () => {
      clearInterval(sweep);
      shared?.close();
      registry.stop();
    });
  },
  { name: 'auth', fastify: '5.x' },
);

export const checkKey = fp(
  async function checkKeyPlugin(app: FastifyInstance) {
    const { keyRegistry: registry, authGuard: guard } = app;
    const index = registry.index;
    app.decorateRequest('apiKey', null);
    app.addHook('onRequest', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      const ip = guard.address(request);
      if (guard.refuseBlocked(request, reply, ip)) return;
      const key = presentedKey(request);
      const identity = key === undefined ? undefined : index.verify(key);
      if (identity === undefined) return guard.refuseWrong(request, reply, ip, 'invalid_key');
      if (identity.fromDb) {
        if (!identity.enabled) return guard.refuseKnown(request, reply, identity, 'disabled', KEY_DISABLED);
        const now = Date.now();
        if (identity.expiresAt !== null && now >= identity.expiresAt)
          return guard.refuseKnown(request, reply, identity, 'expired', KEY_EXPIRED(identity.expiresAt));
        const origin = request.headers.origin;
        // Only browsers send Origin; a key kept to some sites refuses every other site.
        if (identity.origins !== null && origin !== undefined && !identity.origins.has(origin))
          return guard.refuseKnown(request, reply, identity, 'origin', ORIGIN_NOT_ALLOWED);
        registry.markUsed(identity, now);
      }
      request.apiKey = identity;
      done();
    });
  },
  { name: 'check-key', fastify: '5.x', dependencies: ['auth'] },
);
