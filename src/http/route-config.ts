// A request's route config (`kind`, `queued`, and the `url` Fastify puts there), read once per
// request: Fastify 5 builds a new `request.routeOptions` object (a dozen fields, and a constraint
// lookup) on every read, and the policy, admission and usage hooks each need it.
import type { FastifyRequest } from 'fastify';

type RouteConfig = FastifyRequest['routeOptions']['config'];

declare module 'fastify' {
  interface FastifyRequest {
    /** routeConfig()'s cache (decorated in app.ts) */
    routeConfigSeen: RouteConfig | null;
  }
}

export function routeConfig(request: FastifyRequest): RouteConfig {
  return (request.routeConfigSeen ??= request.routeOptions.config);
}
