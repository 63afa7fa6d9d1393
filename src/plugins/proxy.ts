// The way to llama-server, as Fastify sees it: the Upstream (proxy/upstream.ts: two connection
// pools and forward()) decorated as `app.upstream` for the routes and the gateway's own calls, and
// ended when the app closes. Usage accounting attaches to it when it registers (plugins/usage.ts).
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config.js';
import { Upstream } from '../proxy/upstream.js';
import type { Exchange } from '../usage/exchange.js';

declare module 'fastify' {
  interface FastifyInstance {
    upstream: Upstream;
  }
  interface FastifyRequest {
    /** The proxied exchange's usage state (null when not proxied or accounting is off). */
    exchange: Exchange | null;
  }
}

export default fp(
  async function proxyPlugin(app: FastifyInstance, opts: { config: Config }) {
    const upstream = new Upstream(opts.config);
    app.decorate('upstream', upstream);
    app.decorateRequest('exchange', null);
    // In-flight streams are done (or cut by the shutdown grace timer) when onClose runs; the usage
    // plugin's hooks (registered later) ran before this one, so the completer's calls are done.
    app.addHook('onClose', async () => {
      await upstream.destroy();
    });
  },
  { name: 'proxy', fastify: '5.x' },
);
