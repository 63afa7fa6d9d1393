// The platform ceiling: the least a Node pass-through in front of llama-server can do.
// node:http server + one undici Pool, auth by string compare, request body buffered and forwarded,
// response piped back (pipeline() destroys the upstream body, and so aborts it, if the client leaves).
//
// Usage: UPSTREAM=http://127.0.0.1:N KEY=sk-… node bench/bare-proxy.mjs  → prints {"port":N}
import http from 'node:http';
import { pipeline } from 'node:stream';
import { Pool } from 'undici';

const upstream = new URL(process.env.UPSTREAM);
const expected = `Bearer ${process.env.KEY}`;
const pool = new Pool(upstream.origin, { pipelining: 1, headersTimeout: 600_000, bodyTimeout: 300_000 });
const JSON_HEADERS = { 'content-type': 'application/json' };

function forward(req, res, body) {
  pool.request({ method: req.method, path: req.url, headers: JSON_HEADERS, body }).then(
    ({ statusCode, headers, body: upstreamBody }) => {
      delete headers.connection;
      delete headers['keep-alive'];
      delete headers['transfer-encoding'];
      res.writeHead(statusCode, headers);
      pipeline(upstreamBody, res, () => {});
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
