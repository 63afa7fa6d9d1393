// GET /metrics in Prometheus text (prom-client): requests, tokens, durations and time to first
// token from the usage records, requests in flight, upstream errors, and the process metrics.
// Only for the admin key or a local scraper: behind a Cloudflare Tunnel every request comes from
// loopback, so "local" also means no forwarding header (cloudflared adds Cf-Connecting-Ip). A local
// scrape needs no key, so it is no credential check; any other goes through the failed-auth brake
// (AuthGuard), like every credential check.
// Per-key labels use the key's name, never its secret.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { keySlotCap } from '../admission/fair-queue.js';
import { MAX_MODEL_LENGTH } from '../http/client-input.js';
import { isLoopback } from '../http/client-ip.js';
import { CounterFamily, HistogramFamily } from '../usage/metric-family.js';
import { adminKeyCheck } from '../http/auth-guard.js';
import type { UsageRecord } from '../usage/exchange.js';
import type { KeySlots } from '../admission/fair-queue.js';

const FORWARDING_HEADERS = ['cf-connecting-ip', 'x-forwarded-for', 'forwarded', 'x-real-ip'];
// A client with a key picks the "model" string; beyond this many distinct values, label "other".
const MAX_MODEL_LABELS = 50;
const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
const TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const UPSTREAM_STATES = ['unknown', 'ready', 'loading', 'down'] as const;

const STATUS_TEXT = new Map<number, string>();
function statusText(status: number): string {
  let text = STATUS_TEXT.get(status);
  if (text === undefined) STATUS_TEXT.set(status, (text = String(status)));
  return text;
}

function isLocalScrape(request: FastifyRequest): boolean {
  if (!isLoopback(request.socket.remoteAddress)) return false;
  for (const h of FORWARDING_HEADERS) if (request.headers[h] !== undefined) return false;
  return true;
}

