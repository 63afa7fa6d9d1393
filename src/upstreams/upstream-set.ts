// The llama-servers the gateway fronts (issue 14): one UpstreamNode per server (upstream-node.ts:
// its client, state, slots, models and probing); the set answers "which servers serve this model?"
// with one Map lookup, rebuilt only when a server's models change, tells listeners (the scheduler,
// token holds, metrics) of every change, and starts and ends the probing.
import type { Config } from '../config.js';
import { DEFAULT_PROBE_TIMINGS, UpstreamNode, type NodeContext, type ProbeTimings, type UpstreamLog } from './upstream-node.js';
import type { UpstreamSpec } from './upstreams-file.js';

export { DEFAULT_PROBE_TIMINGS, UpstreamNode, nextDownDelay, type ProbeTimings, type UpstreamState } from './upstream-node.js';

type Json = Record<string, unknown>;

/** What a request's "model" resolves to. */
export interface Route {
  /** canonical id: the ServedModel.id of the first server that serves the name */
  readonly model: string;
  /** every server that serves it, in set order */
  readonly nodes: readonly UpstreamNode[];
}

export interface UpstreamSetOptions {
  log?: UpstreamLog | undefined;
  /** poll in the background and read /v1/models and /props (default true) */
  discovery?: boolean | undefined;
  timings?: Partial<ProbeTimings> | undefined;
}

/** The set of llama-servers: routing by model name, discovery, and the listeners of changes. */
export class UpstreamSet {
  readonly nodes: readonly UpstreamNode[];
  readonly #ctx: NodeContext;
  readonly #listeners: ((node: UpstreamNode) => void)[] = [];
  #routes = new Map<string, Route>();
  #default: Route | undefined;
  #ids: readonly string[] = [];
  #entries: readonly Readonly<Json>[] = [];
  #entryByName = new Map<string, Readonly<Json>>();
  #ollama: readonly Readonly<Json>[] = [];
  #discovered = false;
  #version = 0;
  #started = false;

