// One llama-server (issue 14): its own HTTP client (proxy/upstream.ts), its state, slots and
// models, and how it is followed. UpstreamSet (upstream-set.ts) builds one per server.
//
// Each node polls GET /health through its client (the gateway's own pool):
//   ready (200)     every 5 s; when it turns ready, and every 30 s while ready, it also reads
//                   /v1/models (ids and aliases) and /props (total_slots, n_ctx per slot)
//   loading (503)   every 1 s (llama-server loading its model: requests for it wait)
//   down (else)     backoff 1 s, 2 s, 4 s … 30 s; the proxy reports what it saw (mark) and
//                   probing starts at once
// With discovery off (tests that count upstream requests; BuildOptions.discovery) nothing is
// polled in the background and nothing is read but /health: /health probes on demand, and a
// server the proxy marked down or loading is still probed until it is ready again.
import type { Config } from '../config.js';
import { Upstream } from '../proxy/upstream.js';
import { defaultName, type UpstreamSpec } from './upstreams-file.js';

export type UpstreamState = 'unknown' | 'ready' | 'loading' | 'down';
//  unknown  not probed yet (start): treated like ready with the fallback slot count
//  ready    GET /health 200
//  loading  GET /health 503 (llama-server loading its model): requests for it wait, are not failed
//  down     connection refused/reset/timeout, or any other answer: no traffic while another
//           server of the model is ready/loading/unknown; probed with backoff

export interface ServedModel {
  /** data[].id of llama-server's /v1/models (or a name pinned in the upstreams file) */
  readonly id: string;
  /** data[].aliases (llama-server ≥ b6xxx): also names it */
  readonly aliases: readonly string[];
  /** the raw data[] entry, for /v1/models */
  readonly entry: Readonly<Record<string, unknown>>;
}

/** The app's logger, or anything with pino's shape. */
export interface UpstreamLog {
  info(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
}

export interface ProbeTimings {
  /** between /health polls of a ready server */
  readonly readyMs: number;
  /** between /health polls of a loading server */
  readonly loadingMs: number;
  /** first retry of a down server, doubled each time … */
  readonly downMinMs: number;
  /** … up to this */
  readonly downMaxMs: number;
  /** /v1/models and /props are read again this often while ready */
  readonly rediscoverMs: number;
}

export const DEFAULT_PROBE_TIMINGS: ProbeTimings = {
  readyMs: 5_000,
  loadingMs: 1_000,
  downMinMs: 1_000,
  downMaxMs: 30_000,
  rediscoverMs: 30_000,
};

/** Slots of a server until its /props says (and when it never does). */
const FALLBACK_SLOTS = 4;

/** The next wait before probing a down server again: min, then doubled, capped at max. */
export function nextDownDelay(previous: number | null, t: Pick<ProbeTimings, 'downMinMs' | 'downMaxMs'> = DEFAULT_PROBE_TIMINGS): number {
  return previous === null ? t.downMinMs : Math.min(previous * 2, t.downMaxMs);
}

/** What a node needs from its set. */
export interface NodeContext {
  readonly discovery: boolean;
  readonly timings: ProbeTimings;
  readonly log: UpstreamLog | undefined;
  /** `models`: its model list changed (the routes are rebuilt) */
  changed(node: UpstreamNode, models: boolean): void;
}

type Json = Record<string, unknown>;

function isRecord(v: unknown): v is Json {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** A failed call's reason for the log: the gateway error's code (upstream_unreachable, upstream_timeout …). */
function reasonOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'error';
}

/** llama-server's /v1/models: data[] entries with a string id; the Ollama-style models[] beside it. */
function parseModels(text: string): { models: ServedModel[]; ollama: Json[] } | string {
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    return '/v1/models is not JSON';
  }
  if (!isRecord(list) || !Array.isArray(list.data)) return '/v1/models has no data list';
  const models: ServedModel[] = [];
  const seen = new Set<string>();
  for (const entry of list.data as unknown[]) {
    if (!isRecord(entry) || typeof entry.id !== 'string' || entry.id === '' || seen.has(entry.id)) continue;
    seen.add(entry.id);
    const aliases = Array.isArray(entry.aliases)
      ? [...new Set((entry.aliases as unknown[]).filter((a): a is string => typeof a === 'string' && a !== '' && a !== entry.id))]
      : [];
    models.push({ id: entry.id, aliases, entry });
  }
  const ollama = Array.isArray(list.models) ? (list.models as unknown[]).filter(isRecord) : [];
  return { models, ollama };
}

