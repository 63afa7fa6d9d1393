// The client's address. Behind a Cloudflare Tunnel every request comes from cloudflared on
// loopback, so the real address is in Cf-Connecting-Ip (or X-Forwarded-For); those headers are
// believed only with GATEWAY_TRUST_PROXY=on and only from a loopback peer (anyone else could send
// them to dodge the failed-auth brake or fake the audit log).
import type { FastifyRequest } from 'fastify';

const LOOPBACK = new Set(['127.0.0.1', '::1', '::ffff:127.0.0.1']);

export function isLoopback(address: string | undefined): boolean {
  return address !== undefined && LOOPBACK.has(address);
}

export function clientIp(request: FastifyRequest, trustProxy: boolean): string {
  const peer = request.socket.remoteAddress ?? '';
  if (!trustProxy || !isLoopback(peer)) return peer;
  const cf = request.headers['cf-connecting-ip'];
  if (typeof cf === 'string' && cf !== '') return cf.trim();
  const xff = request.headers['x-forwarded-for'];
  if (typeof xff === 'string' && xff !== '') return xff.split(',')[0]!.trim();
  return peer;
}
