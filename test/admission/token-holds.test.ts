// Token limits hold before a request runs and settle after (issue 12): a key with a tokens-per-
// minute limit that fires 20 streams at once gets only as many admitted as its limit can hold,
// instead of all 20 (they were checked only after the fact); holds are replaced by llama-server's
// real numbers when the usage record arrives, and released when there is none.
import t from 'tap';
import { MemoryCounters } from '../../src/admission/counters.js';
import { envIdentity } from '../../src/keys/key-index.js';
import { Limits } from '../../src/admission/limits.js';
import { MAX_PROMPT_ESTIMATE, reserveFor } from '../../src/admission/token-estimate.js';
import { maxOutputTokens } from '../../src/usage/estimate.js';
import { AUTH_A, chatBody, request, sleep, startGateway, until, type RawResponse } from '../helpers.js';

const errorCode = (r: RawResponse): string => (JSON.parse(r.text) as { error: { code: string } }).error.code;

t.test('what a request holds: its body as prompt tokens plus the answer it may generate', async (t) => {
  const body = (json: Record<string, unknown>): [Buffer, Record<string, unknown>] => [Buffer.from(JSON.stringify(json)), json];
  const chat = body({ model: 'm', messages: [{ role: 'user', content: 'x'.repeat(380) }], max_tokens: 100 });
  t.equal(chat[0].length, 452);
  t.equal(reserveFor(...chat, true, 1024), 113 + 100, 'ceil(452 / 4) + max_tokens');
  t.equal(reserveFor(...chat, false, 1024), 113, 'embeddings and rerank hold only their prompt');
  t.equal(maxOutputTokens({}, 1024), 1024, 'none named: GATEWAY_RESERVE_TOKENS');
  t.equal(maxOutputTokens({ max_tokens: 10, n_predict: 5 }, 1024), 5, "llama-server's n_predict overrides max_tokens there");
  t.equal(
    maxOutputTokens({ n_predict: -1, max_tokens: 7 }, 1024),
    1024,
    'n_predict -1 is no limit in llama-server, whatever max_tokens says: the fallback (red team)',
  );
  t.equal(
    maxOutputTokens({ n_predict: 'x', max_tokens: 7 }, 1024),
    1024,
    'an n_predict llama-server would not read as a bound: the fallback',
  );
  t.equal(maxOutputTokens({ max_completion_tokens: 9, max_tokens: 50 }, 1024), 9);
  t.equal(maxOutputTokens({ max_output_tokens: 11 }, 1024), 11, '/v1/responses');
  t.equal(maxOutputTokens({ max_tokens: '10' }, 1024), 1024, 'not a number: the fallback');
  const prompts = body({ model: 'm', prompt: ['a', 'b', 'c'], max_tokens: 10 });
  t.equal(reserveFor(...prompts, true, 1024), Math.ceil(prompts[0].length / 4) + 30, 'a prompt array runs one generation per prompt');
  const tokens = body({ model: 'm', prompt: [1, 2, 3], max_tokens: 10 });
  t.equal(reserveFor(...tokens, true, 1024), Math.ceil(tokens[0].length / 4) + 10, 'an array of token ids is one prompt');
  const n = body({ model: 'm', messages: [], max_tokens: 10, n: 3 });
  t.equal(reserveFor(...n, true, 1024), Math.ceil(n[0].length / 4) + 30, 'n answers');
  t.equal(
    reserveFor(Buffer.alloc(50 * 1024 * 1024), { max_tokens: 1 }, true, 1024),
    MAX_PROMPT_ESTIMATE + 1,
    'a huge body is held for at most MAX_PROMPT_ESTIMATE prompt tokens',
  );
});

