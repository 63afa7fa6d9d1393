// A remote media server for the media tests: https on 127.0.0.1 with a self-signed certificate made
// at test time (openssl CLI) for the test's host names, serving an image, audio, and every way a
// remote answer can go wrong. Each request is recorded (path, Host); test names resolve as the test
// says (MediaFetchTesting.resolve), so "a host name that resolves to a private address" needs no DNS.
import { execFileSync } from 'node:child_process';
import dns from 'node:dns';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import type net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MediaFetchTesting, ResolvedAddress } from '../../src/policy/media-fetch.js';
import type { Teardown } from '../helpers.js';

/** A real 1×1 PNG. */
export const PNG = Buffer.from(
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==',
  'base64',
);
/** A few bytes served as audio/wav (never decoded). */
export const WAV = Buffer.from('RIFF\x24\x00\x00\x00WAVEfmt ', 'latin1');
/** What a remote answer says that must never reach the client. */
export const SECRET = 'internal-only: db password hunter2';

/** The names in the certificate. */
const NAMES = ['media.test', 'rebind.test', 'mixed.test', 'private.test'];

export interface MediaServer {
  readonly port: number;
  /** the certificate (and its own CA) */
  readonly ca: string;
  /** path and Host of every request, in order */
  readonly seen: { path: string; host: string }[];
  /** connections accepted (TCP) */
  connections(): number;
  /** https://media.test:<port><path> */
  url(path: string, host?: string): string;
}

let made: { key: string; cert: string } | undefined;

/** One certificate per test process: the files are read and removed at once. */
function certificate(): { key: string; cert: string } {
  if (made !== undefined) return made;
  const dir = mkdtempSync(join(tmpdir(), 'gw-media-'));
  const key = join(dir, 'key.pem');
  const cert = join(dir, 'cert.pem');
  const san = [...NAMES.map((n) => `DNS:${n}`), 'IP:127.0.0.1'].join(',');
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2'].concat([
      '-keyout',
      key,
      '-out',
      cert,
      '-subj',
      '/CN=media.test',
      '-addext',
      `subjectAltName=${san}`,
    ]),
    { stdio: 'ignore' },
  );
  made = { key: readFileSync(key, 'utf8'), cert: readFileSync(cert, 'utf8') };
  rmSync(dir, { recursive: true, force: true });
  return made;
}

export async function startMediaServer(t: Teardown): Promise<MediaServer> {
  const { key, cert } = certificate();
  const seen: { path: string; host: string }[] = [];
  const sockets = new Set<net.Socket>();
  let connections = 0;
  let port = 0;
  const here = (path: string, host = 'media.test'): string => `https://${host}:${port}${path}`;
  const server = https.createServer({ key, cert }, (req, res) => {
    const path = req.url ?? '/';
    seen.push({ path, host: req.headers.host ?? '' });
    const redirect = (to: string): void => void res.writeHead(302, { location: to }).end(SECRET);
    switch (path) {
      case '/cat.png':
        res.writeHead(200, { 'content-type': 'image/png', 'content-length': PNG.length }).end(PNG);
        return;
      case '/voice.wav':
        res.writeHead(200, { 'content-type': 'audio/wav; charset=binary' }).end(WAV);
        return;
      case '/big.png': // no Content-Length: counted while read
        res.writeHead(200, { 'content-type': 'image/png' });
        for (let i = 0; i < 64; i++) res.write(Buffer.alloc(1024, i));
        res.end();
        return;
      case '/declared-big.png':
        res.writeHead(200, { 'content-type': 'image/png', 'content-length': 50_000_000 });
        res.write(PNG);
        return; // never ends: the declared size alone refuses it
      case '/slow.png':
        res.writeHead(200, { 'content-type': 'image/png' });
        res.write(PNG.subarray(0, 8));
        return; // the rest never comes
      case '/page.html':
        res.writeHead(200, { 'content-type': 'text/html' }).end(`<p>${SECRET}</p>`);
        return;
      case '/no-type':
        res.writeHead(200).end(PNG);
        return;
      case '/gzip.png':
        res.writeHead(200, { 'content-type': 'image/png', 'content-encoding': 'gzip' }).end(PNG);
        return;
      case '/missing.png':
        res.writeHead(404, { 'content-type': 'text/plain' }).end(SECRET);
        return;
      case '/to-cat':
        return redirect('/cat.png');
      case '/to-loop':
      case '/loop':
        return redirect('/loop');
      case '/to-private-ip':
        return redirect('https://10.0.0.1/cat.png');
      case '/to-metadata':
        return redirect('http://169.254.169.254/latest/meta-data/iam/security-credentials/');
      case '/to-metadata-https':
        return redirect('https://169.254.169.254/latest/meta-data/');
      case '/to-private-name':
        return redirect(here('/cat.png', 'private.test'));
      case '/to-http':
        return redirect(`http://media.test:${port}/cat.png`);
      case '/to-self-rebind':
        return redirect(here('/cat.png', 'rebind.test'));
      case '/no-location':
        res.writeHead(302).end();
        return;
      default:
        res.writeHead(404).end();
    }
  });
  server.on('connection', (s: net.Socket) => {
    connections++;
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as net.AddressInfo).port;
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  return { port, ca: cert, seen, connections: () => connections, url: here };
}

/** The test's own name resolution: each name's answers, in turn (the last one repeats). */
export function resolver(names: Record<string, readonly (readonly string[])[]>): {
  resolve: NonNullable<MediaFetchTesting['resolve']>;
  asked: string[];
} {
  const asked: string[] = [];
  const turn = new Map<string, number>();
  const resolve = async (hostname: string): Promise<readonly ResolvedAddress[]> => {
    asked.push(hostname);
    const answers = names[hostname];
    if (answers === undefined) return dns.promises.lookup(hostname, { all: true, verbatim: true });
    const i = turn.get(hostname) ?? 0;
    turn.set(hostname, i + 1);
    return answers[Math.min(i, answers.length - 1)]!.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
  return { resolve, asked };
}

/** The names the media tests use. */
export const TEST_NAMES = {
  'media.test': [['127.0.0.1']],
  'private.test': [['10.0.0.7']],
  'mixed.test': [['127.0.0.1', '192.168.1.20']],
  'metadata.test': [['169.254.169.254']],
  'v6private.test': [['fd00::1']],
  // public for the first connection, private for the next (DNS rebinding)
  'rebind.test': [['127.0.0.1'], ['10.0.0.9']],
} as const;
