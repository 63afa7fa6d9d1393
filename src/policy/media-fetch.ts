// The gateway fetches a request's media URLs itself (remote_media rule "fetch") and forwards them
// inline, so llama-server never opens a connection a client chose. The fetch is the guarded one
// llama-server lacks:
//   - https only, on the first URL and on every redirect (at most MAX_REDIRECTS, each re-checked);
//   - every address the host resolves to must be public (isPublicAddress: no loopback, private,
//     link-local or metadata, CGNAT, ULA, multicast, documentation or other reserved ranges, and
//     IPv4-mapped / NAT64 forms are judged by the IPv4 inside);
//   - no DNS rebinding: the check runs inside the socket's own lookup, so the address checked is the
//     address connected to (an IP literal is checked before connecting, as no lookup happens); one
//     connection per hop (agent: false), never a pooled socket to an address checked for another;
//   - limits: GATEWAY_MEDIA_MAX_BYTES per file (Content-Length, then counted while reading),
//     GATEWAY_MEDIA_MAX_COUNT URLs per request, GATEWAY_MEDIA_TIMEOUT_MS per URL (hops and body),
//     and all the files of a request together no more than the body, inlined, may grow to within
//     GATEWAY_BODY_LIMIT (a client may not send more; the gateway does not build more for it);
//   - the Content-Type must match the part (image/*, audio/*, video/*), without Content-Encoding.
// A refusal is MEDIA_FETCH_FAILED: the URL's place, its host and what the gateway saw (a status, a
// size), never the remote answer's body nor the address a name resolved to (that would map the
// operator's network for the client).
import dns from 'node:dns';
import type { IncomingMessage } from 'node:http';
import https from 'node:https';
import net, { BlockList } from 'node:net';
import type { Config } from '../config.js';
import { GatewayError, MEDIA_FETCH_FAILED, MEDIA_TOO_MANY } from '../errors.js';
import type { MediaKind, RemoteMedia } from './media.js';

/** Redirects followed per URL (a fourth is refused). */
export const MAX_REDIRECTS = 3;

export interface ResolvedAddress {
  readonly address: string;
  readonly family: number;
}

/**
 * For tests only, in code (never a setting): the test's https server is on 127.0.0.1 with a
 * certificate of its own, and its host names resolve to what the test says.
 */
export interface MediaFetchTesting {
  /** addresses taken as public (exact strings, before IPv4-mapped forms are unwrapped) */
  readonly treatAsPublic?: readonly string[];
  /** the one CA certificate trusted instead of the system's */
  readonly ca?: string;
  /** name resolution instead of the system's (dns.lookup) */
  readonly resolve?: (hostname: string) => Promise<readonly ResolvedAddress[]>;
}

export interface MediaFetchOptions extends MediaFetchTesting {
  readonly maxBytes: number;
  /** GATEWAY_BODY_LIMIT, and the client's body size: the body with its files inlined stays within the limit */
  readonly bodyLimit?: number;
  readonly bodyBytes?: number;
  readonly maxCount: number;
  readonly timeoutMs: number;
  /** the client's request: when it goes, the fetches stop */
  readonly signal?: AbortSignal;
}

/** The settings' limits (computed once, when the policy plugin registers). */
export function mediaFetchOptions(config: Config, testing: MediaFetchTesting = {}): MediaFetchOptions {
  return {
    maxBytes: config.mediaMaxBytes,
    maxCount: config.mediaMaxCount,
    timeoutMs: config.mediaTimeoutMs,
    bodyLimit: config.bodyLimit,
    ...testing,
  };
}

// ── Which addresses are public ───────────────────────────────────────────────────────────────────

// IANA's special-purpose registries (RFC 6890 and successors): nothing here is a public web server.
const V4_RESERVED = new BlockList();
for (const [net4, prefix] of [
  ['0.0.0.0', 8], // "this network"
  ['10.0.0.0', 8], // private
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8], // loopback
  ['169.254.0.0', 16], // link-local, incl. the cloud metadata service 169.254.169.254
  ['172.16.0.0', 12], // private
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.0.2.0', 24], // documentation (TEST-NET-1)
  ['192.88.99.0', 24], // 6to4 relay anycast (deprecated)
  ['192.168.0.0', 16], // private
  ['198.18.0.0', 15], // benchmarking
  ['198.51.100.0', 24], // documentation (TEST-NET-2)
  ['203.0.113.0', 24], // documentation (TEST-NET-3)
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, and the broadcast address
] as const)
  V4_RESERVED.addSubnet(net4, prefix, 'ipv4');

