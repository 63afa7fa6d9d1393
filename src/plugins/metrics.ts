// GET /metrics in Prometheus text (prom-client): requests, tokens, durations and time to first
// token from the usage records, requests in flight, upstream errors, and the process metrics.
// Only for the admin key or a local scraper: behind a Cloudflare Tunnel every request comes from
// loopback, so "local" also means no forwarding header (cloudflared adds Cf-Connecting-Ip).
// Per-key labels use the key's name, never its secret.
import { timingSafeEqual } from 'node:crypto';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { INVALID_API_KEY } from '../errors.js';
import { isLoopback } from '../lib/client-ip.js';
import { digestKey } from '../lib/key-index.js';
import type { FairQueue } from '../lib/fair-queue.js';
import type { UsageRecord } from '../lib/usage.js';
import type { UsageRecorder } from '../lib/usage-recorder.js';
import { presentedKey } from './auth.js';
import { sendError } from './errors.js';

const FORWARDING_HEADERS = ['cf-connecting-ip', 'x-forwarded-for', 'forwarded', 'x-real-ip'];
// A client with a key picks the "model" string; beyond this many distinct values, label "other".
const MAX_MODEL_LABELS = 50;
const DURATION_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];
const TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export function isLocalScrape(request: FastifyRequest): boolean {
  if (!isLoopback(request.socket.remoteAddress)) return false;
  for (const h of FORWARDING_HEADERS) if (request.headers[h] !== undefined) return false;
  return true;
}

export default async function metricsRoutes(app: FastifyInstance, opts: { recorder: UsageRecorder | null; queue: FairQueue; adminKey: string }): Promise<void> {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const requests = new Counter({ name: 'llm_gateway_requests_total', help: 'Requests answered, by route, status and key', labelNames: ['route', 'status', 'key'] as const, registers: [registry] });
  const tokens = new Counter({ name: 'llm_gateway_tokens_total', help: 'Tokens as reported by llama-server, by key, model and kind (prompt, cached, completion)', labelNames: ['key', 'model', 'kind'] as const, registers: [registry] });
  const duration = new Histogram({ name: 'llm_gateway_request_duration_seconds', help: 'Request duration, by route', labelNames: ['route'] as const, buckets: DURATION_BUCKETS, registers: [registry] });
  const ttft = new Histogram({ name: 'llm_gateway_time_to_first_token_seconds', help: 'Time from forwarding to the first content chunk of a stream, by route', labelNames: ['route'] as const, buckets: TTFT_BUCKETS, registers: [registry] });
  const upstreamErrors = new Counter({ name: 'llm_gateway_upstream_errors_total', help: 'Requests that failed because of llama-server (unreachable, error, timeout, broken stream)', labelNames: ['route', 'outcome'] as const, registers: [registry] });
  const clientClosed = new Counter({ name: 'llm_gateway_client_closed_total', help: 'Requests whose client left before the answer was complete (upstream cancelled)', labelNames: ['route'] as const, registers: [registry] });
  const recorder = opts.recorder;
  new Gauge({ name: 'llm_gateway_requests_in_flight', help: 'Requests being answered by llama-server now', registers: [registry], collect() { this.set(recorder?.inFlight ?? 0); } });
  const queue = opts.queue;
  new Gauge({ name: 'llm_gateway_requests_waiting', help: 'Requests waiting in the gateway for a llama-server slot', registers: [registry], collect() { this.set(queue.waiting); } });
  new Gauge({ name: 'llm_gateway_slots', help: 'Requests the gateway lets run upstream at once (llama-server slots)', registers: [registry], collect() { this.set(queue.maxInflight); } });

  const models = new Set<string>();
  const modelLabel = (m: string | null): string => {
    if (m === null) return '';
    if (models.has(m)) return m;
    if (models.size >= MAX_MODEL_LABELS) return 'other';
    models.add(m);
    return m;
  };

  // prom-client hashes the label object on every inc/observe; each record instead finds its
  // label set's child in a map (the sets are few: routes × statuses × keys).
  const requestsBy = new Map<string, Counter.Internal>();
  const durationBy = new Map<string, Histogram.Internal<'route'>>();
  const ttftBy = new Map<string, Histogram.Internal<'route'>>();
  const tokensBy = new Map<string, Counter.Internal>();
  const tokensOf = (key: string, model: string, kind: string): Counter.Internal => {
    const id = `${key}\n${model}\n${kind}`;
    let child = tokensBy.get(id);
    if (child === undefined) tokensBy.set(id, (child = tokens.labels({ key, model, kind })));
    return child;
  };

  recorder?.onRecord((r: UsageRecord) => {
    const key = r.keyName ?? '';
    const route = r.route;
    const id = `${route}\n${r.status}\n${key}`;
    let counted = requestsBy.get(id);
    if (counted === undefined) requestsBy.set(id, (counted = requests.labels({ route, status: String(r.status), key })));
    counted.inc();
    let timed = durationBy.get(route);
    if (timed === undefined) durationBy.set(route, (timed = duration.labels({ route })));
    timed.observe(r.durationMs / 1000);
    if (r.ttftMs !== null) {
      let first = ttftBy.get(route);
      if (first === undefined) ttftBy.set(route, (first = ttft.labels({ route })));
      first.observe(r.ttftMs / 1000);
    }
    if (r.promptTokens !== null || r.cachedTokens !== null || r.completionTokens !== null) {
      const model = modelLabel(r.model);
      if (r.promptTokens !== null) tokensOf(key, model, 'prompt').inc(r.promptTokens);
      if (r.cachedTokens !== null) tokensOf(key, model, 'cached').inc(r.cachedTokens);
      if (r.completionTokens !== null) tokensOf(key, model, 'completion').inc(r.completionTokens);
    }
    if (r.outcome === 'upstream_error' || r.outcome === 'timeout') upstreamErrors.inc({ route, outcome: r.outcome });
    if (r.outcome === 'client_closed') clientClosed.inc({ route });
  });

  const adminDigest = opts.adminKey === '' ? null : digestKey(opts.adminKey);
  app.get('/metrics', async (request: FastifyRequest, reply: FastifyReply) => {
    const key = presentedKey(request);
    const admin = adminDigest !== null && key !== undefined && timingSafeEqual(digestKey(key), adminDigest);
    if (!admin && !isLocalScrape(request)) {
      reply.header('www-authenticate', 'Bearer');
      return sendError(reply, INVALID_API_KEY);
    }
    return reply.header('content-type', registry.contentType).send(await registry.metrics());
  });
}
