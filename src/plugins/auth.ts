// Who is calling. An onRequest hook, so it runs before a byte of the body is read: a request
// without a valid key is answered 401 and never parsed, never forwarded.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { INVALID_API_KEY } from '../errors.js';
import type { KeyIdentity, KeyIndex } from '../lib/key-index.js';
import { sendError } from './errors.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The key this request authenticated with (null before auth or on public routes). */
    apiKey: KeyIdentity | null;
  }
}

/** The presented key: `Authorization: Bearer <key>`, else `x-api-key: <key>` (Anthropic clients). */
export function presentedKey(request: FastifyRequest): string | undefined {
  const authorization = request.headers.authorization;
  if (authorization !== undefined && authorization.length > 7 && authorization.slice(0, 7).toLowerCase() === 'bearer ') {
    return authorization.slice(7).trim();
  }
  const xApiKey = request.headers['x-api-key'];
  return typeof xApiKey === 'string' && xApiKey !== '' ? xApiKey.trim() : undefined;
}

function hasPendingBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length'];
  return (length !== undefined && length !== '0') || request.headers['transfer-encoding'] !== undefined;
}

export default fp(
  async function authPlugin(app: FastifyInstance, opts: { keys: KeyIndex }) {
    const keys = opts.keys;
    app.decorateRequest('apiKey', null);
    app.addHook('onRequest', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      const key = presentedKey(request);
      const identity = key === undefined ? undefined : keys.verify(key);
      if (identity === undefined) {
        reply.header('www-authenticate', 'Bearer');
        // The body is never read; close the connection instead of draining it.
        if (hasPendingBody(request)) reply.header('connection', 'close');
        sendError(reply, INVALID_API_KEY);
        return;
      }
      request.apiKey = identity;
      done();
    });
  },
  { name: 'auth', fastify: '5.x' },
);
