// Who used what, in two parts:
//   usage (root)    the UsageRecorder (usage/recorder.ts: records written in batches to the usage
//                   table and the audit log, off the request path), the UsageCompleter (records of
//                   requests that ended without llama-server's numbers, completed with its token
//                   counts off the request path: usage/completion.ts) and the usage table's store;
//                   built, decorated and closed here. It attaches to the proxy (proxy/upstream.ts,
//                   ExchangeWatcher), so proxied requests carry an Exchange and their taps read
//                   the numbers. GATEWAY_USAGE=off: no recorder, no completer, no taps.
//   usage-records   the authenticated scope's onResponse hook: one record per request that names
//                   a known key. Proxied ones carry the token numbers their taps read; refused ones
//                   (disabled or expired key, policy, limits) record who tried what. A request
//                   refused without a known key (a wrong key, a blocked address) writes no row — a
//                   flood of guesses must not flood the table; /metrics counts them (AuthGuard).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config.js';
import { MAX_USER_AGENT_LENGTH, loggablePath, recordedModel } from '../http/client-input.js';
import { clientIp } from '../http/client-ip.js';
import { routeConfig } from '../http/route-config.js';
import type { JsonBody } from '../proxy/json-body.js';
import type { ExchangeWatcher } from '../proxy/upstream.js';
import { AuditLog } from '../usage/audit-log.js';
import { AuditUploader, s3TargetOf } from '../usage/audit-upload.js';
import type { AnsweringServer, Exchange, Outcome, UsageRecord } from '../usage/exchange.js';
import { UsageCompleter, needOf } from '../usage/completion.js';
import { PgUsageStore } from '../usage/pg-usage-store.js';
import { UsageRecorder } from '../usage/recorder.js';
import { SpoolingWriter } from '../usage/spool.js';
import { UsageStore, type UsageTable } from '../usage/store.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** Usage records (null with GATEWAY_USAGE=off). */
    usage: UsageRecorder | null;
    /** The usage table: on PostgreSQL (app.pg), else the SQLite file (null without a key database). */
    usageStore: UsageTable | null;
    /** PostgreSQL's usage writer, with its spool (null on SQLite, or with GATEWAY_USAGE=off). */
    usageSpool: SpoolingWriter | null;
    /** How a request becomes a usage record (null with GATEWAY_USAGE=off). */
    usageAccounting: UsageAccounting | null;
    /** Finished audit files to object storage (null without GATEWAY_AUDIT_S3_*). */
    auditUpload: AuditUploader | null;
  }
}

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

function buildRecord(
  request: FastifyRequest,
  status: number,
  durationMs: number,
  clientClosed: boolean,
  logBodies: boolean,
  trustProxy: boolean,
): UsageRecord {
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
    route: routeConfig(request).url ?? loggablePath(request.url),
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
    // Set by the end-user plugin (not decorated outside the authenticated scope: undefined there).
    endUser: request.endUser ?? null,
    // The recorder prices the record once its numbers are final (a completed one's are counted later).
    cost: null,
  };
  if (estimated) record.estimate = { completion: 'relayed' };
  if (logBodies) {
    // An upload (multipart form) is not text: only its fields are kept.
    if (body !== undefined)
      record.requestBody = body.form === true ? JSON.stringify(body.json) : body.raw.subarray(0, MAX_LOGGED_BODY).toString('utf8');
    if (ex?.text !== null && ex?.text !== undefined) record.responseText = ex.text;
  }
  return record;
}

/**
 * Writes a proxied request's record: at once when llama-server's numbers are final, else after
 * the completer has counted what is missing (off the request path; usage/completion.ts). Either way
 * the record is emitted once, with its final numbers.
 */
function emit(
  recorder: UsageRecorder,
  completer: UsageCompleter | null,
  request: FastifyRequest,
  record: UsageRecord,
  clientClosed: boolean,
): void {
  const ex = request.exchange;
  const body = request.body as JsonBody | undefined;
  const need = ex === null || completer === null || body === undefined ? null : needOf(ex, clientClosed);
  if (need === null || ex === null || completer === null || body === undefined) recorder.record(record);
  else completer.add(record, ex, need, body.json, body.raw);
}

/** How a request becomes a usage record, wherever it ends. */
interface UsageAccounting {
  /** It was answered (the usage-records hook). */
  answered(request: FastifyRequest, reply: FastifyReply): void;
  /** Its client left while it waited in the queue, never sent upstream (admission). */
  leftQueue(request: FastifyRequest): void;
}

/** For the proxy: a proxied request counts in flight; a client that left mid-request is recorded as client_closed. */
function watcherFor(recorder: UsageRecorder, trustProxy: boolean, completer: UsageCompleter | null): ExchangeWatcher {
  return {
    logBodies: recorder.logBodies,
    started: () => {
      recorder.inFlight++;
    },
    clientClosed: (request, ex) => {
      if (ex.recorded) return;
      ex.recorded = true;
      recorder.inFlight--;
      emit(
        recorder,
        completer,
        request,
        buildRecord(request, ex.status || CLIENT_CLOSED_STATUS, performance.now() - ex.startedAt, true, recorder.logBodies, trustProxy),
        true,
      );
    },
  };
}

