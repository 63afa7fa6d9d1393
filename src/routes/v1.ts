// The OpenAI-compatible surface, and nothing else: an explicit allowlist. Every other path (the
// llama-server operator routes /slots, /props, /metrics, /lora-adapters, /tools, /cors-proxy,
// /v1/stream…, /models, /predict, the web UI) answers the gateway's 404 without touching upstream.
// Each route forwards to its own canonical path, so path tricks (/v1/../slots, //slots, %2e%2e)
// can only miss a route, never reach another one upstream, and query strings are dropped.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { BODY_MISSING, MODEL_NOT_FOUND, UPSTREAM_BAD_RESPONSE } from '../errors.js';
import type { RouteKind } from '../usage/exchange.js';
import { copyResponseHeaders } from '../proxy/headers.js';
import { LIGHT_KINDS } from '../proxy/upstream.js';
import type { UpstreamSet } from '../upstreams/upstream-set.js';

/** The forwarded POST routes and the API each speaks (where its token numbers are). */
const POST_ROUTES: readonly (readonly [string, RouteKind])[] = [
  ['/v1/chat/completions', 'chat'],
  ['/v1/completions', 'completions'],
  ['/v1/embeddings', 'embeddings'],
  ['/v1/rerank', 'rerank'],
  ['/v1/responses', 'responses'],
  ['/v1/messages', 'messages'],
  ['/v1/messages/count_tokens', 'count_tokens'],
  // llama-server's token counting for the other two APIs ({"input_tokens":N}); no usage to bill.
  ['/v1/chat/completions/input_tokens', 'count_tokens'],
  ['/v1/responses/input_tokens', 'count_tokens'],
  // OpenAI's audio upload (multipart/form-data: json-body.ts reads its "model"), forwarded as sent.
  ['/v1/audio/transcriptions', 'transcriptions'],
];

interface ModelEntry {
  id?: unknown;
  aliases?: unknown;
  name?: unknown;
  model?: unknown;
}

interface ModelList {
  data?: unknown;
  models?: unknown;
}

function parseModelList(text: string): ModelList & { data: ModelEntry[] } {
  let list: ModelList;
  try {
    list = JSON.parse(text) as ModelList;
  } catch {
    throw UPSTREAM_BAD_RESPONSE;
  }
  if (list === null || typeof list !== 'object' || !Array.isArray(list.data)) throw UPSTREAM_BAD_RESPONSE;
  return list as ModelList & { data: ModelEntry[] };
}

function isModel(m: ModelEntry, id: string): boolean {
  return m.id === id || (Array.isArray(m.aliases) && m.aliases.includes(id));
}

/** A key kept to certain models sees only those: data[] by id or alias, llama-server's models[] by model or name. */
function keepAllowed<L extends ModelList & { data: readonly ModelEntry[] }>(list: L, allowed: ReadonlySet<string>): L {
  const data = list.data.filter(
    (m) => (typeof m.id === 'string' && allowed.has(m.id)) || (Array.isArray(m.aliases) && m.aliases.some((a) => allowed.has(a as string))),
  );
  if (!Array.isArray(list.models)) return { ...list, data };
  const models = (list.models as ModelEntry[]).filter(
    (m) => (typeof m.model === 'string' && allowed.has(m.model)) || (typeof m.name === 'string' && allowed.has(m.name)),
  );
  return { ...list, models, data };
}

/**
 * The union of every server's /v1/models (upstreams/upstream-set.ts): data[] deduplicated by id, and
 * llama-server's Ollama-style models[] (deduplicated by model) when some server sends one, in
 * llama-server's key order, so one server's list comes out as it sent it.
 */
function unionList(set: UpstreamSet): ModelList & { object: 'list'; data: readonly ModelEntry[] } {
  const ollama = set.ollamaModels();
  return ollama.length > 0 ? { models: ollama, object: 'list', data: set.modelEntries() } : { object: 'list', data: set.modelEntries() };
}

const JSON_TYPE = 'application/json; charset=utf-8';

export default async function v1Routes(app: FastifyInstance): Promise<void> {
  const upstream = app.upstream;
  const failover = app.failover;

  for (const [path, kind] of POST_ROUTES) {
    // Generation routes take their turn in the fair queue; counting tokens is cheap and waits in
    // the light queue, never behind generations.
    // Sent to the server admission gave it (request.backend); one that fails before its answer
    // started may be sent once more (app.failover, admission/placement.ts).
    app.post(path, { config: { queued: LIGHT_KINDS.has(kind) ? 'light' : true, kind } }, (request: FastifyRequest, reply: FastifyReply) => {
      if (request.body === undefined) throw BODY_MISSING;
      return (request.backend?.client ?? upstream).forward(request, reply, path, kind, failover);
    });
  }

  // The model list is the union of what every server told the gateway (upstreams/), serialised
  // once per change; it needs no upstream call and no queue. Until some server has told its models
  // (a fresh gateway, or discovery off) the first server's list is read with the gateway's own GET,
  // which concurrent callers share: a burst costs one upstream call (in the light queue one key's
  // 64 concurrent lists were refused 429 past its 20 waiting).
  const set = app.upstreams;
  let union = { version: -1, text: '' };
  app.get('/v1/models', async (request: FastifyRequest, reply: FastifyReply) => {
    const allowed = request.apiKey?.models;
    if (set.discovered) {
      if (allowed !== null && allowed !== undefined)
        return reply.header('content-type', JSON_TYPE).send(JSON.stringify(keepAllowed(unionList(set), allowed)));
      if (union.version !== set.version) union = { version: set.version, text: JSON.stringify(unionList(set)) };
      return reply.header('content-type', JSON_TYPE).send(union.text);
    }
    const answer = await upstream.get('/v1/models');
    if (allowed === null || allowed === undefined) {
      reply.code(answer.statusCode);
      const gatewayVary = reply.getHeader('vary'); // CORS: merged with llama-server's, as the proxy does
      for (const [name, value] of Object.entries(copyResponseHeaders(answer.headers, {})))
        if (value !== undefined) reply.header(name, value);
      const upstreamVary = answer.headers.vary;
      if (gatewayVary !== undefined && upstreamVary !== undefined) reply.header('vary', `${String(gatewayVary)}, ${String(upstreamVary)}`);
      return reply.send(answer.text);
    }
    // A key kept to certain models sees only those.
    if (answer.statusCode !== 200) return reply.code(answer.statusCode).header('content-type', JSON_TYPE).send(answer.text);
    return reply.header('content-type', JSON_TYPE).send(JSON.stringify(keepAllowed(parseModelList(answer.text), allowed)));
  });

  // llama-server has no /v1/models/{id}; the SDK's models.retrieve() expects one.
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (request, reply) => {
    const id = request.params.id;
    const allowed = request.apiKey?.models;
    if (allowed !== null && allowed !== undefined && !allowed.has(id)) throw MODEL_NOT_FOUND(id);
    if (set.discovered) {
      const entry = set.entryFor(id);
      if (entry === undefined) throw MODEL_NOT_FOUND(id);
      return reply.header('content-type', JSON_TYPE).send(JSON.stringify(entry));
    }
    const answer = await upstream.get('/v1/models');
    if (answer.statusCode !== 200) return reply.code(answer.statusCode).header('content-type', JSON_TYPE).send(answer.text);
    const model = parseModelList(answer.text).data.find((m) => isModel(m, id));
    if (model === undefined) throw MODEL_NOT_FOUND(id);
    return reply.header('content-type', JSON_TYPE).send(JSON.stringify(model));
  });
}
