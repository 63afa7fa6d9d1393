// Public health routes: no key needed, so they live outside the authenticated scope.
//   GET /healthz  the gateway process is up (never calls upstream)
//   GET /health   llama-server's readiness: 200 ready, 503 loading (its own body), 502 unreachable
import type { FastifyInstance } from 'fastify';

const JSON_TYPE = 'application/json; charset=utf-8';
const OK = '{"status":"ok"}';

export default async function healthRoutes(app: FastifyInstance): Promise<void> {
  app.get('/healthz', (_request, reply) => {
    reply.header('content-type', JSON_TYPE).send(OK);
  });

  app.get('/health', async (_request, reply) => {
    const answer = await app.upstream.get('/health');
    if (answer.statusCode === 200) return reply.header('content-type', JSON_TYPE).send(OK);
    const contentType = answer.headers['content-type'];
    return reply
      .code(answer.statusCode)
      .header('content-type', typeof contentType === 'string' ? contentType : JSON_TYPE)
      .send(answer.text);
  });
}
