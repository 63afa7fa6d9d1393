// Request bodies for the proxied routes. llama-server reads every body as JSON whatever its
// Content-Type (curl -d sends form-urlencoded), so we do too; but we keep the bytes as received
// and forward those, never a re-serialisation. Broken JSON gets a gateway 400 here instead of
// llama-server's 500 that echoes parser internals. So do invalid UTF-8 (llama-server: 500), nesting
// deeper than MAX_JSON_DEPTH (llama-server: SIGSEGV on very deep bodies) and a `model` that is not
// a string or is longer than any model id (it would be kept whole in records and metrics labels).
//
// One route takes a multipart/form-data upload instead (OpenAI's /v1/audio/transcriptions): its
// form is checked and its `model` (and `stream`) read into the same JsonBody shape, so the key
// policy, admission and the proxy treat it like any body; its bytes are forwarded unchanged with
// the client's Content-Type (boundary kept). Same body limit. A form sent to any other route is
// read as JSON, as before, and refused as such.
import { isUtf8 } from 'node:buffer';
import type { FastifyBodyParser, FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import {
  ARRAY_TOO_LONG,
  GRAMMAR_TOO_DEEP,
  BODY_MISSING,
  BODY_NOT_OBJECT,
  BODY_TOO_DEEP,
  FORM_FILE_MISSING,
  FORM_MALFORMED,
  FORM_MODEL_NOT_UTF8,
  FORM_NO_BOUNDARY,
  FORM_NOT_CLOSED,
  FORM_TWO_MODELS,
  INVALID_JSON,
  INVALID_TYPE,
  INVALID_UTF8,
  LONE_SURROGATE,
  NUMBER_NOT_FINITE,
  STRING_TOO_LONG,
  type GatewayError,
} from '../errors.js';
import { readForm, type FormProblem } from '../http/form-data.js';
import {
  MAX_ARRAY_ITEMS,
  MAX_GRAMMAR_DEPTH,
  MAX_JSON_DEPTH,
  MAX_MODEL_LENGTH,
  TASK_ARRAYS,
  grammarDeeperThan,
  nestedDeeperThan,
  unportableValue,
} from '../http/client-input.js';
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
  const grammar = (json as Record<string, unknown>).grammar;
  if (typeof grammar === 'string' && grammarDeeperThan(grammar, MAX_GRAMMAR_DEPTH)) {
    done(GRAMMAR_TOO_DEEP(MAX_GRAMMAR_DEPTH));
    return;
  }
  const unportable = unportableValue(text, json);
  if (unportable !== undefined) {
    done(unportable === 'lone_surrogate' ? LONE_SURROGATE : NUMBER_NOT_FINITE);
    return;
  }
  const body: JsonBody = { raw, json: json as Record<string, unknown> };
  done(null, body);
};

const FORM_REFUSED: Record<Exclude<FormProblem, 'model_too_long'>, GatewayError> = {
  no_boundary: FORM_NO_BOUNDARY,
  not_closed: FORM_NOT_CLOSED,
  malformed: FORM_MALFORMED,
  no_file: FORM_FILE_MISSING,
  two_models: FORM_TWO_MODELS,
  model_not_utf8: FORM_MODEL_NOT_UTF8,
};

const parseFormBody: FastifyBodyParser<Buffer> = (request, raw, done) => {
  // Only the transcriptions route takes a form. (routeOptions is built on each read: only
  // multipart requests pay for it.)
  if (request.routeOptions.config.kind !== 'transcriptions') {
    parseJsonBody(request, raw, done);
    return;
  }
  const form = readForm(raw, request.headers['content-type'] ?? '');
  if ('problem' in form) {
    done(form.problem === 'model_too_long' ? STRING_TOO_LONG('model', MAX_MODEL_LENGTH, form.length ?? 0) : FORM_REFUSED[form.problem]);
    return;
  }
  const body: JsonBody = { raw, json: form.json, form: true };
  done(null, body);
};

export default fp(
  async function jsonBodyPlugin(app: FastifyInstance) {
    app.removeAllContentTypeParsers();
    // '*' also catches a body sent without any Content-Type.
    app.addContentTypeParser('*', { parseAs: 'buffer' }, parseJsonBody);
    app.addContentTypeParser('multipart/form-data', { parseAs: 'buffer' }, parseFormBody);
  },
  { name: 'json-body', fastify: '5.x' },
);
