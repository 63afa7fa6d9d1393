// CORS for browser chat apps, answered by the gateway alone (llama-server's own headers, which
// reflect any Origin with credentials, are dropped by the proxy). Registered only when
// CORS_ALLOW_ORIGIN is set. A root onRequest hook, so it runs before auth: preflights (which carry
// no key) are answered here, and every response to an allowed origin (401 and 404 included)
// carries Access-Control-Allow-Origin, so the app can show the error.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { CorsOrigins } from '../config.js';

// What a browser client of this API sends: OpenAI and Anthropic SDKs, plus x-my-llm-key (a header
// some frontends add for a Cloudflare WAF rule; the gateway never needs it and never forwards it).
const ALLOWED_HEADERS = new Set([
  'authorization',
  'content-type',
  'accept',
  'x-api-key',
  'x-my-llm-key',
  'openai-organization',
  'openai-project',
  'openai-beta',
  'anthropic-version',
  'anthropic-beta',
  'anthropic-dangerous-direct-browser-access',
]);
const ALLOWED_HEADER_PREFIX = 'x-stainless-'; // the SDKs' x-stainless-os, -lang, -retry-count, …
const ALLOWED_METHODS = 'GET, POST, OPTIONS';
const EXPOSED_HEADERS =
  'x-request-id, retry-after, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens';
const PREFLIGHT_MAX_AGE = '600';

/** The requested headers this gateway allows, as a header value. */
function allowedRequestHeaders(requested: string | undefined): string {
  if (requested === undefined) return '';
  const allowed: string[] = [];
  for (const token of requested.split(',')) {
    const name = token.trim().toLowerCase();
    if (ALLOWED_HEADERS.has(name) || name.startsWith(ALLOWED_HEADER_PREFIX)) allowed.push(name);
  }
  return allowed.join(', ');
}

export default fp(
  async function corsPlugin(app: FastifyInstance, opts: { origins: Exclude<CorsOrigins, null> }) {
    const anyOrigin = opts.origins === '*';
    const origins = new Set(anyOrigin ? [] : opts.origins);

    app.addHook('onRequest', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      // Shared caches must not serve one origin's answer (or a no-Origin answer) to another.
      if (!anyOrigin) reply.header('vary', 'Origin');
      const origin = request.headers.origin;
      if (origin === undefined) {
        done();
        return;
      }
      const allowed = anyOrigin || origins.has(origin);
      const preflight = request.method === 'OPTIONS' && request.headers['access-control-request-method'] !== undefined;
      if (allowed) reply.header('access-control-allow-origin', anyOrigin ? '*' : origin);
      if (!preflight) {
        if (allowed) reply.header('access-control-expose-headers', EXPOSED_HEADERS);
        done();
        return;
      }
      // A preflight never needs a key and never reaches upstream. A disallowed origin gets an
      // answer without CORS headers, which the browser treats as a refusal.
      if (allowed) {
        reply
          .header('access-control-allow-methods', ALLOWED_METHODS)
          .header('access-control-allow-headers', allowedRequestHeaders(request.headers['access-control-request-headers']))
          .header('access-control-max-age', PREFLIGHT_MAX_AGE);
      }
      reply.code(204).send();
    });
  },
  { name: 'cors', fastify: '5.x' },
);