/** /props: total_slots and default_generation_settings.n_ctx, each when it is a positive whole number. */
function parseProps(text: string): { slots: number | null; nCtx: number | null } | string {
  let props: unknown;
  try {
    props = JSON.parse(text);
  } catch {
    return '/props is not JSON';
  }
  if (!isRecord(props)) return '/props is not an object';
  const positive = (v: unknown): number | null => (typeof v === 'number' && Number.isInteger(v) && v > 0 ? v : null);
  const settings = props.default_generation_settings;
  return { slots: positive(props.total_slots), nCtx: isRecord(settings) ? positive(settings.n_ctx) : null };
}

/** The ids and aliases of a model list, in order: what routing depends on. */
function signature(models: readonly ServedModel[]): string {
  return models.map((m) => [m.id, ...m.aliases].join('\u0001')).join('\u0000');
}

/** One llama-server. */
export class UpstreamNode {
  /** 0..n-1, its position in the set, stable */
  readonly index: number;
  /** from the upstreams file, else upstream-<index+1> (shown on the public /health: no URL) */
  readonly name: string;
  /** base URL as configured (path prefix kept) */
  readonly url: string;
  /** its own undici pools (proxy/upstream.ts) */
  readonly client: Upstream;
  /** balancing preference, default 1 (upstreams file) */
  readonly weight: number;
  /** failed requests counted by the proxy (failover, broken), for /metrics */
  failures = 0;

  readonly #ctx: NodeContext;
  readonly #pinnedSlots: number | null;
  readonly #pinnedModels: boolean;
  #state: UpstreamState = 'unknown';
  #discoveredSlots: number | null = null;
  #nCtx: number | null = null;
  #models: readonly ServedModel[] = [];
  #modelsKnown: boolean;
  #ollama: readonly Json[] = [];
  #names: ReadonlySet<string> = new Set();
  #signature = '';
  /** when /v1/models and /props were last read (performance-free: Date.now()), 0 never */
  #discoveredAt = 0;
  /** the last discovery problem logged (logged once until it changes) */
  #problem: string | null = null;
  #timer: NodeJS.Timeout | null = null;
  #probing: Promise<void> | null = null;
  #downDelay: number | null = null;
  /** bumped by markDown/markLoading: a probe started before must not undo what the proxy saw */
  #epoch = 0;
  #closed = false;

  /** @internal built by UpstreamSet */
  constructor(index: number, spec: UpstreamSpec, config: Config, ctx: NodeContext) {
    this.index = index;
    this.name = spec.name ?? defaultName(index);
    this.url = spec.url;
    this.weight = spec.weight ?? 1;
    this.client = new Upstream(config, spec.url, spec.apiKey);
    this.#ctx = ctx;
    this.#pinnedSlots = spec.slots ?? config.maxInflight ?? null;
    this.#pinnedModels = spec.models !== undefined;
    this.#modelsKnown = this.#pinnedModels;
    if (spec.models !== undefined) {
      const created = Math.floor(Date.now() / 1000);
      this.#setModels(spec.models.map((id) => ({ id, aliases: [], entry: { id, object: 'model', created, owned_by: 'llamacpp' } })));
    }
  }

  get state(): UpstreamState {
    return this.#state;
  }

  /** upstreams file, else GATEWAY_MAX_INFLIGHT, else /props total_slots, else 4 */
  get slots(): number {
    return this.#pinnedSlots ?? this.#discoveredSlots ?? FALLBACK_SLOTS;
  }

  /** /props default_generation_settings.n_ctx (per slot); null until read */
  get nCtx(): number | null {
    return this.#nCtx;
  }

  /** pinned in the upstreams file, else as discovered (the last list read, also while down) */
  get models(): readonly ServedModel[] {
    return this.#models;
  }

  /** its models are known (pinned, or /v1/models read once) */
  get modelsKnown(): boolean {
    return this.#modelsKnown;
  }

  /** llama-server's Ollama-style `models` list beside `data` in /v1/models (empty when pinned) */
  get ollamaModels(): readonly Readonly<Json>[] {
    return this.#ollama;
  }

  /** serves this name: one of its models' ids or aliases */
  serves(name: string): boolean {
    return this.#names.has(name);
  }

