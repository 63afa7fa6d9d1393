// One usage record per request in the authenticated scope that names a known key: proxied ones
// carry the token numbers their taps read; refused ones (disabled or expired key, policy, limits)
// record who tried what. A request refused without a known key (a wrong key, a blocked address)
// writes no row — a flood of guesses must not flood the table; /metrics counts them (AuthGuard).
// Records go to the UsageRecorder, which writes them in batches off the request path.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { MAX_USER_AGENT_LENGTH, loggablePath, recordedModel } from '../http/client-input.js';
import { clientIp } from '../http/client-ip.js';
import type { Exchange, Outcome, UsageRecord } from '../usage/exchange.js';
import { needOf, type UsageCompleter } from '../usage/completion.js';
import type { UsageRecorder } from '../usage/recorder.js';
import type { ClientClosed, JsonBody } from './proxy.js';

const MAX_LOGGED_BODY = 1 << 20;
/** nginx's code for "the client closed the connection before the response was complete" */
const CLIENT_CLOSED_STATUS = 499;

function outcomeOf(status: number, ex: Exchange | null, clientClosed: boolean): Outcome {
  // A body that broke is upstream's failure, even when the gateway then had to cut the connection.
  if (ex?.broken === 'timeout') return 'timeout';
  if (ex?.broken === 'error') return 'upstream_error';
  if (clientClosed) return 'client_closed';
  if (status < 400) return 'ok';
  if (status === 401) return 'rejected_auth';
  if (status === 429) return 'rejected_limit';
  if (status === 504) return 'timeout';
  // llama-server's own refusals passed through, and the gateway's 502/503 for upstream trouble
  if (status >= 500 || ex?.status === status) return 'upstream_error';
  return 'rejected_policy';
}

export function buildRecord(request: FastifyRequest, status: number, durationMs: number, clientClosed: boolean, logBodies: boolean, trustProxy: boolean): UsageRecord {
  const ex = request.exchange;
  const key = request.apiKey;
  const body = request.body as JsonBody | undefined;
  let completion = ex?.completionTokens ?? null;
  let estimated = false;
  if (ex !== null && ex.streamed && completion === null && (clientClosed || ex.broken !== null)) {
    // The stream ended before llama-server reported (the client left, it broke, or llama-server's
    // own error event ended it): count the content chunks the client was sent.
    completion = ex.contentEvents;
    estimated = true;
  }
  const bodyModel = body?.json.model;
  const ua = request.headers['user-agent'];
  const record: UsageRecord = {
    ts: ex?.ts ?? Date.now() - durationMs,
    requestId: request.id,
    keyId: key?.id ?? null,
    keyName: key?.name ?? null,
    route: request.routeOptions.url ?? loggablePath(request.url),
    model: recordedModel(ex?.model ?? bodyModel),
    status,
    streamed: ex?.streamed ?? false,
    promptTokens: ex?.promptTokens ?? null,
    cachedTokens: ex?.cachedTokens ?? null,
    completionTokens: completion,
    estimated,
    ttftMs: ex !== null && ex.firstContentAt > 0 ? ex.firstContentAt - ex.startedAt : null,
    durationMs,
    bytesIn: ex?.bytesIn ?? body?.raw.length ?? 0,
    bytesOut: ex?.bytesOut ?? 0,
    clientIp: clientIp(request, trustProxy) || null,
    userAgent: typeof ua === 'string' ? ua.slice(0, MAX_USER_AGENT_LENGTH) : null,
    outcome: outcomeOf(status, ex, clientClosed),
  };
  if (estimated) record.estimate = { completion: 'relayed' };
  if (logBodies) {
    if (body !== undefined) record.requestBody = body.raw.subarray(0, MAX_LOGGED_BODY).toString('utf8');
    if (ex?.text !== null && ex?.text !== undefined) record.responseText = ex.text;
  }
  return record;
}

/**
 * Writes a proxied request's record: at once when llama-server's numbers are final, else after
 * the completer has counted what is missing (off the request path; usage-completion.ts). Either way
 * the record is emitted once, with its final numbers.
 */
function emit(recorder: UsageRecorder, completer: UsageCompleter | null, request: FastifyRequest, record: UsageRecord, clientClosed: boolean): void {
  const ex = request.exchange;
  const body = request.body as JsonBody | undefined;
  const need = ex === null || completer === null || body === undefined ? null : needOf(ex, clientClosed);
  if (need === null || ex === null || completer === null || body === undefined) recorder.record(record);
  else completer.add(record, ex, need, body.json, body.raw);
}

/** For the proxy: a client that left mid-request is recorded as client_closed. */
export function recordClientClosed(recorder: UsageRecorder, trustProxy: boolean, completer: UsageCompleter | null = null): ClientClosed {
  return (request, ex) => {
    if (ex.recorded) return;
    ex.recorded = true;
    recorder.inFlight--;
    emit(recorder, completer, request, buildRecord(request, ex.status || CLIENT_CLOSED_STATUS, performance.now() - ex.startedAt, true, recorder.logBodies, trustProxy), true);
  };
}

/** For admission: a client that left while waiting in the queue (never sent upstream). */
export function recordLeftQueue(recorder: UsageRecorder, trustProxy: boolean): (request: FastifyRequest) => void {
  return (request) => {
    const started = request.exchange === null ? undefined : request.exchange.startedAt;
    recorder.record(buildRecord(request, CLIENT_CLOSED_STATUS, started === undefined ? 0 : performance.now() - started, true, recorder.logBodies, trustProxy));
  };
}

export default fp(
  async function usagePlugin(app: FastifyInstance, opts: { recorder: UsageRecorder; trustProxy: boolean; completer?: UsageCompleter | null }) {
    const { recorder, trustProxy } = opts;
    const completer = opts.completer ?? null;
    app.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      // No known key (a wrong key, a blocked address, refused while shutting down): nobody's usage.
      if (request.apiKey === null) {
        done();
        return;
      }
      const ex = request.exchange;
      if (ex !== null) {
        if (ex.recorded) {
          done();
          return;
        }
        ex.recorded = true;
        recorder.inFlight--;
      }
      emit(recorder, completer, request, buildRecord(request, reply.statusCode, reply.elapsedTime, false, recorder.logBodies, trustProxy), false);
      done();
    });
  },
  { name: 'usage', fastify: '5.x' },
);
