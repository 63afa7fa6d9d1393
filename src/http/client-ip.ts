// The client's address. Behind a Cloudflare Tunnel every request comes from cloudflared on
// loopback, so the real address is in Cf-Connecting-Ip (or X-Forwarded-For); those headers are
// believed only with GATEWAY_TRUST_PROXY=on and only from a loopback peer (anyone else could send
// them to dodge the failed-auth brake or fake the audit log). A header value that is not an IP
// address is ignored (it would otherwise become a brake key and a record field of any size).
// X-Forwarded-For is read from the right: the proxy we trust appends the address it saw, and
// everything left of it is whatever the client claimed (a new claim per request would dodge the
// brake).
import type { FastifyRequest } from 'fastify';
import { forwardedIp } from './client-input.js';

const LOOPBACK = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);

export function isLoopback(address: string | undefined): boolean {
  return address !== undefined && LOOPBACK.has(address);
}

export function clientIp(request: FastifyRequest, trustProxy: boolean): string {
  const peer = request.socket.remoteAddress ?? '';
  if (!trustProxy || !isLoopback(peer)) return peer;
  const cf = request.headers['cf-connecting-ip'];
  if (typeof cf === 'string' && cf !== '') {
    const ip = forwardedIp(cf);
    if (ip !== undefined) return ip;
  }
  const xff = request.headers['x-forwarded-for'];
  if (typeof xff === 'string' && xff !== '') {
    const comma = xff.lastIndexOf(',');
    const ip = forwardedIp(comma < 0 ? xff : xff.slice(comma + 1).trim());
    if (ip !== undefined) return ip;
  }
  return peer;
}