  #setModels(models: readonly ServedModel[]): void {
    this.#models = models;
    this.#signature = signature(models);
    const names = new Set<string>();
    for (const m of models) {
      names.add(m.id);
      for (const a of m.aliases) names.add(a);
    }
    this.#names = names;
  }

  /** Probes /health now (and, on the way to ready, reads models and slots). Shares a probe in flight. */
  probe(): Promise<void> {
    this.#probing ??= this.#probeOnce().finally(() => {
      this.#probing = null;
      this.#schedule();
    });
    return this.#probing;
  }

  /** The proxy saw llama-server fail (connection refused/reset, 502) or say it is loading. */
  mark(state: 'down' | 'loading', reason: string): void {
    if (this.#closed) return;
    this.#epoch++;
    if (this.#state === state) return; // already followed: its backoff goes on as it was
    this.#setState(state, reason);
    this.#ctx.changed(this, false);
    // Probe from now on (a down server first after 1 s), unless a probe is on its way anyway.
    if (this.#probing === null) this.#schedule();
  }

  async #probeOnce(): Promise<void> {
    const epoch = this.#epoch;
    let next: UpstreamState;
    let reason: string;
    try {
      const answer = await this.client.get('/health');
      next = answer.statusCode === 200 ? 'ready' : answer.statusCode === 503 ? 'loading' : 'down';
      reason = `status ${answer.statusCode}`;
    } catch (err) {
      next = 'down';
      reason = reasonOf(err);
    }
    if (this.#closed) return;
    // The proxy saw it fail while this probe was out: a ready from before does not count.
    if (next === 'ready' && epoch !== this.#epoch) return;
    let models = false;
    let other = false;
    if (next === 'ready' && this.#ctx.discovery) {
      const due = this.#state !== 'ready' || Date.now() - this.#discoveredAt >= this.#ctx.timings.rediscoverMs;
      if (due) ({ models, other } = await this.#discover());
      if (this.#closed || epoch !== this.#epoch) return;
    }
    if (next !== this.#state) {
      this.#setState(next, reason);
      other = true;
    }
    if (models || other) this.#ctx.changed(this, models);
  }

  /** Reads /v1/models (unless pinned) and /props; applies what changed. */
  async #discover(): Promise<{ models: boolean; other: boolean }> {
    const [list, props] = await Promise.all([
      this.#pinnedModels
        ? null
        : this.client
            .get('/v1/models')
            .then((a) => (a.statusCode === 200 ? parseModels(a.text) : `/v1/models answered ${a.statusCode}`), reasonOf),
      this.client.get('/props').then((a) => (a.statusCode === 200 ? parseProps(a.text) : `/props answered ${a.statusCode}`), reasonOf),
    ]);
    if (this.#closed) return { models: false, other: false };
    let models = false;
    let other = false;
    const problems: string[] = [];
    if (typeof list === 'string') problems.push(list);
    else if (list !== null) {
      if (!this.#modelsKnown || signature(list.models) !== this.#signature) {
        this.#setModels(list.models);
        models = true;
      }
      this.#modelsKnown = true;
      this.#ollama = list.ollama;
    }
    if (typeof props === 'string') problems.push(props);
    else {
      if (props.slots !== null && props.slots !== this.#discoveredSlots) {
        const before = this.slots;
        this.#discoveredSlots = props.slots;
        other ||= this.slots !== before;
      }
      if (props.nCtx !== null && props.nCtx !== this.#nCtx) {
        this.#nCtx = props.nCtx;
        other = true;
      }
    }
    const problem = problems.length === 0 ? null : problems.join('; ');
    if (problem === null) this.#discoveredAt = Date.now();
    if (problem !== this.#problem) {
      this.#problem = problem;
      if (problem !== null)
        this.#ctx.log?.warn(
          { upstream: this.name, url: this.url, problem },
          'could not read the model server’s models or slots; trying again',
        );
    }
    if (models || other)
      this.#ctx.log?.info(
        { upstream: this.name, url: this.url, models: this.#models.map((m) => m.id), slots: this.slots, nCtx: this.#nCtx },
        'model server: models and slots',
      );
    return { models, other };
  }

  #setState(state: UpstreamState, reason: string): void {
    const was = this.#state;
    this.#state = state;
    if (state !== 'down') this.#downDelay = null;
    const log = this.#ctx.log;
    if (log === undefined) return;
    const fields = { upstream: this.name, url: this.url, state, was, reason };
    if (state === 'ready') log.info(fields, 'model server ready');
    else if (state === 'loading') log.warn(fields, 'model server is loading its model: its requests wait');
    else log.warn(fields, 'model server unreachable or failing: no traffic to it until it answers again');
  }

  /** The next probe: background polling while discovery is on; a down or loading server always. */
  #schedule(): void {
    if (this.#closed) return;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    const t = this.#ctx.timings;
    let ms: number;
    if (this.#state === 'down') ms = this.#downDelay = nextDownDelay(this.#downDelay, t);
    else if (this.#state === 'loading') ms = t.loadingMs;
    else if (!this.#ctx.discovery) return;
    else ms = this.#state === 'ready' ? t.readyMs : t.loadingMs;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      void this.probe();
    }, ms);
    this.#timer.unref();
  }

  /** @internal stops its timers (the set closes its client) */
  stop(): void {
    this.#closed = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }
}
