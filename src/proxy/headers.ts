// Which headers cross the gateway, in each direction. The sets are built once at module load; the
// per-request work is one pass over the incoming header object.
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from 'node:http';

// RFC 9110 §7.6.1 hop-by-hop headers, plus what undici computes itself (host, content-length).
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
];

/** Client request headers that never reach llama-server. */
const REQUEST_DROP = new Set([
  ...HOP_BY_HOP,
  'host',
  'content-length',
  'expect',
  // the client's credentials are for the gateway only
  'authorization',
  'x-api-key',
  'cookie',
  // a frontend may add it for a Cloudflare WAF rule; it is nobody's business upstream
  'x-my-llm-key',
  // llama-server keeps generating for a request carrying it after the client leaves (replay buffer)
  'x-conversation-id',
  // rebuilt below
  'x-forwarded-for',
  'x-forwarded-proto',
  'x-forwarded-host',
  'forwarded',
]);
// llama-server copies these to outbound requests of its own (its proxy/tool features).
const REQUEST_DROP_PREFIXES = ['x-llama-server-proxy-header-', 'x-tool-'];

/** llama-server response headers that never reach the client. */
const RESPONSE_DROP = new Set([...HOP_BY_HOP, 'server', 'date']);
// llama-server reflects any Origin with credentials; only the gateway answers CORS.
const RESPONSE_DROP_PREFIX = 'access-control-';

export function upstreamRequestHeaders(
  incoming: IncomingHttpHeaders,
  clientIp: string,
  upstreamAuthorization: string | undefined,
  hasJsonBody: boolean,
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const name in incoming) {
    const value = incoming[name];
    if (
      value === undefined ||
      REQUEST_DROP.has(name) ||
      name.startsWith(REQUEST_DROP_PREFIXES[0]!) ||
      name.startsWith(REQUEST_DROP_PREFIXES[1]!)
    )
      continue;
    out[name] = value;
  }
  // Headers the client named in Connection are hop-by-hop for this hop too (RFC 9110 §7.6.1).
  const connection = incoming.connection;
  if (connection !== undefined) {
    for (const token of connection.split(',')) delete out[token.trim().toLowerCase()];
  }
  const priorFor = incoming['x-forwarded-for'];
  out['x-forwarded-for'] = priorFor === undefined || priorFor === '' ? clientIp : `${String(priorFor)}, ${clientIp}`;
  const priorProto = incoming['x-forwarded-proto'];
  out['x-forwarded-proto'] = typeof priorProto === 'string' && (priorProto === 'https' || priorProto === 'http') ? priorProto : 'http';
  if (upstreamAuthorization !== undefined) out.authorization = upstreamAuthorization;
  if (hasJsonBody) out['content-type'] = 'application/json';
  return out;
}

/** Copies llama-server's response headers that may reach the client into `into` (theirs win). */
export function copyResponseHeaders(
  upstream: IncomingHttpHeaders | Record<string, string | string[] | undefined>,
  into: OutgoingHttpHeaders,
): OutgoingHttpHeaders {
  for (const name in upstream) {
    const value = upstream[name];
    if (value === undefined || RESPONSE_DROP.has(name) || name.startsWith(RESPONSE_DROP_PREFIX)) continue;
    into[name] = value;
  }
  return into;
}
