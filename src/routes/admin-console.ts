// The admin console's static files (console/, built into dist/console by `npm run build`), served at
// /admin/ when GATEWAY_ADMIN_KEY is set. The page holds no secret: it asks for the admin key and
// sends it as a Bearer header to the admin API (admin.ts), which checks it; so these files need no
// key and are registered outside the admin API's scope.
//
// The files are read once, at registration, into memory (a few hundred KB, gzipped once too) and
// each gets a route of its own: no wildcard route, so no path can reach another file (path
// traversal has nothing to match), and no disk read per request. Every answer carries a strict
// Content-Security-Policy (no inline script or style, nothing from elsewhere, no framing), and
// `Cache-Control: no-cache` with an ETag: a browser revalidates, a tunnel's cache never serves an
// old console after an upgrade.
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { extname, join, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

const BASE = '/admin';

export const CONSOLE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/** Sent with every console file. */
const SECURITY_HEADERS: Readonly<Record<string, string>> = {
  'content-security-policy': CONSOLE_CSP,
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'x-content-type-options': 'nosniff',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'cache-control': 'no-cache',
};

/** The types a console file may have; anything else in the folder is not served. */
const TYPES: Readonly<Record<string, string>> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};

/** Smaller files are sent as they are: gzip would save little. */
const GZIP_FROM_BYTES = 1024;

interface ConsoleFile {
  readonly type: string;
  readonly body: Buffer;
  readonly etag: string;
  readonly gzip: Buffer | null;
  readonly gzipEtag: string;
}

/** The built console: dist/console next to dist/routes, or, running from src/ (tests), the build's. */
function defaultDir(): string {
  const candidates = [
    fileURLToPath(new URL('../console/', import.meta.url)),
    fileURLToPath(new URL('../../dist/console/', import.meta.url)),
  ];
  return candidates.find((dir) => existsSync(join(dir, 'index.html'))) ?? candidates[0]!;
}

/** Every servable file under `dir`, by URL path below /admin/ ('' for index.html). */
export function loadConsole(dir: string): Map<string, ConsoleFile> {
  const files = new Map<string, ConsoleFile>();
  if (!existsSync(join(dir, 'index.html'))) return files;
  for (const entry of readdirSync(dir, { recursive: true, encoding: 'utf8' })) {
    const path = join(dir, entry);
    const type = TYPES[extname(entry)];
    if (type === undefined || !statSync(path).isFile()) continue;
    const body = readFileSync(path);
    const hash = createHash('sha256').update(body).digest('base64url').slice(0, 22);
    const gzip = type.startsWith('text/') || type === 'image/svg+xml' ? gzipSync(body, { level: 9 }) : null;
    const url = entry === 'index.html' ? '' : entry.split(sep).join('/');
    files.set(url, {
      type,
      body,
      etag: `"${hash}"`,
      gzip: gzip !== null && body.length >= GZIP_FROM_BYTES && gzip.length < body.length ? gzip : null,
      gzipEtag: `"${hash}-gz"`,
    });
  }
  return files;
}

function send(file: ConsoleFile, request: FastifyRequest, reply: FastifyReply): FastifyReply {
  reply.headers(SECURITY_HEADERS);
  const gzip = file.gzip !== null && /\bgzip\b/.test(request.headers['accept-encoding'] ?? '');
  const etag = gzip ? file.gzipEtag : file.etag;
  reply.header('etag', etag);
  if (file.gzip !== null) reply.header('vary', 'accept-encoding');
  if (request.headers['if-none-match'] === etag) return reply.code(304).send();
  reply.header('content-type', file.type);
  if (gzip) reply.header('content-encoding', 'gzip');
  return reply.send(gzip ? file.gzip : file.body);
}

export default async function adminConsoleRoutes(app: FastifyInstance, opts: { dir?: string }): Promise<void> {
  const dir = opts.dir ?? defaultDir();
  const files = loadConsole(dir);
  if (files.size === 0) {
    app.log.warn({ dir }, 'admin console: not built (npm run build), so /admin/ serves nothing; the admin API works');
    return;
  }
  // /admin → /admin/, so that the page's relative asset paths resolve below /admin/.
  app.get(BASE, async (_request, reply) => reply.headers(SECURITY_HEADERS).redirect(`${BASE}/`, 308));
  for (const [url, file] of files) {
    app.get(`${BASE}/${url}`, async (request, reply) => send(file, request, reply));
  }
}