// Inside global unicast (2000::/3, the only public IPv6 space): what is still special.
const V6_RESERVED = new BlockList();
for (const [net6, prefix] of [
  ['2001::', 23], // IETF protocol assignments, incl. Teredo 2001::/32 (tunnels to any IPv4)
  ['2001:db8::', 32], // documentation
  ['2002::', 16], // 6to4 (tunnels to any IPv4)
  ['3fff::', 20], // documentation
] as const)
  V6_RESERVED.addSubnet(net6, prefix, 'ipv6');

/** A valid IPv6 literal as its eight 16-bit groups (a trailing dotted IPv4 counts as two). */
function groupsOf(ip: string): number[] | null {
  let text = ip;
  const tail: number[] = [];
  const lastColon = text.lastIndexOf(':');
  const last = text.slice(lastColon + 1);
  if (last.includes('.')) {
    if (!net.isIPv4(last)) return null;
    const b = last.split('.').map(Number) as [number, number, number, number];
    tail.push((b[0] << 8) | b[1], (b[2] << 8) | b[3]);
    text = text.slice(0, lastColon + 1); // "::ffff:" or "::"
    if (!text.endsWith('::')) text = text.slice(0, -1);
  }
  const halves = text.split('::');
  if (halves.length > 2) return null;
  const parse = (s: string): number[] => (s === '' ? [] : s.split(':').map((h) => parseInt(h, 16)));
  const left = parse(halves[0]!);
  const right = halves.length === 2 ? parse(halves[1]!) : [];
  const missing = 8 - tail.length - left.length - right.length;
  if (halves.length === 2 ? missing < 0 : missing !== 0) return null;
  return [...left, ...new Array<number>(missing).fill(0), ...right, ...tail];
}

