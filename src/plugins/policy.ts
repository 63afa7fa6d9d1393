// What an authenticated key may do with its request. Runs after the body is parsed, before the
// route is chosen and before admission, so a refused request never waits for a slot:
//   models        a key kept to certain models may only name those in the body's "model" (a
//                 request naming none would get llama-server's default model, so it is refused too)
//   request policy (policy/request-policy.ts: the key's policy over the GATEWAY_* defaults)
//                 prompt bytes, llama-server parameters (policy/params.ts), the cap on generated
//                 tokens, remote media URLs (policy/media.ts: refused, or fetched by the gateway
//                 itself: policy/media-fetch.ts), and prompt tokens (counted by llama-server, only
//                 when the body has more bytes than the limit has tokens).
// A rewritten body replaces request.body (raw and json together), which admission and the proxy
// then use. The common case (nothing to refuse, rewrite or count) finishes synchronously.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import fp from 'fastify-plugin';
import { QueueFull, QueueTimeout } from '../admission/fair-queue.js';
import { lightServer } from '../admission/placement.js';
import type { Config } from '../config.js';
import { KEY_QUEUE_FULL, MODEL_NOT_ALLOWED, PROMPT_TOO_MANY_TOKENS, QUEUE_FULL, QUEUE_TIMEOUT, REMOTE_MEDIA_REFUSED } from '../errors.js';
import { routeConfig } from '../http/route-config.js';
import type { JsonBody } from '../proxy/json-body.js';
import type { Upstream } from '../proxy/upstream.js';
import { findRemoteMedia } from '../policy/media.js';
import { inlineRemoteMedia, mediaFetchOptions, type MediaFetchTesting } from '../policy/media-fetch.js';
import { RequestPolicies, applyRules, countedTokens, mayExceed, promptCount, type EffectivePolicy } from '../policy/request-policy.js';
import type { RouteKind } from '../usage/exchange.js';

interface PolicyOptions {
  config: Config;
  /** For tests only (in code, never a setting): see MediaFetchTesting. */
  mediaFetch?: MediaFetchTesting;
}

export default fp(
  async function policyPlugin(app: FastifyInstance, opts: PolicyOptions) {
    const { config } = opts;
    const policies = new RequestPolicies(config);
    const fetchOptions = mediaFetchOptions(config, opts.mediaFetch);
    const set = app.upstreams;

    /** The server that would answer (as the route plugin will choose it), for a token count. */
    const counterFor = (json: Record<string, unknown>): Upstream | undefined => {
      if (set.nodes.length === 1) return set.nodes[0]!.client;
      const model = json.model;
      const route = (typeof model === 'string' ? set.resolve(model) : undefined) ?? set.defaultRoute;
      return route === undefined ? undefined : lightServer(route.nodes).client;
    };

    /** The prompt's tokens as llama-server counts them, within the light queue (token counting's own). */
    async function countTokens(request: FastifyRequest, keyId: string, kind: RouteKind, body: JsonBody): Promise<number | undefined> {
      const how = promptCount(kind, body);
      if (!('path' in how)) return how.known;
      // No server for this model: the route plugin refuses the request next.
      const server = counterFor(body.json);
      if (server === undefined) return undefined;
      let ticket;
      try {
        ticket = app.lightQueue.enter(keyId);
      } catch (err) {
        if (err instanceof QueueFull) throw err.scope === 'key' ? KEY_QUEUE_FULL(config.maxQueuePerKey) : QUEUE_FULL;
        throw err;
      }
      try {
        await ticket.admitted;
        const answer = await server.post(how.path, how.body);
        // A body llama-server cannot count is one it will refuse itself: let it answer.
        const n = answer.statusCode === 200 ? countedTokens(how.path, answer.text) : undefined;
        if (n === undefined) request.log.info({ status: answer.statusCode, path: how.path }, 'policy: prompt not counted; forwarded');
        return n === undefined ? undefined : n + how.known;
      } catch (err) {
        if (err instanceof QueueTimeout) throw QUEUE_TIMEOUT(config.queueTimeoutMs);
        throw err;
      } finally {
        ticket.cancel();
      }
    }

    /** A client gone while its rules waited: recorded as client_closed (499), the request ends here. */
    function clientLeft(request: FastifyRequest, reply: FastifyReply): void {
      request.log.info('client left while its media was fetched; never sent upstream');
      app.usageAccounting?.leftQueue(request);
      reply.hijack();
    }

    /** The rules that may wait: remote media fetched by the gateway, prompt tokens counted. */
    async function slowRules(
      request: FastifyRequest,
      reply: FastifyReply,
      p: EffectivePolicy,
      kind: RouteKind,
      body: JsonBody,
    ): Promise<void> {
      const found = p.remoteMedia === 'fetch' ? findRemoteMedia(kind, body.json) : [];
      if (found.length > 0) {
        const abort = new AbortController();
        const onClose = (): void => abort.abort();
        reply.raw.once('close', onClose);
        try {
          const json = await inlineRemoteMedia(body.json, found, { ...fetchOptions, bodyBytes: body.raw.length, signal: abort.signal });
          body = { raw: Buffer.from(JSON.stringify(json)), json };
          request.body = body;
        } catch (err) {
          // The client left mid-fetch: nobody to answer (not a 500), nothing sent upstream.
          if (abort.signal.aborted) return clientLeft(request, reply);
          throw err;
        } finally {
          reply.raw.off('close', onClose);
        }
      }
      if (mayExceed(p, kind, body)) {
        const tokens = await countTokens(request, request.apiKey!.id, kind, body);
        if (tokens !== undefined && tokens > p.maxPromptTokens!) throw PROMPT_TOO_MANY_TOKENS(tokens, p.maxPromptTokens!);
      }
    }

    app.addHook('preHandler', (request: FastifyRequest, reply: FastifyReply, done: (err?: Error) => void) => {
      const key = request.apiKey;
      let body = request.body as JsonBody | undefined;
      if (key === null || body === undefined) return done();
      const models = key.models;
      if (models !== null && models !== undefined) {
        const model = body.json.model;
        if (typeof model !== 'string' || !models.has(model)) return done(MODEL_NOT_ALLOWED(model));
      }
      const kind = routeConfig(request).kind;
      if (kind === undefined) return done();
      const p = policies.of(key.policy);
      const verdict = applyRules(p, kind, body);
      if (verdict !== undefined) {
        if (verdict instanceof Error) return done(verdict);
        body = verdict;
        request.body = body;
      }
      if (p.remoteMedia === 'refuse') {
        const found = findRemoteMedia(kind, body.json);
        if (found.length > 0) return done(REMOTE_MEDIA_REFUSED(found[0]!.path));
      }
      if (p.remoteMedia !== 'fetch' && !mayExceed(p, kind, body)) return done();
      slowRules(request, reply, p, kind, body).then(() => done(), done);
    });
  },
  { name: 'policy', fastify: '5.x', dependencies: ['check-key', 'json-body', 'proxy', 'admission'] },
);
