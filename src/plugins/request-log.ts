// One log line per finished request, as data: which key (its name — env-1… or the stored key's
// name — never the secret), route, status,
// time. Replaces Fastify's two default lines; set LOG_LEVEL=warn to drop it.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';

export default fp(
  async function requestLogPlugin(app: FastifyInstance) {
    app.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      request.log.info(
        { key: request.apiKey?.name, method: request.method, url: request.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) },
        'request',
      );
      done();
    });
  },
  { name: 'request-log', fastify: '5.x' },
);