function v4Of(hi: number, lo: number): string {
  return `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
}

/** True when `ip` (an IPv4 or IPv6 literal) is an address a public web server may have. */
export function isPublicAddress(ip: string, treatAsPublic: readonly string[] = []): boolean {
  const address = ip.replace(/%.*$/, ''); // a zone (fe80::1%eth0) is link-local anyway
  if (treatAsPublic.includes(address)) return true;
  const family = net.isIP(address);
  if (family === 4) return !V4_RESERVED.check(address, 'ipv4');
  if (family !== 6) return false;
  const g = groupsOf(address.toLowerCase());
  if (g === null || g.length !== 8) return false;
  const zeroHead = g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0;
  // ::ffff:a.b.c.d (IPv4-mapped) and 64:ff9b::a.b.c.d (NAT64, RFC 6052): the IPv4 inside decides.
  if ((zeroHead && g[5] === 0xffff) || (g[0] === 0x64 && g[1] === 0xff9b && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0))
    return !V4_RESERVED.check(v4Of(g[6]!, g[7]!), 'ipv4');
  // Outside 2000::/3: unspecified, loopback, IPv4-compatible, ULA fc00::/7, link-local fe80::/10,
  // site-local, multicast ff00::/8, discard, local NAT64 64:ff9b:1::/48…
  if ((g[0]! & 0xe000) !== 0x2000) return false;
  return !V6_RESERVED.check(address, 'ipv6');
}

// ── Fetching one URL ─────────────────────────────────────────────────────────────────────────────

/** Why one URL was not fetched: the words end up in MEDIA_FETCH_FAILED. */
class Refusal extends Error {}

const NOT_PUBLIC = 'its address is not public (loopback, private, link-local or reserved); the gateway fetches only from the internet';
const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const ACCEPT: Record<MediaKind, string> = { image: 'image/*', audio: 'audio/*', video: 'video/*' };
/** A MIME type that can stand in a data: URL (no parameters, no comma or semicolon). */
const MIME = /^([a-z0-9][a-z0-9!#$&^_.+-]*)\/[a-z0-9][a-z0-9!#$&^_.+-]*$/;

interface Fetched {
  readonly mime: string;
  readonly body: Buffer;
}

type LookupCallback = (err: Error | null, address: string | ResolvedAddress[], family?: number) => void;

function systemResolve(hostname: string): Promise<readonly ResolvedAddress[]> {
  return dns.promises.lookup(hostname, { all: true, verbatim: true });
}

/** The socket's lookup: resolves, refuses unless every address is public, connects to those. */
function guardedLookup(opts: MediaFetchOptions) {
  const resolve = opts.resolve ?? systemResolve;
  return (hostname: string, options: { all?: boolean }, callback: LookupCallback): void => {
    resolve(hostname).then(
      (found) => {
        if (found.length === 0) return callback(new Refusal('its host name does not resolve'), '');
        if (!found.every((a) => isPublicAddress(a.address, opts.treatAsPublic))) return callback(new Refusal(NOT_PUBLIC), '');
        if (options.all === true) return callback(null, [...found]);
        return callback(null, found[0]!.address, found[0]!.family);
      },
      () => callback(new Refusal('its host name does not resolve'), ''),
    );
  };
}

function get(url: URL, media: MediaKind, opts: MediaFetchOptions, signal: AbortSignal): Promise<IncomingMessage> {
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  const literal = net.isIP(host) !== 0;
  if (literal && !isPublicAddress(host, opts.treatAsPublic)) return Promise.reject(new Refusal(NOT_PUBLIC));
  return new Promise((resolve, reject) => {
    const req = https.request({
      hostname: host,
      port: url.port === '' ? 443 : Number(url.port),
      path: `${url.pathname}${url.search}`,
      method: 'GET',
      headers: { 'user-agent': 'llm-gateway', accept: ACCEPT[media], 'accept-encoding': 'identity' },
      agent: false,
      signal,
      ...(literal ? {} : { lookup: guardedLookup(opts) as unknown as typeof dns.lookup, servername: host }),
      ...(opts.ca === undefined ? {} : { ca: opts.ca }),
    });
    req.once('response', resolve);
    req.once('error', reject);
    req.end();
  });
}

/** What a request's files may still add to its body (bytes before base64), shared by its fetches. */
interface Room {
  left: number;
  readonly limit: number;
}

const tooBigInlined = (room: Room): Refusal =>
  new Refusal(`inlined, the request would be larger than ${room.limit} bytes (GATEWAY_BODY_LIMIT)`);

/** Reads the body, refusing as soon as it passes the limit (its own, or the request's room). */
async function readCapped(res: IncomingMessage, maxBytes: number, room: Room): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res as AsyncIterable<Buffer>) {
    size += chunk.length;
    room.left -= chunk.length;
    if (size > maxBytes || room.left < 0) {
      res.destroy();
      throw size > maxBytes ? new Refusal(`it is larger than ${maxBytes} bytes (GATEWAY_MEDIA_MAX_BYTES)`) : tooBigInlined(room);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

/** The answer's media type when it suits the part, else a Refusal. */
function mediaType(res: IncomingMessage, media: MediaKind, maxBytes: number): string {
  const encoding = res.headers['content-encoding'];
  if (encoding !== undefined && encoding.trim().toLowerCase() !== 'identity')
    throw new Refusal('it was sent compressed (Content-Encoding), which the gateway does not unpack');
  const length = Number(res.headers['content-length']);
  if (length > maxBytes) throw new Refusal(`it is larger than ${maxBytes} bytes (GATEWAY_MEDIA_MAX_BYTES)`);
  const mime = (res.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
  const m = MIME.exec(mime);
  if (m === null || m[1] !== media)
    throw new Refusal(`its Content-Type is ${mime === '' ? 'missing' : `'${mime.slice(0, 64)}'`}, not ${media}/*`);
  return mime;
}

async function fetchOne(first: string, media: MediaKind, opts: MediaFetchOptions, signal: AbortSignal, room: Room): Promise<Fetched> {
  let url: URL;
  try {
    url = new URL(first);
  } catch {
    throw new Refusal('it is not a valid URL');
  }
  for (let hop = 0; ; hop++) {
    if (url.protocol !== 'https:')
      throw new Refusal(hop === 0 ? 'only https:// URLs are fetched' : 'it redirects to a URL that is not https://');
    const res = await get(url, media, opts, signal);
    const status = res.statusCode ?? 0;
    if (REDIRECTS.has(status)) {
      res.destroy();
      const location = res.headers.location;
      if (location === undefined || location === '') throw new Refusal(`it answered HTTP ${status} without a Location`);
      if (hop === MAX_REDIRECTS) throw new Refusal(`it redirects more than ${MAX_REDIRECTS} times`);
      try {
        url = new URL(location, url);
      } catch {
        throw new Refusal('it redirects to an invalid URL');
      }
      continue;
    }
    if (status < 200 || status > 299) {
      res.destroy();
      throw new Refusal(`it answered HTTP ${status}`);
    }
    let mime: string;
    try {
      mime = mediaType(res, media, opts.maxBytes);
      if (Number(res.headers['content-length']) > room.left) throw tooBigInlined(room);
    } catch (err) {
      res.destroy();
      throw err;
    }
    return { mime, body: await readCapped(res, opts.maxBytes, room) };
  }
}

/** The words for a failure that is not a Refusal (a socket, TLS or timeout error). */
function reasonOf(err: unknown, timedOut: boolean, timeoutMs: number): string {
  if (timedOut) return `it did not arrive within ${Math.round(timeoutMs / 100) / 10} s (GATEWAY_MEDIA_TIMEOUT_MS)`;
  if (err instanceof Refusal) return err.message;
  const raw = (err as { code?: unknown }).code;
  const code = typeof raw === 'string' ? raw : '';
  if (/^(ERR_TLS|ERR_SSL|CERT_|UNABLE_TO|DEPTH_ZERO|SELF_SIGNED|HOSTNAME_MISMATCH)/.test(code) || code.includes('CERT'))
    return 'its TLS certificate was not accepted';
  return 'the connection failed';
}

/** One URL fetched within its time limit, or a MEDIA_FETCH_FAILED naming its place and host. */
async function fetchGuarded(item: RemoteMedia, opts: MediaFetchOptions, all: AbortSignal, room: Room): Promise<Fetched> {
  const own = new AbortController();
  const timer = setTimeout(() => own.abort(), opts.timeoutMs);
  try {
    return await fetchOne(item.url, item.media, opts, AbortSignal.any([all, own.signal]), room);
  } catch (err) {
    if (err instanceof GatewayError) throw err;
    if (all.aborted && !own.signal.aborted) throw all.reason; // another URL failed, or the client left
    let host = '';
    try {
      host = new URL(item.url).host;
    } catch {
      host = item.url.slice(0, 64);
    }
    throw MEDIA_FETCH_FAILED(item.path, host, reasonOf(err, own.signal.aborted, opts.timeoutMs));
  } finally {
    clearTimeout(timer);
  }
}

// ── Writing the files into the body ──────────────────────────────────────────────────────────────

/**
 * A copy of `root` in which the object holding the value at `at` is a fresh copy (and so is every
 * container on the way): the client's parse is never changed, and untouched branches are shared.
 */
function copyTo(root: Record<string, unknown>, at: readonly (string | number)[]): [Record<string, unknown>, Record<string, unknown>] {
  const top: Record<string, unknown> = { ...root };
  let node: Record<string, unknown> | unknown[] = top;
  for (let i = 0; i < at.length - 1; i++) {
    const key = at[i]!;
    const child: unknown = (node as Record<string | number, unknown>)[key];
    const copy: Record<string, unknown> | unknown[] = Array.isArray(child)
      ? [...(child as unknown[])]
      : { ...(child as Record<string, unknown>) };
    (node as Record<string | number, unknown>)[key] = copy;
    node = copy;
  }
  return [top, node as Record<string, unknown>];
}

function writeBack(root: Record<string, unknown>, item: RemoteMedia, file: Fetched): Record<string, unknown> {
  const [top, holder] = copyTo(root, item.at);
  const key = item.at[item.at.length - 1] as string;
  const base64 = file.body.toString('base64');
  if (item.form === 'data-url') {
    holder[key] = `data:${file.mime};base64,${base64}`;
  } else if (item.form === 'base64') {
    delete holder.url;
    holder.data = base64;
  } else {
    delete holder.url;
    holder.type = 'base64';
    holder.media_type = file.mime;
    holder.data = base64;
  }
  return top;
}

/**
 * The body with every found URL fetched (https, public addresses, limits: see the top of the file)
 * and replaced by its file inline. The URLs are fetched at once, each distinct one once; the first
 * failure stops the others and is thrown (MEDIA_FETCH_FAILED, or MEDIA_TOO_MANY before any fetch).
 * `json` itself is not changed.
 */
export async function inlineRemoteMedia(
  json: Record<string, unknown>,
  found: readonly RemoteMedia[],
  opts: MediaFetchOptions,
): Promise<Record<string, unknown>> {
  if (found.length === 0) return json;
  if (found.length > opts.maxCount) throw MEDIA_TOO_MANY(found.length, opts.maxCount);
  const all = new AbortController();
  const onClientGone = (): void => all.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onClientGone, { once: true });
  if (opts.signal?.aborted === true) all.abort(opts.signal.reason);
  const limit = opts.bodyLimit ?? Infinity;
  // A file is written into the body as base64 (4 bytes per 3) once per place it is named at.
  const room: Room = { left: Math.floor(((limit - (opts.bodyBytes ?? 0)) * 3) / 4) - 64 * found.length, limit };
  const fetches = new Map<string, Promise<Fetched>>();
  for (const item of found) {
    const id = `${item.media} ${item.url}`;
    if (!fetches.has(id)) {
      const p = fetchGuarded(item, opts, all.signal, room);
      p.catch((err: unknown) => all.abort(err));
      fetches.set(id, p);
    }
  }
  try {
    const files = await Promise.all(found.map((item) => fetches.get(`${item.media} ${item.url}`)!));
    let out = json;
    found.forEach((item, i) => {
      out = writeBack(out, item, files[i]!);
    });
    return out;
  } finally {
    opts.signal?.removeEventListener('abort', onClientGone);
  }
}
