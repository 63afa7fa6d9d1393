// The way to the llama-servers, as Fastify sees it: the set of servers (upstreams/upstream-set.ts:
// one Upstream client each, their state, slots and models) decorated as `app.upstreams`, built from
// LLM_UPSTREAM or the upstreams file (GATEWAY_UPSTREAMS_FILE); followed from onReady; ended when the
// app closes. `app.upstream` is the first server's client. Usage accounting attaches to the clients
// when it registers (plugins/usage.ts).
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';
import type { Config } from '../config.js';
import type { Upstream } from '../proxy/upstream.js';
import { UpstreamSet, type ProbeTimings } from '../upstreams/upstream-set.js';
import { upstreamSpecs } from '../upstreams/upstreams-file.js';
import type { Exchange } from '../usage/exchange.js';

declare module 'fastify' {
  interface FastifyInstance {
    /** The llama-servers: routing by model, state, slots (upstreams/upstream-set.ts). */
    upstreams: UpstreamSet;
    /** The first llama-server's client. */
    upstream: Upstream;
  }
  interface FastifyRequest {
    /** The proxied exchange's usage state (null when not proxied or accounting is off). */
    exchange: Exchange | null;
  }
}

interface ProxyOptions {
  config: Config;
  /** Follow the servers in the background: /health polls, /v1/models and /props (default true). */
  discovery?: boolean | undefined;
  /** Probe intervals (tests shorten them). */
  timings?: Partial<ProbeTimings> | undefined;
}

export default fp(
  async function proxyPlugin(app: FastifyInstance, opts: ProxyOptions) {
    const { config } = opts;
    // The upstreams file, when set, is read and checked here, at start (UpstreamsFileError: one line per problem).
    const specs = upstreamSpecs(config, (ignored) =>
      app.log.info(
        { file: config.upstreamsFile, ignored },
        'the llama-servers are those of GATEWAY_UPSTREAMS_FILE; LLM_UPSTREAM is not used while it is set',
      ),
    );
    const set = new UpstreamSet(specs, config, { log: app.log, discovery: opts.discovery, timings: opts.timings });
    app.decorate('upstreams', set);
    app.decorate('upstream', set.nodes[0]!.client);
    app.decorateRequest('exchange', null);
    app.addHook('onReady', async () => {
      set.start();
    });
    // In-flight streams are done (or cut by the shutdown grace timer) when onClose runs; the usage
    // plugin's hooks (registered later) ran before this one, so the completer's calls are done.
    // Probe timers stop here too.
    app.addHook('onClose', async () => {
      await set.destroy();
    });
  },
  { name: 'proxy', fastify: '5.x' },
);