  constructor(specs: readonly UpstreamSpec[], config: Config, opts: UpstreamSetOptions = {}) {
    if (specs.length === 0) throw new Error('UpstreamSet: no llama-server');
    this.#ctx = {
      discovery: opts.discovery ?? true,
      timings: { ...DEFAULT_PROBE_TIMINGS, ...opts.timings },
      log: opts.log,
      changed: (node, models) => {
        if (models) this.#rebuild();
        for (const listener of this.#listeners) listener(node);
      },
    };
    this.nodes = specs.map((spec, i) => new UpstreamNode(i, spec, config, this.#ctx));
    this.#rebuild();
  }

  /** Polling on: the servers' states are followed in the background. */
  get discovery(): boolean {
    return this.#ctx.discovery;
  }

  /** The servers of a model name (id or alias); a Map lookup, nothing allocated. */
  resolve(name: string): Route | undefined {
    return this.#routes.get(name);
  }

  /** no "model" in the body, or (one model served in all) any name: the single served model; undefined when 0 or ≥ 2 */
  get defaultRoute(): Route | undefined {
    return this.#default;
  }

  /** every id and alias served now (last known lists, down servers' too), in set order */
  modelIds(): readonly string[] {
    return this.#ids;
  }

  /** some server's models are known (pinned, or its /v1/models read) */
  get discovered(): boolean {
    return this.#discovered;
  }

  /** The union of every server's /v1/models data[] entries, deduplicated by id, in set order. */
  modelEntries(): readonly Readonly<Json>[] {
    return this.#entries;
  }

  /** The union of llama-server's Ollama-style models[] entries, deduplicated by "model" (or "name"). */
  ollamaModels(): readonly Readonly<Json>[] {
    return this.#ollama;
  }

  /** The data[] entry that a name (id or alias) names: the first server's. */
  entryFor(name: string): Readonly<Json> | undefined {
    return this.#entryByName.get(name);
  }

  /** Bumped whenever a server's model list changes (readers cache what they build from it). */
  get version(): number {
    return this.#version;
  }

  /** state, slots, n_ctx or models of a server changed */
  onChange(listener: (node: UpstreamNode) => void): void {
    this.#listeners.push(listener);
  }

  /** the proxy saw connection refused/reset (or a 502): no traffic until a probe says ready */
  markDown(node: UpstreamNode, reason: string): void {
    node.mark('down', reason);
  }

  /** the proxy saw 503 loading: its requests wait until a probe says ready */
  markLoading(node: UpstreamNode): void {
    node.mark('loading', 'status 503');
  }

  /** Starts following the servers (the app's onReady): probes each now. Without discovery, nothing. */
  start(): void {
    if (this.#started || !this.#ctx.discovery) return;
    this.#started = true;
    for (const node of this.nodes) void node.probe();
  }

  /**
   * States fresh enough to report (/health): with discovery, waits for the first probe of servers
   * not probed yet; without, probes every server's /health now (concurrent callers share a probe).
   */
  async refresh(): Promise<void> {
    if (!this.#ctx.discovery) {
      await Promise.all(this.nodes.map((n) => n.probe()));
      return;
    }
    let first: Promise<void>[] | null = null;
    for (const n of this.nodes) if (n.state === 'unknown') (first ??= []).push(n.probe());
    if (first !== null) await Promise.all(first);
  }

  async close(): Promise<void> {
    for (const node of this.nodes) node.stop();
    await Promise.all(this.nodes.map((n) => n.client.close()));
  }

  /** Ends every server's requests at once (shutdown). */
  async destroy(): Promise<void> {
    for (const node of this.nodes) node.stop();
    await Promise.all(this.nodes.map((n) => n.client.destroy()));
  }

  /** Routes, default, ids and the model list union, from every server's models (on change only). */
  #rebuild(): void {
    const names: string[] = [];
    const seen = new Set<string>();
    const entries: Readonly<Json>[] = [];
    const entryByName = new Map<string, Readonly<Json>>();
    const ids = new Set<string>();
    for (const node of this.nodes) {
      for (const m of node.models) {
        if (!ids.has(m.id)) {
          ids.add(m.id);
          entries.push(m.entry);
        }
        for (const name of [m.id, ...m.aliases]) {
          if (seen.has(name)) continue;
          seen.add(name);
          names.push(name);
          entryByName.set(name, m.entry);
        }
      }
    }
    // One Route object per (canonical id, servers): names of one model on the same servers share it.
    const routes = new Map<string, Route>();
    const shared = new Map<string, Route>();
    for (const name of names) {
      const serving = this.nodes.filter((n) => n.serves(name));
      const first = serving[0]!.models.find((m) => m.id === name || m.aliases.includes(name))!;
      const key = `${first.id}\u0000${serving.map((n) => n.index).join(',')}`;
      let route = shared.get(key);
      if (route === undefined) {
        route = { model: first.id, nodes: serving };
        shared.set(key, route);
      }
      routes.set(name, route);
    }
    const models = new Set<string>();
    for (const route of routes.values()) models.add(route.model);
    const only = models.size === 1 ? [...models][0]! : undefined;
    this.#default = only === undefined ? undefined : routes.get(only);

    const ollama: Readonly<Json>[] = [];
    const ollamaSeen = new Set<string>();
    for (const node of this.nodes) {
      for (const o of node.ollamaModels) {
        const id = typeof o.model === 'string' ? o.model : typeof o.name === 'string' ? o.name : null;
        if (id === null || ollamaSeen.has(id)) continue;
        ollamaSeen.add(id);
        ollama.push(o);
      }
    }
    this.#routes = routes;
    this.#ids = names;
    this.#entries = entries;
    this.#entryByName = entryByName;
    this.#ollama = ollama;
    this.#discovered = this.nodes.some((n) => n.modelsKnown);
    this.#version++;
  }
}
