// Who is calling. An onRequest hook, so it runs before a byte of the body is read: a request
// without a valid key is answered 401 and never parsed, never forwarded. A stored key may also be
// disabled, expired, or kept to certain browser origins (per-key CORS): checked here too, since
// none of them needs the body.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import fp from 'fastify-plugin';
import { AUTH_BRAKE, GatewayError, INVALID_API_KEY, KEY_DISABLED, KEY_EXPIRED, ORIGIN_NOT_ALLOWED } from '../errors.js';
import { clientIp, isLoopback } from '../lib/client-ip.js';
import { digestKey, type KeyIdentity } from '../lib/key-index.js';
import type { KeyRegistry } from '../lib/key-registry.js';
import type { AuthBrake } from '../lib/limits.js';
import { sendError } from './errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The key this request authenticated with (null before auth or on public routes). */
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

export default fp(
  async function authPlugin(app: FastifyInstance, opts: { registry: KeyRegistry; brake?: AuthBrake; trustProxy?: boolean }) {
    const { registry, brake } = opts;
    const trustProxy = opts.trustProxy === true;
    const index = registry.index;
    app.decorateRequest('apiKey', null);
    app.addHook('onRequest', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      // An address that sent too many wrong keys waits, whatever it sends now (no more guesses).
      // Without GATEWAY_TRUST_PROXY a tunnel's requests all come from loopback: braking that one
      // address would lock every user out, so loopback is exempt then.
      const ip = brake === undefined ? '' : clientIp(request, trustProxy);
      const braked = brake !== undefined && (trustProxy || !isLoopback(ip));
      if (braked) {
        const wait = brake.blockedFor(ip, Date.now());
        if (wait > 0) {
          const seconds = Math.ceil(wait / 1000);
          reply.header('retry-after', String(seconds));
          return refuse(request, reply, AUTH_BRAKE(seconds));
        }
      }
      const key = presentedKey(request);
      const identity = key === undefined ? undefined : index.verify(key);
      if (identity === undefined) {
        if (braked && brake.fail(ip, Date.now())) request.log.warn({ ip }, 'too many wrong API keys from this address: blocked for a while');
        return refuse(request, reply, INVALID_API_KEY);
      }
      if (identity.fromDb) {
        if (!identity.enabled) return refuse(request, reply, KEY_DISABLED);
        const now = Date.now();
        if (identity.expiresAt !== null && now >= identity.expiresAt) return refuse(request, reply, KEY_EXPIRED(identity.expiresAt));
        const origin = request.headers.origin;
        // Only browsers send Origin; a key kept to some sites refuses every other site.
        if (identity.origins !== null && origin !== undefined && !identity.origins.has(origin)) return refuse(request, reply, ORIGIN_NOT_ALLOWED);
        registry.markUsed(identity, now);
      }
      request.apiKey = identity;
      done();
    });
  },
  { name: 'auth', fastify: '5.x' },
);
