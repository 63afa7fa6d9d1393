// Several gateways in front of one real llama-server (issue 17): three gateway processes sharing
// Redis (slots, limits) and PostgreSQL (keys, usage), as README's "Running several gateways" sets
// them up. What the fake cannot show: llama-server's own queue (llamacpp:requests_deferred) stays
// empty while streams from two keys arrive through every gateway at once, and the usage rows in
// PostgreSQL carry llama-server's own token numbers.
import http from 'node:http';
import pg from 'pg';
import t from 'tap';
import { KEY_A, KEY_B, metricValue, sleep } from '../helpers.js';
import { REDIS_URL, pgSchema, redisPrefix, startGateways } from '../cluster/harness.js';
import { skipTier, startLlama, type RealLlama } from './llama.js';

interface Done {
  status: number;
  text: string;
}

function stream(port: number, key: string, body: unknown): Promise<Done> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: '/v1/completions',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

async function llamaMetric(llama: RealLlama, name: string): Promise<number> {
  const res = await fetch(`${llama.url}/metrics`);
  return metricValue(await res.text(), name) ?? NaN;
}

if (!skipTier(t)) {
  t.test('three gateways, one llama-server of 2 slots: its own queue stays empty, usage lands in PostgreSQL', async (t) => {
    const llama = await startLlama(t, { slots: 2, alias: 'gpt-oss-20b', extraArgs: ['-t', '1'] });
    const database = await pgSchema(t);
    const gateways = await startGateways(t, 3, {
      env: {
        LLM_API_KEYS: `${KEY_A},${KEY_B}`,
        LLM_UPSTREAM: llama.url,
        GATEWAY_REDIS_URL: REDIS_URL,
        GATEWAY_REDIS_PREFIX: redisPrefix(),
        GATEWAY_DATABASE_URL: database,
        GATEWAY_KEY_SLOTS: '1',
      },
      readyMs: 60_000,
    });
    // Six streams, three per key, two through each gateway, all at once.
    const body = { model: 'gpt-oss-20b', prompt: 'x', max_tokens: 120, stream: true, temperature: 0 };
    let sampling = true;
    let deferred = 0;
    let processing = 0;
    const sampler = (async () => {
      while (sampling) {
        deferred = Math.max(deferred, await llamaMetric(llama, 'llamacpp:requests_deferred'));
        processing = Math.max(processing, await llamaMetric(llama, 'llamacpp:requests_processing'));
        await sleep(20);
      }
    })();
    const done = await Promise.all(Array.from({ length: 6 }, (_, i) => stream(gateways[i % 3]!.port, i % 2 === 0 ? KEY_A : KEY_B, body)));
    sampling = false;
    await sampler;
    t.same(
      done.map((d) => d.status),
      [200, 200, 200, 200, 200, 200],
      'all six answered',
    );
    t.ok(
      done.every((d) => d.text.includes('data: [DONE]') && !d.text.includes('"error"')),
      'all six streams ran to their end',
    );
    t.equal(deferred, 0, 'llama-server never queued a request itself (requests_deferred stayed 0): the gateways kept to its 2 slots');
    t.ok(processing <= 2, `llama-server processed at most 2 at once (${processing})`);

    // Usage: one row per stream in PostgreSQL, with llama-server's numbers (not estimates).
    const client = new pg.Client({ connectionString: database });
    await client.connect();
    t.teardown(() => client.end());
    let rows: { key_name: string; completion_tokens: number; prompt_tokens: number; estimated: number; status: number }[] = [];
    for (let i = 0; i < 100 && rows.length < 6; i++) {
      rows = (
        await client.query<{ key_name: string; completion_tokens: number; prompt_tokens: number; estimated: number; status: number }>(
          "SELECT key_name, prompt_tokens, completion_tokens, estimated, status FROM usage WHERE route = '/v1/completions' ORDER BY id",
        )
      ).rows;
      if (rows.length < 6) await sleep(100);
    }
    t.equal(rows.length, 6, 'six usage rows in PostgreSQL, written by three gateways');
    t.ok(
      rows.every(
        (r) => r.status === 200 && r.estimated === 0 && r.prompt_tokens > 0 && r.completion_tokens > 0 && r.completion_tokens <= 120,
      ),
      'each with llama-server’s own prompt and completion tokens',
    );
    t.equal(new Set(rows.map((r) => r.key_name)).size, 2, 'both keys');
  });
}
