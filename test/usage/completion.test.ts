// The usage completer on its own (usage/completion.ts), with a stand-in for llama-server's counting
// calls: a timed-out job stops its calls (red team F1: 986k /tokenize calls kept running after
// their jobs timed out), a job makes a bounded number of calls, and a failed count is billed an
// estimate, never nothing (F2).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import t from 'tap';
import { configWith } from '../../src/config.js';
import { Upstream } from '../../src/proxy/upstream.js';
import { UsageCompleter, needOf, type CountingCall } from '../../src/usage/completion.js';
import { Exchange, type UsageRecord } from '../../src/usage/exchange.js';
import { sleep } from '../helpers.js';

function record(): UsageRecord {
  return {
    ts: Date.now(),
    requestId: 'req-1',
    keyId: 'k',
    keyName: 'k',
    route: '/v1/embeddings',
    model: null,
    status: 499,
    streamed: false,
    promptTokens: null,
    cachedTokens: null,
    completionTokens: null,
    estimated: false,
    ttftMs: null,
    durationMs: 100,
    bytesIn: 0,
    bytesOut: 0,
    clientIp: null,
    userAgent: null,
    outcome: 'client_closed',
    endUser: null,
    cost: null,
  };
}

function embeddings(inputs: string[]): { ex: Exchange; json: Record<string, unknown>; raw: Buffer } {
  const json = { model: 'm', input: inputs };
  const raw = Buffer.from(JSON.stringify(json));
  return { ex: new Exchange('embeddings', '/v1/embeddings', 'm', raw.length), json, raw };
}

/** A /tokenize stand-in: one token per character plus BOS, after `delayMs`; honours the signal. */
function tokenizer(delayMs: number): { call: CountingCall; calls: number; aborted: number; inFlight: () => number } {
  let inFlight = 0;
  const state = {
    calls: 0,
    aborted: 0,
    inFlight: () => inFlight,
    call: (async (_path, body, signal) => {
      state.calls++;
      inFlight++;
      try {
        await new Promise<void>((resolve, reject) => {
          const onAbort = (): void => {
            clearTimeout(timer);
            state.aborted++;
            reject(new Error('aborted'));
          };
          const timer = setTimeout(() => {
            signal.removeEventListener('abort', onAbort);
            resolve();
          }, delayMs);
          signal.addEventListener('abort', onAbort, { once: true });
        });
      } finally {
        inFlight--;
      }
      const { content } = JSON.parse(String(body)) as { content: string };
      return { statusCode: 200, text: JSON.stringify({ tokens: new Array<number>(content.length + 1).fill(7) }) };
    }) as CountingCall,
  };
  return state;
}

t.test('a job that times out stops calling llama-server (red team F1)', async (t) => {
  const stand = tokenizer(20);
  const emitted: UsageRecord[] = [];
  const completer = new UsageCompleter({
    call: stand.call,
    emit: (r) => emitted.push(r),
    rates: { speeds: () => ({ prompt: null, predicted: null }) },
    timeoutMs: 100,
  });
  const { ex, json, raw } = embeddings(Array.from({ length: 50_000 }, () => 'x'));
  ex.status = 200;
  completer.add(record(), ex, needOf(ex, false)!, json, raw);
  await t.resolves(
    (async () => {
      while (emitted.length === 0) await sleep(10);
    })(),
  );
  const callsAtTimeout = stand.calls;
  await sleep(300);
  t.equal(stand.calls, callsAtTimeout, 'no more calls after the job was written');
  t.equal(stand.inFlight(), 0, 'the call in flight was aborted');
  t.ok(stand.calls <= 32, `calls bounded per job: ${stand.calls}`);
  t.equal(emitted.length, 1);
  t.match(emitted[0], { estimated: true, estimate: { prompt: 'bytes' }, promptTokens: Math.ceil(raw.length / 4) }, 'billed bytes / 4');
});

t.test('a job of thousands of inputs: the first counted, the rest estimated from their bytes, marked', async (t) => {
  const stand = tokenizer(0);
  const emitted: UsageRecord[] = [];
  const completer = new UsageCompleter({
    call: stand.call,
    emit: (r) => emitted.push(r),
    rates: { speeds: () => ({ prompt: null, predicted: null }) },
  });
  const { ex, json, raw } = embeddings(Array.from({ length: 1000 }, () => 'abcdefgh'));
  ex.status = 200;
  completer.add(record(), ex, needOf(ex, false)!, json, raw);
  await completer.drain();
  t.equal(stand.calls, 32, 'at most 32 calls');
  t.match(emitted, [{ promptTokens: 32 * 9 + (1000 - 32) * 2, estimated: true, estimate: { prompt: 'partly_counted' } }]);
});

t.test('a few inputs: each counted exactly', async (t) => {
  const stand = tokenizer(0);
  const emitted: UsageRecord[] = [];
  const completer = new UsageCompleter({
    call: stand.call,
    emit: (r) => emitted.push(r),
    rates: { speeds: () => ({ prompt: null, predicted: null }) },
  });
  const { ex, json, raw } = embeddings(['ab', 'cde']);
  ex.status = 200;
  completer.add(record(), ex, needOf(ex, false)!, json, raw);
  await completer.drain();
  t.match(emitted, [{ promptTokens: 3 + 4, estimate: { prompt: 'counted' } }]);
});

t.test("needOf: llama-server's 5xx on generation routes is billed; its 4xx and 503 are not (red team F6)", async (t) => {
  const ex = (kind: 'chat' | 'completions' | 'responses' | 'messages' | 'embeddings', status: number): Exchange => {
    const e = new Exchange(kind, '/', null, 10);
    e.status = status;
    return e;
  };
  for (const kind of ['chat', 'completions', 'responses', 'messages'] as const) {
    t.same(needOf(ex(kind, 500), false), { prompt: true, completion: 'timed' }, `${kind} 500`);
    t.equal(needOf(ex(kind, 400), false), null, `${kind} 400`);
    t.equal(needOf(ex(kind, 503), false), null, `${kind} 503`);
  }
  t.equal(needOf(ex('embeddings', 500), false), null, 'embeddings 500: nothing generated');
});

t.test("the gateway's own calls: a pool apart from clients' light calls; timed from when they are queued (red team F2)", async (t) => {
  // A llama-server that never answers.
  const hung = new Set<http.ServerResponse>();
  const server = http.createServer((_req, res) => {
    hung.add(res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  const upstream = new Upstream(configWith({ apiKeys: [], upstreams: [`http://127.0.0.1:${port}`] }));
  t.teardown(async () => {
    await upstream.destroy();
    for (const res of hung) res.destroy();
    server.close();
  });
  const started = performance.now();
  // More calls than the pool has connections: the last ones wait for one, and still time out on time.
  const calls = Array.from({ length: 6 }, () =>
    upstream.post('/tokenize', '{}', { timeoutMs: 300 }).then(
      () => 'answered',
      (err: { code?: string }) => err.code,
    ),
  );
  t.same(await Promise.all(calls), new Array(6).fill('upstream_timeout'));
  const elapsed = performance.now() - started;
  t.ok(elapsed < 1500, `every call ended within its timeout, queued ones too: ${Math.round(elapsed)} ms`);
  const controller = new AbortController();
  const aborted = upstream.post('/tokenize', '{}', { signal: controller.signal });
  controller.abort();
  await t.rejects(aborted, 'a caller can abort its call');
});
