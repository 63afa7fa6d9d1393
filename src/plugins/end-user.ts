// Sets request.endUser: who inside the key made the request, read from where GATEWAY_END_USER says
// (usage/end-user.ts). Registered in the authenticated scope right after the body parser, so its
// preHandler runs before the policy and admission (per-user budgets read it) and the usage record
// carries it. Cheap: the reader is built once; per request it reads one header per header source
// and a body field only when one is configured and present. GATEWAY_END_USER=off: no hook at all.
// A request refused before its body was read (a disabled or expired key, a wrong origin, a broken
// body) records no end user.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config.js';
import type { JsonBody } from '../proxy/json-body.js';
import { endUserReader } from '../usage/end-user.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The end user inside the key (the client's word, for accounting only), or null. */
    endUser: string | null;
  }
}

export default fp(
  async function endUserPlugin(app: FastifyInstance, opts: { config: Config }) {
    app.decorateRequest('endUser', null);
    if (opts.config.endUser.length === 0) return;
    const read = endUserReader(opts.config.endUser);
    app.addHook('preHandler', (request: FastifyRequest, _reply: FastifyReply, done: () => void) => {
      request.endUser = read(request.headers, (request.body as JsonBody | undefined)?.json);
      done();
    });
  },
  { name: 'end-user', fastify: '5.x', dependencies: ['check-key', 'json-body'] },
);
