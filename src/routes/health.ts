// Public health routes: no key needed, so they live outside the authenticated scope.
//   GET /healthz  the gateway process is up (never calls upstream)
//   GET /health   the llama-servers' readiness, from what the gateway follows (upstreams/):
//                 {"status": "ok"|"degraded"|"loading"|"down",
//                  "upstreams": [{"name", "state", "slots"}]}   (names, never URLs or model ids: a
//                  llama-server started without -a reports its model file's path as its id)
//     200 ok        every server ready
//     200 degraded  some server is not ready, but every model it serves has a ready server
//     503 loading   some model has no ready server, but one of them is loading (or not probed yet)
//     502 down      some model has no ready or loading server (nothing answers for it)
//   A server whose models are not known yet (it never answered) counts as a model of its own.
//   With GATEWAY_REDIS_URL, also "redis": {"state": "up"|"down", "since", "error" (while down),
//   "downs", "when_down": "local"|"refuse", "decided_locally"} (never its URL, nor its address in
//   the error: "connect ECONNREFUSED"). `status` and the code stay about the llama-servers: a
//   gateway whose Redis is down still serves (local), or refuses like every other gateway on that
//   Redis would (refuse), so taking it out of a load balancer's rotation helps nothing.
import type { FastifyInstance } from 'fastify';
import type { UpstreamNode, UpstreamSet } from '../upstreams/upstream-set.js';

const JSON_TYPE = 'application/json; charset=utf-8';
const OK = '{"status":"ok"}';

type Status = 'ok' | 'degraded' | 'loading' | 'down';
const RANK: Record<Status, number> = { ok: 0, degraded: 1, loading: 2, down: 3 };
const CODE: Record<Status, number> = { ok: 200, degraded: 200, loading: 503, down: 502 };

/** How a group of servers of one model stands: ready, loading (or not probed yet), or nothing. */
function groupStatus(nodes: readonly UpstreamNode[]): Status {
  let waiting = false;
  for (const n of nodes) {
    if (n.state === 'ready') return 'degraded';
    if (n.state === 'loading' || n.state === 'unknown') waiting = true;
  }
  return waiting ? 'loading' : 'down';
}

/** The gateway's overall status: the worst over every model a server that is not ready serves. */
function healthStatus(set: UpstreamSet): Status {
  let worst: Status = 'ok';
  for (const node of set.nodes) {
    if (node.state === 'ready') continue;
    let status: Status = 'degraded';
    if (!node.modelsKnown) status = groupStatus([node]);
    else
      for (const m of node.models) {
        const s = groupStatus(set.resolve(m.id)?.nodes ?? [node]);
        if (RANK[s] > RANK[status]) status = s;
      }
    if (RANK[status] > RANK[worst]) worst = status;
  }
  return worst;
}

/**
 * The Redis status with its error told without where Redis is: this route is public, and the
 * driver's socket errors name the host and port ("connect ECONNREFUSED 10.0.0.5:6379"). What went
 * wrong is kept (the syscall and its code, the server's own answer).
 */
function withoutAddress(status: Record<string, unknown>): Record<string, unknown> {
  const error = status.error;
  if (typeof error !== 'string') return status;
  const told = error
    .replace(/^(\w+ E[A-Z_]+)\b.*$/s, '$1')
    .replace(/\[[0-9a-f:.]+\](?::\d+)?|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\b[\w-]+(?:\.[\w-]+)+:\d+\b/gi, '(address)');
  return { ...status, error: told };
}

export default async function healthRoutes(app: FastifyInstance): Promise<void> {
  const set = app.upstreams;
  const shared = app.hasDecorator('sharedCounting') ? app.sharedCounting : null;

  app.get('/healthz', (_request, reply) => {
    reply.header('content-type', JSON_TYPE).send(OK);
  });

  app.get('/health', async (_request, reply) => {
    // Servers not probed yet are asked now (concurrent callers share one probe each); without
    // background discovery every server is asked.
    await set.refresh();
    const status = healthStatus(set);
    const body = JSON.stringify({
      status,
      upstreams: set.nodes.map((n) => ({ name: n.name, state: n.state, slots: n.slots })),
      ...(shared === null ? {} : { redis: withoutAddress(shared.status()) }),
    });
    return reply.code(CODE[status]).header('content-type', JSON_TYPE).send(body);
  });
}
