// One log line per finished request, as data: which key (its name — env-1… or the stored key's
// name — never the secret), route, status,
// time. Replaces Fastify's two default lines; set LOG_LEVEL=warn to drop it. The URL is logged
// without its query string (clients put keys there: ?api_key=sk-…) and cut to a sane length.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { loggablePath } from '../http/client-input.js';

/**
 * Pino's `req` serializer for the process logger (server.ts), in place of Fastify's, which logs
 * the whole URL: nothing logs `req` today (request logging is off), but any line that ever does
 * shows the path only, like the request log.
 */
export function serializeRequest(request: FastifyRequest): Record<string, unknown> {
  return { method: request.method, url: loggablePath(request.url) };
}

export default fp(
  async function requestLogPlugin(app: FastifyInstance) {
    app.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      request.log.info(
        {
          key: request.apiKey?.name,
          method: request.method,
          url: loggablePath(request.url),
          status: reply.statusCode,
          ms: Math.round(reply.elapsedTime),
        },
        'request',
      );
      done();
    });
  },
  { name: 'request-log', fastify: '5.x' },
);
