// Request bodies for the proxied routes. llama-server reads every body as JSON whatever its
// Content-Type (curl -d sends form-urlencoded), so we do too; but we keep the bytes as received
// and forward those, never a re-serialisation. Broken JSON gets a gateway 400 here instead of
// llama-server's 500 that echoes parser internals. So do invalid UTF-8 (llama-server: 500), nesting
// deeper than MAX_JSON_DEPTH (llama-server: SIGSEGV on very deep bodies) and a `model` that is not
// a string or is longer than any model id (it would be kept whole in records and metrics labels).
import { isUtf8 } from 'node:buffer';
import type { FastifyBodyParser, FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import {
  ARRAY_TOO_LONG,
  BODY_MISSING,
  BODY_NOT_OBJECT,
  BODY_TOO_DEEP,
  INVALID_JSON,
  INVALID_TYPE,
  INVALID_UTF8,
  LONE_SURROGATE,
  NUMBER_NOT_FINITE,
  STRING_TOO_LONG,
} from '../errors.js';
import { MAX_ARRAY_ITEMS, MAX_JSON_DEPTH, MAX_MODEL_LENGTH, TASK_ARRAYS, nestedDeeperThan, unportableValue } from '../http/client-input.js';
import type { JsonBody } from '../proxy/json-body.js';

const TOO_DEEP = BODY_TOO_DEEP(MAX_JSON_DEPTH);

const parseJsonBody: FastifyBodyParser<Buffer> = (_request, raw, done) => {
  if (raw.length === 0) {
    done(BODY_MISSING);
    return;
  }
  // Node would turn bad bytes into U+FFFD and parse, but the bytes forwarded are the raw ones.
  if (!isUtf8(raw)) {
    done(INVALID_UTF8);
    return;
  }
  if (nestedDeeperThan(raw, MAX_JSON_DEPTH)) {
    done(TOO_DEEP);
    return;
  }
  let json: unknown;
  const text = raw.toString('utf8');
  try {
    json = JSON.parse(text);
  } catch (err) {
    done(INVALID_JSON((err as Error).message));
    return;
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) {
    done(BODY_NOT_OBJECT);
    return;
  }
  // null is taken as absent, as llama-server does.
  const model = (json as Record<string, unknown>).model;
  if (model !== undefined && model !== null) {
    if (typeof model !== 'string') {
      done(INVALID_TYPE('model', 'a string', model));
      return;
    }
    if (model.length > MAX_MODEL_LENGTH) {
      done(STRING_TOO_LONG('model', MAX_MODEL_LENGTH, model.length));
      return;
    }
  }
  // One llama-server task per item, which it does not stop when the client leaves.
  for (const field of TASK_ARRAYS) {
    const items = (json as Record<string, unknown>)[field];
    if (Array.isArray(items) && items.length > MAX_ARRAY_ITEMS) {
      done(ARRAY_TOO_LONG(field, MAX_ARRAY_ITEMS, items.length));
      return;
    }
  }
  const unportable = unportableValue(text, json);
  if (unportable !== undefined) {
    done(unportable === 'lone_surrogate' ? LONE_SURROGATE : NUMBER_NOT_FINITE);
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
