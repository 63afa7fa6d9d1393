// The platform ceiling: the least a Node pass-through in front of llama-server can do.
// node:http server + one undici Pool, auth by string compare, request body buffered and forwarded,
// response piped back; a client that leaves destroys the upstream body (which aborts it).
//
// Two ways to pipe the response, chosen by BARE_MODE:
//   pipeline (default; the "bare" row) — stream.pipeline(), the idiomatic way, and the reference the
//            issue's targets were set against (~0.34× nginx). On Node 20, pipeline() creates and
//            aborts an AbortController per call (a DOMException with a stack trace each time) and
//            adds end-of-stream watchers: about half of this pass-through's CPU per small request.
//   pipe     (the "bare-pipe" row) — body.pipe(res) plus a 'close' listener: the real ceiling.
//
// Usage: UPSTREAM=http://127.0.0.1:N KEY=sk-… [BARE_MODE=pipe] node bench/bare-proxy.mjs  → prints {"port":N}
import http from 'node:http';
import { pipeline } from 'node:stream';
import { Pool } from 'undici';

const upstream = new URL(process.env.UPSTREAM);
const expected = `Bearer ${process.env.KEY}`;
const PIPE = process.env.BARE_MODE === 'pipe';
const pool = new Pool(upstream.origin, { pipelining: 1, headersTimeout: 600_000, bodyTimeout: 300_000 });
const JSON_HEADERS = { 'content-type': 'application/json' };

function forward(req, res, body) {
  pool.request({ method: req.method, path: req.url, headers: JSON_HEADERS, body }).then(
    ({ statusCode, headers, body: upstreamBody }) => {
      delete headers.connection;
      delete headers['keep-alive'];
      delete headers['transfer-encoding'];
      res.writeHead(statusCode, headers);
      if (!PIPE) {
        pipeline(upstreamBody, res, () => {});
        return;
      }
      upstreamBody.pipe(res);
      upstreamBody.on('error', () => res.destroy());
      res.on('close', () => {
        if (!res.writableFinished) upstreamBody.destroy();
      });
    },
    () => res.writeHead(502).end(),
  );
}

const server = http.createServer((req, res) => {
  if (req.headers.authorization !== expected) {
    res.writeHead(401, { connection: 'close' }).end();
    return;
  }
  if (req.method === 'GET') return forward(req, res, undefined);
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => forward(req, res, Buffer.concat(chunks)));
});
server.keepAliveTimeout = 120_000;
server.headersTimeout = 130_000;
server.requestTimeout = 0;

server.listen(0, '127.0.0.1', () => process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`));
const stop = () => {
  server.closeAllConnections();
  pool.destroy().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 500).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
