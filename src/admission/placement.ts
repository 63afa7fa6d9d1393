// Where a queued request runs, and what happens when that server fails it (issue 14): its
// Placement (the ticket it holds now, which failover swaps), the server a light call goes to, the
// keep-alive comments of a stream that waits, and failover itself. Used by plugins/admission.ts.
import type { OutgoingHttpHeaders } from 'node:http';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Ticket as LightTicket } from './fair-queue.js';
import type { SlotQueue, Ticket } from './scheduler.js';
import type { JsonBody } from '../proxy/json-body.js';
import type { Failover, Upstream } from '../proxy/upstream.js';
import type { Route, UpstreamNode, UpstreamSet } from '../upstreams/upstream-set.js';

/** A queued request's place: what it asked for, and the ticket it holds now (failover swaps it). */
export class Placement {
  /** asked for another server once already */
  retried = false;
  constructor(
    public ticket: Ticket | LightTicket,
    readonly key: string,
    readonly target: Route,
    readonly weight: number,
    readonly light: boolean,
  ) {}
}

/**
 * A stream that waits (for a slot, or for a loading server after failover) starts early: 200 and
 * SSE headers, then a comment line every pingMs, so proxies (Cloudflare: ~100 s) keep the
 * connection. The proxy then continues it (it sees res.headersSent).
 */
export function startPings(reply: FastifyReply, pingMs: number): NodeJS.Timeout {
  const res = reply.raw;
  return setInterval(() => {
    if (res.destroyed) return;
    if (!res.headersSent) {
      // From here on the response is written by hand.
      const headers: OutgoingHttpHeaders = {
        'content-type': 'text/event-stream',
        'cache-control': 'no-cache',
        'x-accel-buffering': 'no',
      };
      for (const [name, value] of Object.entries(reply.getHeaders())) if (value !== undefined) headers[name] = value;
      res.writeHead(200, headers);
    }
    res.write(':\n\n');
  }, pingMs);
}

/** The server for a light call (token counting): the first ready one of the route, else its first. */
export function lightServer(nodes: readonly UpstreamNode[]): UpstreamNode {
  if (nodes.length === 1) return nodes[0]!;
  for (const n of nodes) if (n.state === 'ready') return n;
  return nodes[0]!;
}

/**
 * A request that failed before its answer started goes once more: to another server of its model
 * (connection refused or reset, 502/503), or, when llama-server said it is loading, back into the
 * queue until a server of the model is ready (within the queue deadline). Never after the first
 * byte of llama-server's answer reached the client (proxy/upstream.ts asks only before). What the
 * server did is told to the set (down or loading) whether or not the request may go once more.
 */
export function failoverFor(set: UpstreamSet, queue: SlotQueue, pingMs: number): Failover {
  return async (request: FastifyRequest, reply: FastifyReply, cause): Promise<Upstream | null> => {
    const p = request.placement;
    const server = request.backend;
    if (p === null || server === null) return null;
    server.failures++;
    if (cause.loading) set.markLoading(server);
    else set.markDown(server, cause.reason);
    if (p.retried) return null;
    p.retried = true;
    const candidates = cause.loading ? p.target.nodes : p.target.nodes.filter((n) => n !== server);
    if (candidates.length === 0) return null;
    if (p.light) {
      const next = lightServer(candidates);
      request.backend = next;
      return next.client;
    }
    let ticket: Ticket;
    try {
      ticket = queue.enter(p.key, p.target.model, candidates, p.weight, { front: true });
    } catch {
      return null; // the queue is full: the first failure stands
    }
    const old = p.ticket;
    p.ticket = ticket;
    old.cancel();
    // A stream that now waits (a loading server: possibly minutes) is kept alive like one queued.
    const ping = !ticket.immediate && (request.body as JsonBody | undefined)?.json.stream === true ? startPings(reply, pingMs) : undefined;
    try {
      const admission = await ticket.admitted;
      request.backend = admission.server as UpstreamNode;
      return request.backend.client;
    } catch {
      return null; // waited past the deadline, or the client left
    } finally {
      clearInterval(ping);
    }
  };
}
