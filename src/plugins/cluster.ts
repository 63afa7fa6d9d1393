// What several gateways share (issue 17), as the app holds it: the Redis link (GATEWAY_REDIS_URL;
// cluster/redis-link.ts), decorated as `app.redis` (null without one) for the shared counters and
// the shared slots (plugins/admission.ts), /health and /metrics. Each gateway process has an id
// (`app.gatewayId`, host:pid:random) that names its slot leases and concurrency entries in Redis,
// so what a dead process held can be told apart and expires with its leases.
// Registered before admission, so it closes after it: the last lease is given back before the
// link goes.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config.js';
import { RedisLink } from '../cluster/redis-link.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** The Redis several gateways share (null: GATEWAY_REDIS_URL unset, everything counted in this process). */
    redis: RedisLink | null;
    /** This process among the gateways: host:pid:random, unique per start. */
    gatewayId: string;
  }
}

/** How long a gateway waits for Redis at start before it serves anyway (GATEWAY_REDIS_DOWN decides how). */
const START_WAIT_MS = 3000;

export default fp(
  async function clusterPlugin(app: FastifyInstance, opts: { config: Config }) {
    app.decorate('gatewayId', `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`);
    const url = opts.config.redisUrl;
    if (url === '') {
      app.decorate('redis', null);
      return;
    }
    const link = new RedisLink(url, app.log);
    app.decorate('redis', link);
    try {
      await link.ready(START_WAIT_MS);
    } catch (err) {
      // Not fatal: the gateway serves by GATEWAY_REDIS_DOWN and shares again once Redis answers.
      app.log.error({ redis: 'down', error: (err as Error).message }, 'Redis cannot be reached at start');
    }
    app.addHook('onClose', () => link.close());
  },
  { name: 'cluster', fastify: '5.x' },
);