function accountingFor(recorder: UsageRecorder, trustProxy: boolean, completer: UsageCompleter | null): UsageAccounting {
  return {
    answered(request, reply) {
      // No known key (a wrong key, a blocked address, refused while shutting down): nobody's usage.
      if (request.apiKey === null) return;
      const ex = request.exchange;
      if (ex !== null) {
        if (ex.recorded) return;
        ex.recorded = true;
        recorder.inFlight--;
      }
      emit(
        recorder,
        completer,
        request,
        buildRecord(request, reply.statusCode, reply.elapsedTime, false, recorder.logBodies, trustProxy),
        false,
      );
    },
    leftQueue(request) {
      const started = request.exchange === null ? undefined : request.exchange.startedAt;
      recorder.record(
        buildRecord(
          request,
          CLIENT_CLOSED_STATUS,
          started === undefined ? 0 : performance.now() - started,
          true,
          recorder.logBodies,
          trustProxy,
        ),
      );
    },
  };
}

interface UsageOptions {
  config: Config;
  /** How often records are written (ms); tests shorten it. */
  flushMs?: number | undefined;
}

export default fp(
  async function usagePlugin(app: FastifyInstance, opts: UsageOptions) {
    const { config } = opts;
    const pgStore = app.pg === null ? null : new PgUsageStore(app.pg);
    const store = pgStore === null && app.db !== null ? new UsageStore(app.db) : null;
    const table: UsageTable | null = pgStore ?? store;
    app.decorate('usageStore', table);
    // PostgreSQL: batches inserted off the request path, spooled to GATEWAY_USAGE_SPOOL while it is down.
    const writer =
      pgStore === null || !config.usage
        ? null
        : new SpoolingWriter({ store: pgStore, dir: config.usageSpool, log: app.log.child({ component: 'usage-spool' }) });
    app.decorate('usageSpool', writer);
    // With object storage set, a file leaves the disk only once uploaded: no pruning by age (keepDays 0).
    const s3 = s3TargetOf(config);
    const audit =
      config.usage && config.auditLog !== ''
        ? new AuditLog(config.auditLog, s3 === null ? config.auditKeepDays : 0, (err) =>
            app.log.error({ err: { message: err.message } }, 'audit log write failed'),
          )
        : null;
    const uploader =
      s3 === null ? null : new AuditUploader({ auditLog: config.auditLog, target: s3, log: app.log, drain: async () => audit?.drain() });
    app.decorate('auditUpload', uploader);
    if (uploader !== null) {
      app.addHook('onReady', async () => uploader.start());
      app.addHook('onClose', async () => uploader.close());
    }
    const recorder = config.usage
      ? new UsageRecorder({
          ...(store === null ? {} : { store }),
          ...(writer === null ? {} : { writer }),
          ...(audit === null ? {} : { audit }),
          logBodies: config.logBodies,
          prices: config.prices,
        })
      : null;
    app.decorate('usage', recorder);
    if (recorder === null) {
      app.decorate('usageAccounting', null);
      return;
    }
    const upstream = app.upstream;
    const set = app.upstreams;
    // Counted on the server that answered (each model has its own tokenizer), or, when that one has
    // gone down since (a crash cut its stream), on a ready server of the same model.
    const counter = (ex: Exchange): AnsweringServer => {
      const server = ex.server ?? upstream;
      if (set.nodes.length === 1) return server;
      const node = set.nodes.find((n) => n.client === server);
      if (node === undefined || node.state !== 'down' || ex.model === null) return server;
      return set.resolve(ex.model)?.nodes.find((n) => n.state === 'ready')?.client ?? server;
    };
    const completer = new UsageCompleter({
      call: (path, body, signal, ex) => counter(ex).post(path, body, { signal }),
      emit: (r) => recorder.record(r),
      rates: { speeds: (ex) => (ex?.server ?? upstream).rates.speeds() },
      log: app.log,
    });
    app.decorate('usageAccounting', accountingFor(recorder, config.trustProxy, completer));
    const watcher = watcherFor(recorder, config.trustProxy, completer);
    for (const node of app.upstreams.nodes) node.client.watch(watcher);
    // What a previous run left spooled is read now and replayed in the background.
    await writer?.start();
    recorder.start(app.log, opts.flushMs);
    // Once every connection is done: pending token counts finish (the upstream pools close after
    // this hook: the proxy registered earlier), then the last flush (the database's last checkpoint
    // follows: registered earlier still).
    app.addHook('onClose', async () => {
      await completer.drain();
      await recorder.close();
    });
  },
  { name: 'usage', fastify: '5.x', dependencies: ['database', 'proxy'] },
);

/** The authenticated scope's onResponse hook: every answer there is a usage record (usage off: none). */
export const usageRecords = fp(
  async function usageRecordsPlugin(app: FastifyInstance) {
    const accounting = app.usageAccounting;
    if (accounting === null) return;
    app.addHook('onResponse', (request: FastifyRequest, reply: FastifyReply, done: () => void) => {
      accounting.answered(request, reply);
      done();
    });
  },
  { name: 'usage-records', fastify: '5.x', dependencies: ['usage', 'check-key'] },
);
