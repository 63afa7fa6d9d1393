// Every credential check at the gateway's door (client keys in the auth plugin, the admin key on
// /admin and /metrics) goes through one AuthGuard: one failed-auth brake (admission/auth-brake.ts),
// with its own bounded memory, and one count of refusals for /metrics. Here too: how a key is
// presented (Bearer or x-api-key) and the constant-time admin key check.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { timingSafeEqual } from 'node:crypto';
import { AUTH_BRAKE, INVALID_API_KEY, sendError, type GatewayError } from '../errors.js';
import type { AuthBrake } from '../admission/auth-brake.js';
import { clientIp, isLoopback } from './client-ip.js';
import { digestKey, type KeyIdentity } from '../keys/key-index.js';
import { CounterFamily } from '../usage/metric-family.js';

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
type AuthFailureReason = 'invalid_key' | 'blocked' | 'disabled' | 'expired' | 'origin' | 'admin';
const AUTH_FAILURE_REASONS: readonly AuthFailureReason[] = ['invalid_key', 'blocked', 'disabled', 'expired', 'origin', 'admin'];

/**
 * The failed-auth brake as every credential check applies it, and the count of refusals by reason.
 * A refusal that names no known key (a wrong key, a blocked address) is only counted here, never
 * written as a usage row: a flood of guesses costs an addition, not a database row each.
 */
export class AuthGuard {
  /** Refusals by reason, for /metrics (every reason from 0, so rate() works from the start). */
  readonly failures = new CounterFamily(
    'llm_gateway_auth_failures_total',
    'Requests refused at a credential check, by reason (a wrong key, a blocked address, a disabled, expired or misused key, a wrong admin key)',
    ['reason'],
  );
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
    if (ip !== '' && this.#brake.fail(ip, Date.now()))
      request.log.warn({ ip }, 'too many wrong API keys from this address: blocked for a while');
    refuse(request, reply, INVALID_API_KEY);
  }

  /**
   * A known key refused (disabled, expired, another site): not a guess, so the brake does not count
   * it; the request keeps the key, so its usage record tells the owner the key is still in use.
   */
  refuseKnown(
    request: FastifyRequest,
    reply: FastifyReply,
    identity: KeyIdentity,
    reason: 'disabled' | 'expired' | 'origin',
    err: GatewayError,
  ): void {
    this.failures.inc(1, reason);
    request.apiKey = identity;
    refuse(request, reply, err);
  }
}