t.test('Limits: held tokens count against the limit until settled or released', async (t) => {
  const limits = new Limits(new MemoryCounters());
  const key = { ...envIdentity(1), limits: { rpm: null, tpm: 1000, tpd: null, concurrency: null } };
  const l = limits.of(key);
  const now = Date.parse('2026-11-29T10:00:05Z');
  t.ok(Limits.holdsTokens(l));
  t.notOk(Limits.holdsTokens({ rpm: 5, tpm: null, tpd: null, concurrency: 2 }));
  limits.reserve(key.id, 'req-1', 600, now);
  t.equal(limits.check(key.id, l, now), undefined, '600 of 1000 held: admitted');
  limits.reserve(key.id, 'req-2', 600, now);
  t.match(limits.check(key.id, l, now), { limit: 'tokens per minute', max: 1000 }, '1200 held: refused');
  t.equal(limits.headers(key.id, l, now)['x-ratelimit-remaining-tokens'], '0');
  limits.reserve(key.id, 'req-2', 600, now);
  t.equal(limits.held(key.id), 1200, 'a request holds once');
  limits.settle(key.id, 'req-1', 50, now);
  t.equal(limits.held(key.id), 600, "req-1's hold is gone…");
  t.equal(limits.headers(key.id, l, now)['x-ratelimit-remaining-tokens'], '350', '…replaced by the 50 it used');
  limits.settle(key.id, 'req-1', 0, now);
  t.equal(limits.held(key.id), 600, 'settling twice releases nothing more');
  limits.release('req-2');
  t.equal(limits.held(key.id), 0);
  limits.reserve(key.id, 'req-3', 10, now);
  limits.sweep(now + 10_000, 60_000);
  t.equal(limits.held(key.id), 10, 'a young hold survives the sweep');
  limits.sweep(now + 120_000, 60_000);
  t.equal(limits.held(key.id), 0, 'a hold whose record never came is dropped');
});

t.test('20 streams at once from a key with tpm 2000: only what the limit can hold is admitted', async (t) => {
  // Each stream takes ~1 s upstream, so all 20 arrive while the first ones still run.
  const gw = await startGateway(
    t,
    { defaultTpm: 2000, maxInflight: 20 },
    { chunkDelayMs: 50, extraContentChunks: 20 },
    { usageFlushMs: 50 },
  );
  const body = chatBody({ stream: true, max_tokens: 500 });
  const hold = reserveFor(Buffer.from(body), JSON.parse(body) as Record<string, unknown>, true, 1024);
  const expected = Math.ceil(2000 / hold); // admitted while used + held < 2000
  const all = await Promise.all(
    Array.from({ length: 20 }, () => request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body })),
  );
  const admitted = all.filter((r) => r.status === 200);
  const refused = all.filter((r) => r.status === 429);
  t.equal(admitted.length, expected, `${expected} admitted (each holds ${hold} tokens)`);
  t.equal(refused.length, 20 - expected);
  for (const r of refused) {
    t.equal(errorCode(r), 'tokens_per_minute');
    t.ok(Number(r.headers['retry-after']) >= 1);
  }
  t.equal(gw.fake.requests.length, expected, 'the refused ones never reached llama-server');
  await sleep(100);
  // The holds were settled with llama-server's numbers (31 prompt + 6 completion each, from the
  // recording), so the key has room again.
  const after = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ max_tokens: 8 }) });
  t.equal(after.status, 200, 'settled: admitted again');
});

t.test('a refused or failed request gives its hold back', async (t) => {
  const gw = await startGateway(
    t,
    { defaultTpm: 100 },
    { failWith: { status: 400, body: '{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}' } },
  );
  for (let i = 0; i < 5; i++) {
    const r = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ max_tokens: 60 }) });
    t.equal(r.status, 400, `llama-server's 400 passes (${i + 1}), and the hold of ~90 tokens is released`);
    await sleep(10);
  }
});

t.test('with usage off, a hold ends with its response', async (t) => {
  const gw = await startGateway(t, { defaultTpm: 100, usage: false });
  for (let i = 0; i < 5; i++) {
    const r = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ max_tokens: 60 }) });
    t.equal(r.status, 200, `request ${i + 1} admitted`);
  }
});

t.test("GATEWAY_RESERVE_TOKENS=auto: a request that names no bound holds llama-server's context per slot", async (t) => {
  // The fake's /props is the recording's: default_generation_settings.n_ctx 2048.
  const gw = await startGateway(t, { defaultTpm: 1_000_000, reserveTokens: null, maxInflight: null }, {}, { discovery: true });
  await until('the gateway read /props', () => gw.app.limits.completionHold === 2048, 5000);
  const body = JSON.stringify({
    model: 'gpt-oss-20b',
    messages: [{ role: 'user', content: 'Hello' }],
    stream: true,
    n_predict: -1,
    max_tokens: 5,
  });
  const r = await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body });
  t.equal(r.status, 200);
  const remaining = 1_000_000 - Number(r.headers['x-ratelimit-remaining-tokens']);
  t.equal(remaining, Math.ceil(Buffer.byteLength(body) / 4) + 2048, 'n_predict -1 held as a whole slot context, not as max_tokens 5');
});