/** Reads what the auth, usage and admission plugins decorate: app.authGuard, app.usage, app.queue, app.lightQueue. */
export default async function metricsRoutes(app: FastifyInstance, opts: { adminKey: string; keySlots: KeySlots }): Promise<void> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  // The request path's numbers: plain counters rendered at scrape time (metric-family.ts).
  const requests = new CounterFamily('llm_gateway_requests_total', 'Requests answered, by route, status and key', [
    'route',
    'status',
    'key',
  ]);
  const tokens = new CounterFamily(
    'llm_gateway_tokens_total',
    'Tokens as reported by llama-server, by key, model and kind (prompt, cached, completion)',
    ['key', 'model', 'kind'],
  );
  const duration = new HistogramFamily('llm_gateway_request_duration_seconds', 'Request duration, by route', ['route'], DURATION_BUCKETS);
  const ttft = new HistogramFamily(
    'llm_gateway_time_to_first_token_seconds',
    'Time from forwarding to the first content chunk of a stream, by route',
    ['route'],
    TTFT_BUCKETS,
  );
  const upstreamErrors = new CounterFamily(
    'llm_gateway_upstream_errors_total',
    'Requests that failed because of llama-server (unreachable, error, timeout, broken stream)',
    ['route', 'outcome'],
  );
  const clientClosed = new CounterFamily(
    'llm_gateway_client_closed_total',
    'Requests whose client left before the answer was complete (upstream cancelled)',
    ['route'],
  );
  // Per llama-server (issue 14): time to its response headers, observed by its Upstream.
  const set = app.upstreams;
  const ttfb = new HistogramFamily(
    'llm_gateway_upstream_time_to_first_byte_seconds',
    "Time from sending a request to a llama-server to its response headers (its slot's wait and prompt work), by upstream",
    ['upstream'],
    TTFT_BUCKETS,
  );
  for (const node of set.nodes) node.client.onHeaders = (seconds) => ttfb.observe(seconds, node.name);
  const guard = app.authGuard;
  const families = [requests, tokens, duration, ttft, upstreamErrors, clientClosed, ttfb, guard.failures];
  const recorder = app.usage;
  new Gauge({
    name: 'llm_gateway_requests_in_flight',
    help: 'Requests being answered by llama-server now',
    registers: [registry],
    collect() {
      this.set(recorder?.inFlight ?? 0);
    },
  });
  const queue = app.queue;
  new Gauge({
    name: 'llm_gateway_requests_waiting',
    help: 'Requests waiting in the gateway for a llama-server slot',
    registers: [registry],
    collect() {
      this.set(queue.waiting);
    },
  });
  const totalSlots = (): number => {
    let n = 0;
    for (const node of set.nodes) n += node.slots;
    return n;
  };
  new Gauge({
    name: 'llm_gateway_slots',
    help: 'Requests the gateway lets run upstream at once (the slots of every llama-server)',
    registers: [registry],
    collect() {
      this.set(totalSlots());
    },
  });
  new Gauge({
    name: 'llm_gateway_key_slots',
    help: "Most slots one key holds at once of a model's servers (GATEWAY_KEY_SLOTS; shown for all servers together); its other requests wait",
    registers: [registry],
    collect() {
      this.set(keySlotCap(opts.keySlots, totalSlots()));
    },
  });
  new Gauge({
    name: 'llm_gateway_upstream_state',
    help: 'Each llama-server: 1 for its state now (unknown, ready, loading, down), 0 for the others',
    labelNames: ['upstream', 'state'],
    registers: [registry],
    collect() {
      for (const node of set.nodes)
        for (const state of UPSTREAM_STATES) this.set({ upstream: node.name, state }, node.state === state ? 1 : 0);
    },
  });
  new Gauge({
    name: 'llm_gateway_upstream_slots',
    help: "Each llama-server's slots (its /props total_slots, GATEWAY_MAX_INFLIGHT or the upstreams file)",
    labelNames: ['upstream'],
    registers: [registry],
    collect() {
      for (const node of set.nodes) this.set({ upstream: node.name }, node.slots);
    },
  });
  new Gauge({
    name: 'llm_gateway_upstream_in_flight',
    help: 'Requests the gateway has running on each llama-server now (its slots taken)',
    labelNames: ['upstream'],
    registers: [registry],
    collect() {
      for (const node of set.nodes) this.set({ upstream: node.name }, queue.runningOn(node));
    },
  });
  new Counter({
    name: 'llm_gateway_upstream_failures_total',
    help: 'Requests a llama-server failed before its answer started (refused, reset, 502/503); a request is sent once more where it can be',
    labelNames: ['upstream'],
    registers: [registry],
    collect() {
      this.reset();
      for (const node of set.nodes) this.inc({ upstream: node.name }, node.failures);
    },
  });
  new Gauge({
    name: 'llm_gateway_model_requests_waiting',
    help: 'Requests waiting for a slot on a server of their model, by model',
    labelNames: ['model'],
    registers: [registry],
    collect() {
      this.reset();
      for (const group of queue.snapshot().groups) this.set({ model: group.group }, group.waiting);
    },
  });
  const light = app.lightQueue;
  new Gauge({
    name: 'llm_gateway_light_requests_waiting',
    help: 'Light calls (token counting, model list) waiting for a light slot',
    registers: [registry],
    collect() {
      this.set(light.waiting);
    },
  });
  new Gauge({
    name: 'llm_gateway_light_requests_running',
    help: 'Light calls being answered by llama-server now',
    registers: [registry],
    collect() {
      this.set(light.running);
    },
  });
  new Gauge({
    name: 'llm_gateway_light_slots',
    help: 'Light calls the gateway lets run upstream at once (GATEWAY_LIGHT_SLOTS)',
    registers: [registry],
    collect() {
      this.set(light.maxInflight);
    },
  });

  // Counting shared through Redis (cluster/shared-counting.ts): only with GATEWAY_REDIS_URL.
  const shared = app.hasDecorator('sharedCounting') ? app.sharedCounting : null;
  if (shared !== null) {
    new Gauge({
      name: 'llm_gateway_redis_up',
      help: 'Whether the Redis the gateways share (GATEWAY_REDIS_URL) answers: 1 up, 0 down (limits then follow GATEWAY_REDIS_DOWN)',
      registers: [registry],
      collect() {
        this.set(shared.link.up ? 1 : 0);
      },
    });
    new Counter({
      name: 'llm_gateway_redis_local_admissions_total',
      help: "Requests whose key's limits this gateway decided alone because Redis did not answer (GATEWAY_REDIS_DOWN=local)",
      registers: [registry],
      collect() {
        this.reset();
        this.inc(shared.decidedLocally);
      },
    });
    new Counter({
      name: 'llm_gateway_redis_errors_total',
      help: 'Redis commands for shared counting that failed or timed out',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(shared.failures);
      },
    });
  }

  // Usage records on their way to PostgreSQL (usage/spool.ts): only with GATEWAY_DATABASE_URL.
  const spool = app.hasDecorator('usageSpool') ? app.usageSpool : null;
  if (spool !== null) {
    new Gauge({
      name: 'llm_gateway_usage_spooled_records',
      help: 'Usage records waiting on disk (GATEWAY_USAGE_SPOOL) for PostgreSQL to take them; 0 when all are written',
      registers: [registry],
      collect() {
        this.set(spool.spooledRecords);
      },
    });
    new Counter({
      name: 'llm_gateway_usage_spooled_records_total',
      help: 'Usage records PostgreSQL did not take at once, spooled to disk',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(spool.spooledTotal);
      },
    });
    new Counter({
      name: 'llm_gateway_usage_replayed_records_total',
      help: 'Spooled usage records written to PostgreSQL since',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(spool.replayedTotal);
      },
    });
    new Counter({
      name: 'llm_gateway_usage_unwritten_records_total',
      help: 'Usage records not written: the spool folder failed (disk), or PostgreSQL refused their data (rejected: file kept aside)',
      labelNames: ['reason'],
      registers: [registry],
      collect() {
        this.reset();
        this.inc({ reason: 'disk' }, spool.lostTotal);
        this.inc({ reason: 'rejected' }, spool.rejectedTotal);
      },
    });
  }

  // Alerts (plugins/alerts.ts): only with a webhook set.
  const webhook = app.hasDecorator('webhook') ? app.webhook : null;
  if (webhook !== null) {
    new Counter({
      name: 'llm_gateway_webhook_deliveries_total',
      help: 'Alerts sent to GATEWAY_WEBHOOK_URL: delivered (2xx), failed (every try refused), dropped (queue full or shutdown)',
      labelNames: ['result'],
      registers: [registry],
      collect() {
        this.reset();
        for (const [result, n] of Object.entries(webhook.counts)) this.inc({ result }, n);
      },
    });
    new Gauge({
      name: 'llm_gateway_webhook_pending',
      help: 'Alerts waiting for delivery or a retry',
      registers: [registry],
      collect() {
        this.set(webhook.pending);
      },
    });
  }

  // Audit files to object storage (usage/audit-upload.ts): only with GATEWAY_AUDIT_S3_* set.
  const uploader = app.hasDecorator('auditUpload') ? app.auditUpload : null;
  if (uploader !== null) {
    new Counter({
      name: 'llm_gateway_audit_uploads_total',
      help: 'Audit files sent to object storage: uploaded (stored, checked, local copy deleted) or failed (kept, retried)',
      labelNames: ['result'],
      registers: [registry],
      collect() {
        this.reset();
        this.inc({ result: 'uploaded' }, uploader.totals.uploaded);
        this.inc({ result: 'failed' }, uploader.totals.failed);
      },
    });
    new Gauge({
      name: 'llm_gateway_audit_files_pending',
      help: "Finished days' audit files still on disk, waiting for their upload",
      registers: [registry],
      collect() {
        this.set(uploader.pending);
      },
    });
  }

  const models = new Set<string>();
  const modelLabel = (model: string | null): string => {
    if (model === null) return '';
    // Records hold capped models already; a label is capped again, whatever feeds it.
    const m = model.length > MAX_MODEL_LENGTH ? model.slice(0, MAX_MODEL_LENGTH) : model;
    if (models.has(m)) return m;
    if (models.size >= MAX_MODEL_LABELS) return 'other';
    models.add(m);
    return m;
  };

  recorder?.onRecord((r: UsageRecord) => {
    const key = r.keyName ?? '';
    const route = r.route;
    requests.inc(1, route, statusText(r.status), key);
    duration.observe(r.durationMs / 1000, route);
    if (r.ttftMs !== null) ttft.observe(r.ttftMs / 1000, route);
    if (r.promptTokens !== null || r.cachedTokens !== null || r.completionTokens !== null) {
      const model = modelLabel(r.model);
      if (r.promptTokens !== null) tokens.inc(r.promptTokens, key, model, 'prompt');
      if (r.cachedTokens !== null) tokens.inc(r.cachedTokens, key, model, 'cached');
      if (r.completionTokens !== null) tokens.inc(r.completionTokens, key, model, 'completion');
    }
    if (r.outcome === 'upstream_error' || r.outcome === 'timeout') upstreamErrors.inc(1, route, r.outcome);
    if (r.outcome === 'client_closed') clientClosed.inc(1, route);
  });

  const isAdmin = adminKeyCheck(opts.adminKey);
  app.get('/metrics', async (request: FastifyRequest, reply: FastifyReply) => {
    if (!isLocalScrape(request)) {
      const ip = guard.address(request);
      if (guard.refuseBlocked(request, reply, ip)) return reply;
      if (!isAdmin(request)) {
        guard.refuseWrong(request, reply, ip, 'admin');
        return reply;
      }
    }
    let text = await registry.metrics();
    if (!text.endsWith('\n')) text += '\n';
    for (const family of families) text += family.render();
    return reply.header('content-type', registry.contentType).send(text);
  });
}
