// Request bodies for the proxied routes. llama-server reads every body as JSON whatever its
// Content-Type (curl -d sends form-urlencoded), so we do too; but we keep the bytes as received
// and forward those, never a re-serialisation. Broken JSON gets a gateway 400 here instead of
// llama-server's 500 that echoes parser internals.
import type { FastifyBodyParser, FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import { BODY_MISSING, BODY_NOT_OBJECT, INVALID_JSON } from '../errors.js';
import type { JsonBody } from './proxy.js';

const parseJsonBody: FastifyBodyParser<Buffer> = (_request, raw, done) => {
  if (raw.length === 0) {
    done(BODY_MISSING);
    return;
  }
  let json: unknown;
  try {
    json = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    done(INVALID_JSON((err as Error).message));
    return;
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    done(BODY_NOT_OBJECT);
    return;
  }
  const body: JsonBody = { raw, json: json as Record<string, unknown> };
  done(null, body);
};

export default fp(
  async function jsonBodyPlugin(app: FastifyInstance) {
    app.removeAllContentTypeParsers();
    // '*' also catches a body sent without any Content-Type.
    app.addContentTypeParser('*', { parseAs: 'buffer' }, parseJsonBody);
  },
  { name: 'json-body', fastify: '5.x' },
);
