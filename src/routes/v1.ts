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

const JSON_TYPE = 'application/json; charset=utf-8';

export default async function v1Routes(app: FastifyInstance): Promise<void> {
  const upstream = app.upstream;

  for (const [path, kind] of POST_ROUTES) {
    // Generation routes take their turn in the fair queue; counting tokens is cheap and waits in
    // the light queue, never behind generations.
    app.post(path, { config: { queued: LIGHT_KINDS.has(kind) ? 'light' : true } }, (request: FastifyRequest, reply: FastifyReply) => {
      if (request.body === undefined) throw BODY_MISSING;
      return upstream.forward(request, reply, path, kind);
    });
  }

  // The model list is read with the gateway's own GET, which concurrent callers share: a burst of
  // /v1/models costs one upstream call on one connection, so it needs no queue (in the light queue
  // one key's 64 concurrent lists were refused 429 past its 20 waiting).
  app.get('/v1/models', async (request: FastifyRequest, reply: FastifyReply) => {
    const allowed = request.apiKey?.models;
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
    const list = parseModelList(answer.text);
    const visible = (m: ModelEntry): boolean => [...allowed].some((id) => isModel(m, id));
    list.data = list.data.filter(visible);
    if (Array.isArray(list.models))
      list.models = (list.models as ModelEntry[]).filter(
        (m) => (typeof m.model === 'string' && allowed.has(m.model)) || (typeof m.name === 'string' && allowed.has(m.name)),
      );
    return reply.header('content-type', JSON_TYPE).send(JSON.stringify(list));
  });

  // llama-server has no /v1/models/{id}; the SDK's models.retrieve() expects one.
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (request, reply) => {
    const id = request.params.id;
    const allowed = request.apiKey?.models;
    if (allowed !== null && allowed !== undefined && !allowed.has(id)) throw MODEL_NOT_FOUND(id);
    const answer = await upstream.get('/v1/models');
    if (answer.statusCode !== 200) return reply.code(answer.statusCode).header('content-type', JSON_TYPE).send(answer.text);
    const model = parseModelList(answer.text).data.find((m) => isModel(m, id));
    if (model === undefined) throw MODEL_NOT_FOUND(id);
    return reply.header('content-type', JSON_TYPE).send(JSON.stringify(model));
  });
}
