// What an authenticated key may do with its request: a key kept to certain models may only name
// those in the body's "model" (a request naming none would get llama-server's default model, so it
// is refused too). Runs after the body is parsed, before anything is forwarded.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { MODEL_NOT_ALLOWED } from '../errors.js';
import type { JsonBody } from '../proxy/json-body.js';

export default fp(
  async function policyPlugin(app: FastifyInstance) {
    app.addHook('preHandler', (request: FastifyRequest, _reply: FastifyReply, done: (err?: Error) => void) => {
      const models = request.apiKey?.models;
      const body = request.body as JsonBody | undefined;
      if (models === null || models === undefined || body === undefined) {
        done();
        return;
      }
      const model = body.json.model;
      done(typeof model === 'string' && models.has(model) ? undefined : MODEL_NOT_ALLOWED(model));
    });
  },
  { name: 'policy', fastify: '5.x', dependencies: ['check-key', 'json-body'] },
);
