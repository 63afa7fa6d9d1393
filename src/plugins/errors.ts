// Every error the gateway answers leaves in OpenAI's shape: thrown GatewayErrors, Fastify's own
// request errors (body too large, bad content-length…), unknown routes, and anything unexpected
// (a plain 500 without internals).
// The errors themselves, and sendError, are the table in ../errors.ts.
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { GatewayError, MISSING_HOST, ROUTE_NOT_FOUND, SHUTTING_DOWN, fromFastifyError, sendError } from '../errors.js';
import { lacksHost } from '../http/malformed-http.js';

export default fp(
  async function errorsPlugin(app: FastifyInstance, opts: { bodyLimit: number }) {
    app.setErrorHandler((err: FastifyError | GatewayError, request: FastifyRequest, reply: FastifyReply) => {
      const gatewayError = err instanceof GatewayError ? err : fromFastifyError(err, opts.bodyLimit);
      if (gatewayError.statusCode >= 500) {
        // Upstream failures are logged where they happen; this one is ours.
        if (!(err instanceof GatewayError)) request.log.error({ err }, 'unhandled error');
      } else if (!(err instanceof GatewayError)) {
        request.log.info({ code: err.code, statusCode: gatewayError.statusCode }, gatewayError.message);
      }
      // A 5xx ends the connection only if the reply had already started; otherwise answer.
      if (reply.raw.headersSent) {
        reply.raw.destroy();
        return;
      }
      return sendError(reply, gatewayError);
    });

    // Shutting down (app.close() has begun): a request that still arrives on an open keep-alive
    // connection gets the gateway's 503 in OpenAI's shape, not Fastify's generic one
    // (return503OnClosing is off for this), and Fastify closes the connection after it.
    let closing = false;
    app.addHook('preClose', (done) => {
      closing = true;
      done();
    });
    app.addHook('onRequest', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      if (closing) {
        sendError(reply, SHUTTING_DOWN);
        return;
      }
      // Node's own bare 400 for this is off (app.ts, requireHostHeader), so that it is answered here.
      if (lacksHost(request)) {
        sendError(reply.header('connection', 'close'), MISSING_HOST);
        return;
      }
      done();
    });

    app.setNotFoundHandler((request: FastifyRequest, reply: FastifyReply) => {
      sendError(reply, ROUTE_NOT_FOUND(request.method, request.url));
    });
  },
  { name: 'errors', fastify: '5.x' },
);
