// Who is calling. An onRequest hook, so it runs before a byte of the body is read: a request
// without a valid key is answered 401 and never parsed, never forwarded. A stored key may also be
// disabled, expired, or kept to certain browser origins (per-key CORS): checked here too, since
// none of them needs the body. Every credential check in the gateway (here, and the admin key on
// /admin and /metrics) goes through one AuthGuard: one failed-auth brake, one failure counter.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import fp from 'fastify-plugin';
import { AUTH_BRAKE, GatewayError, INVALID_API_KEY, KEY_DISABLED, KEY_EXPIRED, ORIGIN_NOT_ALLOWED } from '../errors.js';
import type { AuthBrake } from '../admission/auth-brake.js';
import { clientIp, isLoopback } from '../http/client-ip.js';
import { digestKey, type KeyIdentity } from '../keys/key-index.js';
import type { KeyRegistry } from '../keys/key-registry.js';
import { CounterFamily } from '../usage/metric-family.js';
import { sendError } from './errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    /**
     * The key this request authenticated with (null before auth or on public routes); also set
     * when a known key was refused (disabled, expired, origin), so its usage record names it.
     */
    apiKey: KeyIdentity | null;
  }
}

/** The presented key: `Authorization: Bearer <key>`, else `x-api-key: <key>` (Anthropic clients). */
export function presentedKey(request: FastifyRequest): string | undefined {
  const authorization = request.headers.authorization;
  if (authorization !== undefined && authorization.length > 7 && authorization.slice(0, 7).toLowerCase() === 'bearer ') {
    return authorization.slice(7).trim();
  }
  const xApiKey = request.headers['x-api-key'];
  return typeof xApiKey === 'string' && xApiKey !== '' ? xApiKey.trim() : undefined;
}

/**
 * A check for GATEWAY_ADMIN_KEY (the admin API and /metrics): the presented key against its
 * digest, in constant time. With no admin key set, nothing passes.
 */
export function adminKeyCheck(adminKey: string): (request: FastifyRequest) => boolean {
  if (adminKey === '') return () => false;
  const adminDigest = digestKey(adminKey);
  return (request) => {
    const key = presentedKey(request);
    return key !== undefined && timingSafeEqual(digestKey(key), adminDigest);
  };
}

function hasPendingBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length'];
  return (length !== undefined && length !== '0') || request.headers['transfer-encoding'] !== undefined;
}

function refuse(request: FastifyRequest, reply: FastifyReply, err: GatewayError): void {
  if (err.statusCode === 401) reply.header('www-authenticate', 'Bearer');
  // The body is never read; close the connection instead of draining it.
  if (hasPendingBody(request)) reply.header('connection', 'close');
  sendError(reply, err);
}

/** Why a credential was refused (the `reason` label of llm_gateway_auth_failures_total). */
export type AuthFailureReason = 'invalid_key' | 'blocked' | 'disabled' | 'expired' | 'origin' | 'admin';
const AUTH_FAILURE_REASONS: readonly AuthFailureReason[] = ['invalid_key', 'blocked', 'disabled', 'expired', 'origin', 'admin'];

/**
 * The failed-auth brake as every credential check applies it, and the count of refusals by reason.
 * A refusal that names no known key (a wrong key, a blocked address) is only counted here, never
 * written as a usage row: a flood of guesses costs an addition, not a database row each.
 */
export class AuthGuard {
  /** Refusals by reason, for /metrics (every reason from 0, so rate() works from the start). */
  readonly failures = new CounterFamily('llm_gateway_auth_failures_total', 'Requests refused at a credential check, by reason (a wrong key, a blocked address, a disabled, expired or misused key, a wrong admin key)', ['reason']);
  readonly #brake: AuthBrake;
  readonly #trustProxy: boolean;

  constructor(brake: AuthBrake, trustProxy: boolean) {
    this.#brake = brake;
    this.#trustProxy = trustProxy;
    for (const reason of AUTH_FAILURE_REASONS) this.failures.inc(0, reason);
  }

  /**
   * The address the brake counts for this request, or '' when it is exempt: without
   * GATEWAY_TRUST_PROXY a tunnel's requests all come from loopback, and braking that one address
   * would lock every user out.
   */
  address(request: FastifyRequest): string {
    const ip = clientIp(request, this.#trustProxy);
    return this.#trustProxy || !isLoopback(ip) ? ip : '';
  }

  /** An address that sent too many wrong keys waits, whatever it sends now (no more guesses): 429. */
  refuseBlocked(request: FastifyRequest, reply: FastifyReply, ip: string): boolean {
    if (ip === '') return false;
    const wait = this.#brake.blockedFor(ip, Date.now());
    if (wait === 0) return false;
    const seconds = Math.ceil(wait / 1000);
    this.failures.inc(1, 'blocked');
    reply.header('retry-after', String(seconds));
    refuse(request, reply, AUTH_BRAKE(seconds));
    return true;
  }

  /** A wrong or missing credential: counted against the address (it may start a block), then 401. */
  refuseWrong(request: FastifyRequest, reply: FastifyReply, ip: string, reason: 'invalid_key' | 'admin'): void {
    this.failures.inc(1, reason);
    if (ip !== '' && this.#brake.fail(ip, Date.now())) request.log.warn({ ip }, 'too many wrong API keys from this address: blocked for a while');
    refuse(request, reply, INVALID_API_KEY);
  }

  /**
   * A known key refused (disabled, expired, another site): not a guess, so the brake does not count
   * it; the request keeps the key, so its usage record tells the owner the key is still in use.
   */
  refuseKnown(request: FastifyRequest, reply: FastifyReply, identity: KeyIdentity, reason: 'disabled' | 'expired' | 'origin', err: GatewayError): void {
    this.failures.inc(1, reason);
    request.apiKey = identity;
    refuse(request, reply, err);
  }
}

export default fp(
  async function authPlugin(app: FastifyInstance, opts: { registry: KeyRegistry; guard: AuthGuard }) {
    const { registry, guard } = opts;
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
        if (identity.expiresAt !== null && now >= identity.expiresAt) return guard.refuseKnown(request, reply, identity, 'expired', KEY_EXPIRED(identity.expiresAt));
        const origin = request.headers.origin;
        // Only browsers send Origin; a key kept to some sites refuses every other site.
        if (identity.origins !== null && origin !== undefined && !identity.origins.has(origin)) return guard.refuseKnown(request, reply, identity, 'origin', ORIGIN_NOT_ALLOWED);
        registry.markUsed(identity, now);
      }
      request.apiKey = identity;
      done();
    });
  },
  { name: 'auth', fastify: '5.x' },
);
