// Fastify's own floor: the least a Fastify pass-through in front of llama-server can do, to tell the
// gateway's own per-request cost from the framework's. One catch-all POST/GET route, the bearer
// check in an onRequest hook (string compare), the body taken as a Buffer (no JSON parse), one undici
// `Pool`, and the response written with reply.hijack() + body.pipe(res) as the gateway's relay does.
// No logger, no other hooks.
//
// Usage: UPSTREAM=http://127.0.0.1:N KEY=sk-… node bench/fastify-proxy.mjs  → prints {"port":N}
import Fastify from 'fastify';
import { Pool } from 'undici';

const upstream = new URL(process.env.UPSTREAM);
const expected = `Bearer ${process.env.KEY}`;
const pool = new Pool(upstream.origin, { pipelining: 1, headersTimeout: 600_000, bodyTimeout: 300_000 });
const JSON_HEADERS = { 'content-type': 'application/json' };

const app = Fastify({ logger: false, keepAliveTimeout: 120_000, requestTimeout: 0, return503OnClosing: false });
app.removeAllContentTypeParsers();
app.addContentTypeParser('*', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
app.addHook('onRequest', (request, reply, done) => {
  if (request.headers.authorization !== expected) return void reply.code(401).header('connection', 'close').send();
  done();
});
async function forward(request, reply) {
  const body = request.method === 'GET' ? undefined : request.body;
  let answer;
  try {
    answer = await pool.request({ method: request.method, path: request.url, headers: JSON_HEADERS, body });
  } catch {
    return reply.code(502).send();
  }
  const { statusCode, headers, body: upstreamBody } = answer;
  delete headers.connection;
  delete headers['keep-alive'];
  delete headers['transfer-encoding'];
  reply.hijack();
  const res = reply.raw;
  res.writeHead(statusCode, headers);
  upstreamBody.pipe(res);
  upstreamBody.on('error', () => res.destroy());
  res.on('close', () => {
    if (!res.writableFinished) upstreamBody.destroy();
  });
}
app.get('/*', forward);
app.post('/*', forward);

await app.listen({ port: 0, host: '127.0.0.1' });
process.stdout.write(`${JSON.stringify({ port: app.server.address().port })}\n`);
const stop = () => {
  app.server.closeAllConnections();
  pool.destroy().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 500).unref();
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
