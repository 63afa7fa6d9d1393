// Routing by model (issue 14): which llama-servers may answer a request. After policy (the key may
// use the model), before admission (which waits for a slot on one of those servers).
//   one server         every request goes to it, whatever its "model" says (what llama-server
//                      itself does with one model: it ignores the name), with no lookup at all
//   one model served   (on one server or several) a name no server knows still goes to it, and so
//                      does a body with no "model": clients that send "gpt-4o" keep working
//   several models     the name must be an id or alias some server reports (GET /v1/models);
//                      else 404 model_not_found listing the models this key may use; no "model"
//                      at all → 400 model_required with the same list
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { MODEL_NOT_FOUND, MODEL_REQUIRED, UPSTREAMS_STARTING } from '../errors.js';
import type { JsonBody } from '../proxy/json-body.js';
import type { Route, UpstreamSet } from '../upstreams/upstream-set.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The servers that may answer this request (set by the route plugin for requests with a body). */
    target: Route | null;
  }
}

/** The model names a key may use now: every name served, or those of its list that are served. */
function modelsFor(set: UpstreamSet, allowed: ReadonlySet<string> | null | undefined): string[] {
  const served = set.modelIds();
  return allowed === null || allowed === undefined ? [...served] : served.filter((id) => allowed.has(id));
}

export default fp(
  async function routePlugin(app: FastifyInstance) {
    const set = app.upstreams;
    app.decorateRequest('target', null);
    // One server: one route, built once (its "model" is whatever the body names).
    const only = set.nodes.length === 1 ? set.nodes[0]! : undefined;
    const single: Route | null = only === undefined ? null : { model: '', nodes: [only] };
    app.addHook('preHandler', (request: FastifyRequest, _reply: FastifyReply, done: (err?: Error) => void) => {
      const body = request.body as JsonBody | undefined;
      if (body === undefined) return done();
      if (single !== null) {
        request.target = single;
        return done();
      }
      const model = body.json.model;
      const route = (typeof model === 'string' ? set.resolve(model) : undefined) ?? set.defaultRoute;
      if (route !== undefined) {
        request.target = route;
        return done();
      }
      if (set.modelIds().length === 0) return done(UPSTREAMS_STARTING);
      const available = modelsFor(set, request.apiKey?.models);
      done(typeof model === 'string' ? MODEL_NOT_FOUND(model, available) : MODEL_REQUIRED(available));
    });
  },
  { name: 'route', fastify: '5.x', dependencies: ['proxy', 'json-body'] },
);
