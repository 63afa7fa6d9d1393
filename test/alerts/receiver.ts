// A webhook receiver on 127.0.0.1 for the alerts tests: records every POST (headers and raw body)
// and answers each with the next of the statuses it was given ('hang' holds the request open until
// release() or close; the last status repeats). It verifies signatures exactly as README "Alerts"
// tells a receiver to.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type net from 'node:net';
import type { Teardown } from '../helpers.js';

export const SECRET = 'whsec-0123456789abcdef0123456789abcdef';

interface Received {
  readonly headers: http.IncomingHttpHeaders;
  readonly body: string;
  readonly json: { id: string; type: string; created_at: string; data: Record<string, unknown> };
}

export interface Receiver {
  readonly url: string;
  readonly received: Received[];
  /** Answers every held ('hang') request with 200. */
  release(): void;
  close(): Promise<void>;
}

export async function startReceiver(t: Teardown, statuses: (number | 'hang')[] = [200]): Promise<Receiver> {
  const received: Received[] = [];
  const held: http.ServerResponse[] = [];
  let n = 0;
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      received.push({ headers: req.headers, body, json: JSON.parse(body) as Received['json'] });
      const status = statuses[Math.min(n++, statuses.length - 1)]!;
      if (status === 'hang') held.push(res);
      else res.writeHead(status, { 'content-type': 'text/plain' }).end(status < 300 ? 'ok' : 'receiver says no');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  };
  t.teardown(close);
  return {
    url: `http://127.0.0.1:${port}/hooks/llm-gateway?token=abc`,
    received,
    release() {
      for (const res of held.splice(0)) if (!res.destroyed) res.writeHead(200).end('ok');
    },
    close,
  };
}

/** README "Alerts"' receiver check: the signature is right and its timestamp at most `toleranceS` old. */
export function verify(header: string | undefined, body: string, secret = SECRET, toleranceS = 300, nowS = Date.now() / 1000): boolean {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header ?? '');
  if (m === null) return false;
  const expected = createHmac('sha256', secret).update(`${m[1]}.${body}`).digest();
  if (!timingSafeEqual(expected, Buffer.from(m[2]!, 'hex'))) return false;
  return Math.abs(nowS - Number(m[1])) <= toleranceS;
}
