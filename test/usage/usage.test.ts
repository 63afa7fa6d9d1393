// Who used what: for every route, streamed and not, the recorded tokens are what llama-server
// reported (numbers from the recordings); a client's stream is byte-identical to what it asked
// for; an abandoned stream is client_closed with estimated tokens; refusals are recorded; the
// batch writer flushes on close; the audit log rotates; /metrics is scraped; no key in any file.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { AuditLog } from '../../src/usage/audit-log.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { KeyStore } from '../../src/keys/key-store.js';
import { usageFilter } from '../../src/usage/period.js';
import { withIncludeUsage } from '../../src/proxy/json-body.js';
import type { UsageRecord } from '../../src/usage/exchange.js';
import { recordings } from '../fixtures/fake-llama.js';
import {
  AUTH_A,
  KEY_A,
  KEY_B,
  chatBody,
  metricValue,
  recordedBody,
  request,
  sleep,
  startGateway,
  within,
  withoutUsageChunk,
  type Gateway,
} from '../helpers.js';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CLI = join(ROOT, 'dist', 'cli', 'main.js');

interface Row {
  key_id: string | null;
  key_name: string | null;
  route: string;
  model: string | null;
  status: number;
  streamed: number;
  prompt_tokens: number | null;
  cached_tokens: number | null;
  completion_tokens: number | null;
  estimated: number;
  ttft_ms: number | null;
  duration_ms: number;
  bytes_in: number;
  bytes_out: number;
  client_ip: string | null;
  user_agent: string | null;
  outcome: string;
  request_id: string;
}

interface Setup {
  gw: Gateway;
  dir: string;
  dbPath: string;
  store: KeyStore;
  rows(): Row[];
}

async function setup(
  t: Parameters<typeof startGateway>[0],
  overrides: Parameters<typeof startGateway>[1] = {},
  behavior: Parameters<typeof startGateway>[2] = {},
): Promise<Setup> {
  const dir = mkdtempSync(join(tmpdir(), 'gw-usage-'));
  const dbPath = join(dir, 'gateway.db');
  const store = KeyStore.open(dbPath);
  const registry = new KeyRegistry([KEY_A, KEY_B], store);
  const gw = await startGateway(t, { auditLog: join(dir, 'audit.jsonl'), ...overrides }, behavior, { registry, usageFlushMs: 20 });
  t.teardown(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { gw, dir, dbPath, store, rows: () => store.db.prepare('SELECT * FROM usage ORDER BY id').all() as Row[] };
}

/** Closes the gateway (flushing every record) and returns the rows. */
async function closeAndRead(s: Setup): Promise<Row[]> {
  await s.gw.app.close();
  return s.rows();
}

const MESSAGES_BODY = (stream: boolean): string =>
  JSON.stringify({ model: 'claude-local', max_tokens: 4, stream, messages: [{ role: 'user', content: 'Hi' }] });

// [what, path, body, expected tokens as in the recordings: prompt, cached, completion]
const ROUTES: [string, string, string, [number | null, number | null, number | null], boolean][] = [
  ['chat', '/v1/chat/completions', chatBody(), [31, 10, 8], false],
  ['chat stream (client did not ask for usage)', '/v1/chat/completions', chatBody({ stream: true }), [31, 30, 6], true],
  [
    'chat stream with include_usage',
    '/v1/chat/completions',
    chatBody({ stream: true, stream_options: { include_usage: true } }),
    [31, 30, 6],
    true,
  ],
  ['completions', '/v1/completions', JSON.stringify({ model: 'gpt-oss-20b', prompt: 'Hi', max_tokens: 5 }), [2, 1, 5], false],
  [
    'completions stream',
    '/v1/completions',
    JSON.stringify({ model: 'gpt-oss-20b', prompt: 'Hi', max_tokens: 4, stream: true }),
    [2, 1, 4],
    true,
  ],
  ['embeddings', '/v1/embeddings', JSON.stringify({ model: 'gpt-oss-20b', input: ['a', 'b'] }), [4, null, null], false],
  ['rerank', '/v1/rerank', JSON.stringify({ model: 'gpt-oss-20b', query: 'q', documents: ['a', 'b'] }), [12, null, null], false],
  ['messages', '/v1/messages', MESSAGES_BODY(false), [29, 1, 4], false],
  ['messages stream', '/v1/messages', MESSAGES_BODY(true), [29, 1, 4], true],
  ['responses', '/v1/responses', JSON.stringify({ model: 'gpt-oss-20b', input: 'Hi' }), [29, 28, 4], false],
  ['responses stream', '/v1/responses', JSON.stringify({ model: 'gpt-oss-20b', input: 'Hi', stream: true }), [29, 28, 4], true],
];

t.test("every route, streamed and not: recorded tokens are llama-server's numbers", async (t) => {
  const s = await setup(t);
  for (const [, path, body] of ROUTES) {
    const res = await request(s.gw.port, { path, headers: { ...AUTH_A, 'user-agent': 'usage-test/1.0' }, body });
    t.equal(res.status, 200, path);
  }
  const rows = await closeAndRead(s);
  t.equal(rows.length, ROUTES.length, 'one record per request, all flushed on close');
  for (const [i, [what, path, body, [prompt, cached, completion], streamed]] of ROUTES.entries()) {
    const r = rows[i]!;
    t.match(
      r,
      {
        key_id: 'env-1',
        key_name: 'env-1',
        route: path,
        status: 200,
        streamed: streamed ? 1 : 0,
        prompt_tokens: prompt,
        cached_tokens: cached,
        completion_tokens: completion,
        estimated: 0,
        outcome: 'ok',
        client_ip: '127.0.0.1',
        user_agent: 'usage-test/1.0',
      },
      what,
    );
    t.equal(r.model, (JSON.parse(body) as { model: string }).model, `${what}: model`);
    t.equal(r.bytes_in, Buffer.byteLength(body), `${what}: bytes in are the client's body`);
    t.ok(r.bytes_out > 0 && r.duration_ms >= 0, `${what}: bytes out and duration`);
    if (streamed) t.ok(r.ttft_ms !== null && r.ttft_ms >= 0 && r.ttft_ms <= r.duration_ms, `${what}: time to first token`);
    else t.equal(r.ttft_ms, null);
  }
  // The client that did not ask for usage got exactly the stream it asked for; llama-server was asked.
  const fake = s.gw.fake.requests;
  t.match(fake[1]!.body.toString(), /"stream_options":\{"include_usage":true\}\}$/, 'include_usage was added upstream');
  t.equal(fake[2]!.body.toString(), ROUTES[2]![2], 'a client that asked is forwarded as it is');
  t.equal(fake[0]!.body.toString(), ROUTES[0]![2], 'non-streamed bodies are forwarded as they are');
});

t.test("the client's stream is byte-identical to what it asked for", async (t) => {
  const s = await setup(t);
  const withUsage = recordedBody(recordings['chat-stream-include-usage']!.chunks);
  const asked = await request(s.gw.port, {
    path: '/v1/chat/completions',
    headers: AUTH_A,
    body: chatBody({ stream: true, stream_options: { include_usage: true } }),
  });
  t.equal(asked.text, withUsage, 'with include_usage: every byte llama-server sent');
  const notAsked = await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true }) });
  t.equal(notAsked.text, withoutUsageChunk(withUsage), 'without: the same minus the usage-only chunk');
  t.notMatch(notAsked.text, '"usage"');
  t.match(notAsked.text, /data: \[DONE\]\n\n$/);
  const rows = await closeAndRead(s);
  t.equal(rows[1]!.completion_tokens, 6);
  t.equal(rows[1]!.bytes_out, Buffer.byteLength(notAsked.text), 'bytes out are what the client got');
});

t.test('include_usage is spliced in, keeping the rest of the body', async (t) => {
  const raw = Buffer.from('{ "model": "m",\n "stream": true ,"messages":[{"role":"user","content":"é}"}] }\n');
  const out = withIncludeUsage(raw, JSON.parse(raw.toString()) as Record<string, unknown>);
  t.equal(
    out.toString(),
    '{ "model": "m",\n "stream": true ,"messages":[{"role":"user","content":"é}"}] ,"stream_options":{"include_usage":true}}\n',
  );
  t.same(JSON.parse(out.toString()), {
    model: 'm',
    stream: true,
    messages: [{ role: 'user', content: 'é}' }],
    stream_options: { include_usage: true },
  });
  const other = withIncludeUsage(Buffer.from('{"stream":true,"stream_options":{"include_usage":false,"x":1}}'), {
    stream: true,
    stream_options: { include_usage: false, x: 1 },
  });
  t.same(JSON.parse(other.toString()), { stream: true, stream_options: { include_usage: true, x: 1 } });
});

t.test(
  'an abandoned stream: client_closed, prompt counted by llama-server, completion tokens from delivered chunks, upstream cancelled (regression #12)',
  async (t) => {
    const s = await setup(t, {}, { chunkDelayMs: 60, extraContentChunks: 100 });
    await new Promise<void>((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port: s.gw.port, method: 'POST', path: '/v1/chat/completions', headers: AUTH_A },
        (res) => {
          let events = 0;
          res.on('data', (c: Buffer) => {
            events += c.toString().split('data: ').length - 1;
            if (events >= 5) {
              req.destroy();
              resolve();
            }
          });
        },
      );
      req.on('error', () => {});
      req.on('close', () => resolve());
      req.end(chatBody({ stream: true }));
      setTimeout(() => reject(new Error('no chunks')), 5000).unref();
    });
    await within(s.gw.fake.requests[0]!.closed, 2000, 'upstream closed');
    await sleep(50);
    const rows = await closeAndRead(s);
    t.equal(rows.length, 1);
    const r = rows[0]!;
    t.match(r, { outcome: 'client_closed', status: 200, streamed: 1, estimated: 1, prompt_tokens: 29 });
    t.ok(
      r.completion_tokens !== null && r.completion_tokens >= 4 && r.completion_tokens < 50,
      `estimated ${r.completion_tokens} completion tokens from delivered chunks`,
    );
    const count = s.gw.fake.requests.find((q) => q.url === '/v1/chat/completions/input_tokens');
    t.ok(count, "the prompt was counted with llama-server's own route");
    t.equal(count?.body.toString(), chatBody({ stream: true }), "with the client's body");
  },
);

t.test('a stream:false client that leaves before llama-server answers: billed its prompt (regression #12)', async (t) => {
  const s = await setup(t, {}, { headersDelayMs: Infinity, countDelayMs: 0 });
  const req = http.request({ host: '127.0.0.1', port: s.gw.port, method: 'POST', path: '/v1/chat/completions', headers: AUTH_A });
  req.on('error', () => {});
  req.end(chatBody());
  const [upstream] = await s.gw.fake.waitForRequests(1);
  req.destroy();
  await within(upstream!.closed, 2000, 'upstream closed');
  const rows = await closeAndRead(s);
  t.match(rows, [{ outcome: 'client_closed', status: 499, streamed: 0, estimated: 1, prompt_tokens: 29, completion_tokens: null }]);
});

/** The audit log's lines (every record field, `estimate` too), after close. */
function auditLines(s: Setup): Record<string, unknown>[] {
  const file = readdirSync(s.dir).find((f) => f.startsWith('audit-'));
  if (file === undefined) return [];
  return readFileSync(join(s.dir, file), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

/** Sends `body` to `path` and destroys the request `afterMs` after llama-server received it. */
async function leaveAfter(s: Setup, path: string, body: string, afterMs: number, upstreamIndex = 0): Promise<void> {
  const req = http.request({ host: '127.0.0.1', port: s.gw.port, method: 'POST', path, headers: AUTH_A });
  req.on('error', () => {});
  req.end(body);
  const upstream = (await s.gw.fake.waitForRequests(upstreamIndex + 1))[upstreamIndex]!;
  await sleep(afterMs);
  req.destroy();
  await within(upstream.closed, 2000, 'upstream closed');
}

t.test(
  "a stream:false client that leaves mid-generation: completion tokens timed from llama-server's recent speed, capped by max_tokens (#12)",
  async (t) => {
    const s = await setup(t, {}, { countDelayMs: 0 });
    const records: UsageRecord[] = [];
    s.gw.app.usage!.onRecord((r) => records.push(r));
    // One finished answer tells the gateway llama-server's speed (its `timings`).
    t.equal((await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() })).status, 200);
    s.gw.fake.behavior.headersDelayMs = Infinity;
    await leaveAfter(s, '/v1/chat/completions', chatBody({ max_tokens: 8 }), 300, 1);
    await leaveAfter(s, '/v1/chat/completions', chatBody({ max_tokens: 1_000_000 }), 300, 3);
    const rows = await closeAndRead(s);
    t.equal(rows.length, 3);
    t.match(
      rows[1],
      { outcome: 'client_closed', streamed: 0, estimated: 1, prompt_tokens: 29, completion_tokens: 8 },
      'capped by max_tokens',
    );
    const timed = rows[2]!.completion_tokens!;
    t.ok(timed > 8 && timed < 1_000_000, `timed: ${timed} tokens in ~300 ms at the recorded speed`);
    t.match(auditLines(s)[1], { estimated: true, estimate: { prompt: 'counted', completion: 'timed' } });
    t.equal(records.length, 3, 'each record emitted once');
    t.match(records[1], { promptTokens: 29, completionTokens: 8, estimated: true }, 'listeners (limits, metrics) get the final numbers');
  },
);

t.test('an error event inside a 200 stream: upstream_error, the prompt counted, relayed tokens estimated (regression #12)', async (t) => {
  const s = await setup(t, {}, { midStreamError: true });
  const chat = await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true }) });
  t.equal(chat.status, 200);
  t.match(chat.text, /data: \{"error":\{"code":500/);
  const messages = await request(s.gw.port, { path: '/v1/messages', headers: AUTH_A, body: MESSAGES_BODY(true) });
  t.match(messages.text, /event: error\ndata: \{"code":500/);
  const rows = await closeAndRead(s);
  t.match(rows, [
    {
      route: '/v1/chat/completions',
      status: 200,
      streamed: 1,
      outcome: 'upstream_error',
      estimated: 1,
      prompt_tokens: 29,
      completion_tokens: (chat.text.match(/"delta":\{"/g) ?? []).length,
    },
    // Anthropic's message_start reported the prompt: kept; its output count never came.
    {
      route: '/v1/messages',
      status: 200,
      streamed: 1,
      outcome: 'upstream_error',
      estimated: 1,
      prompt_tokens: 29,
      completion_tokens: (messages.text.match(/"type":"content_block_delta"/g) ?? []).length,
    },
  ]);
  t.match(auditLines(s), [{ estimate: { prompt: 'counted', completion: 'relayed' } }, { estimate: { completion: 'relayed' } }]);
});

const PROMPTS = ['one two', 'three four five', 'six'];
// The fake's tokenizer: BOS + one token per word.
const PROMPT_TOKENS = 3 + 4 + 2;

t.test("a streamed prompt array: every prompt's usage is summed (regression #12)", async (t) => {
  const s = await setup(t);
  const res = await request(s.gw.port, {
    path: '/v1/completions',
    headers: AUTH_A,
    body: JSON.stringify({ model: 'gpt-oss-20b', prompt: PROMPTS, max_tokens: 5, stream: true }),
  });
  t.equal(res.status, 200);
  t.equal(res.text.match(/"usage"/g)?.length, 3, 'llama-server sent one usage per prompt, all passed on');
  const rows = await closeAndRead(s);
  t.match(rows, [{ outcome: 'ok', streamed: 1, estimated: 0, prompt_tokens: PROMPT_TOKENS, completion_tokens: 15, cached_tokens: 0 }]);
  t.equal(s.gw.fake.requests.length, 1, 'nothing to count: llama-server reported every prompt');
});

t.test('a non-streamed prompt array: every prompt counted, every choice counted, marked estimated (regression #12)', async (t) => {
  const s = await setup(t);
  const res = await request(s.gw.port, {
    path: '/v1/completions',
    headers: AUTH_A,
    body: JSON.stringify({ model: 'gpt-oss-20b', prompt: PROMPTS, max_tokens: 5 }),
  });
  t.equal(res.status, 200);
  const body = JSON.parse(res.text) as { choices: unknown[]; usage: { prompt_tokens: number } };
  t.equal(body.choices.length, 3);
  t.equal(body.usage.prompt_tokens, 3, "llama-server's usage is the first prompt's only");
  // Without max_tokens, a choice's "length" is not a known number: its text is counted.
  t.equal(
    (
      await request(s.gw.port, {
        path: '/v1/completions',
        headers: AUTH_A,
        body: JSON.stringify({ model: 'gpt-oss-20b', prompt: PROMPTS }),
      })
    ).status,
    200,
  );
  const rows = await closeAndRead(s);
  t.match(rows, [
    { outcome: 'ok', streamed: 0, estimated: 1, prompt_tokens: PROMPT_TOKENS, completion_tokens: 15 },
    { outcome: 'ok', streamed: 0, estimated: 1, prompt_tokens: PROMPT_TOKENS, completion_tokens: 12 },
  ]);
  t.match(auditLines(s), [
    { estimate: { prompt: 'counted', completion: 'retokenized' } },
    { estimate: { prompt: 'counted', completion: 'retokenized' } },
  ]);
  const calls = s.gw.fake.requests
    .filter((r) => r.url === '/tokenize')
    .map((r) => r.body.toString())
    .sort();
  const perPrompt = PROMPTS.map((content) => ({ content, add_special: true }));
  const expected = [
    ...perPrompt,
    ...perPrompt,
    { content: [' tok tok tok tok', ' tok tok tok tok', ' tok tok tok tok'], add_special: false },
  ]
    .map((c) => JSON.stringify(c))
    .sort();
  t.same(calls, expected, 'one /tokenize per prompt; choices that stopped at max_tokens are that many, the others counted');
});

t.test('messages: a tool call whose arguments hold "usage" is not the usage (regression #12)', async (t) => {
  const spoof = JSON.stringify({
    id: 'msg_1',
    type: 'message',
    role: 'assistant',
    content: [
      {
        type: 'tool_use',
        id: 'toolu_1',
        name: 'bill',
        input: { usage: { input_tokens: 0, output_tokens: 0, cache_read_input_tokens: 0 } },
      },
    ],
    model: 'claude-local',
    stop_reason: 'tool_use',
    stop_sequence: null,
    usage: { cache_read_input_tokens: 3, input_tokens: 500, output_tokens: 40 },
  });
  const s = await setup(t, {}, { failWith: { status: 200, body: spoof } });
  const res = await request(s.gw.port, { path: '/v1/messages', headers: AUTH_A, body: MESSAGES_BODY(false) });
  t.equal(res.text, spoof);
  const rows = await closeAndRead(s);
  t.match(rows, [{ outcome: 'ok', estimated: 0, prompt_tokens: 503, cached_tokens: 3, completion_tokens: 40 }]);
});

t.test('a count that fails is billed the body bytes / 4, marked (red team F2)', async (t) => {
  const s = await setup(t, {}, { headersDelayMs: Infinity, countFails: true });
  await leaveAfter(s, '/v1/chat/completions', chatBody(), 50);
  const rows = await closeAndRead(s);
  t.match(rows, [{ outcome: 'client_closed', estimated: 1, prompt_tokens: Math.ceil(Buffer.byteLength(chatBody()) / 4) }]);
  t.match(auditLines(s)[0], { estimate: { prompt: 'bytes', completion: 'unknown' } });
  t.ok(
    s.gw.logs.some((l) => String(l.msg).includes('token count from llama-server failed')),
    'logged',
  );
});

t.test("clients' slow counts do not hold up the gateway's own calls: GET /health (red team F2)", async (t) => {
  // Two clients' counts hang in llama-server (a 42 MB body took it 50–110 s), filling the light pool.
  const s = await setup(t, { lightSlots: 2 }, { countDelayMs: Infinity });
  const hung = [AUTH_A, { authorization: `Bearer ${KEY_B}` }].map((headers) => {
    const req = http.request({ host: '127.0.0.1', port: s.gw.port, method: 'POST', path: '/v1/messages/count_tokens', headers });
    req.on('error', () => {});
    req.end(MESSAGES_BODY(false));
    return req;
  });
  t.teardown(() => hung.forEach((r) => r.destroy()));
  await s.gw.fake.waitForRequests(2);
  const started = performance.now();
  const health = await request(s.gw.port, { method: 'GET', path: '/health' });
  t.equal(health.status, 200);
  t.ok(performance.now() - started < 1000, `GET /health answered at once: ${Math.round(performance.now() - started)} ms`);
});

t.test("llama-server's 5xx after generating: the prompt counted, the completion timed, marked (red team F6)", async (t) => {
  const s = await setup(t, {}, { countDelayMs: 0 });
  // One finished answer tells the gateway llama-server's speed.
  t.equal((await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() })).status, 200);
  s.gw.fake.behavior.headersDelayMs = 200;
  s.gw.fake.behavior.failWith = {
    status: 500,
    body: '{"error":{"code":500,"message":"Failed to parse input at pos 12: peg-native format","type":"server_error"}}',
  };
  const failed = await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ max_tokens: 4000 }) });
  t.equal(failed.status, 500);
  // A 4xx refusal costs nothing.
  s.gw.fake.behavior.failWith = { status: 400, body: '{"error":{"code":400,"message":"bad","type":"invalid_request_error"}}' };
  t.equal((await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() })).status, 400);
  const rows = await closeAndRead(s);
  t.equal(rows.length, 3);
  t.match(rows[1], { status: 500, outcome: 'upstream_error', estimated: 1, prompt_tokens: 29 });
  t.ok(rows[1]!.completion_tokens! > 0, `completion timed: ${rows[1]!.completion_tokens}`);
  t.match(auditLines(s)[1], { estimate: { prompt: 'counted', completion: 'timed' } });
  t.match(rows[2], { status: 400, estimated: 0, prompt_tokens: null, completion_tokens: null });
});

t.test('n > 1, non-streamed: every choice billed, the prompt once per task (red team F3)', async (t) => {
  // llama-server's answer to n: 2 (as measured): two choices, one task's usage.
  const body = JSON.stringify({
    choices: [
      { finish_reason: 'length', index: 0, message: { role: 'assistant', content: ' diverseReceivedmb tim' } },
      { finish_reason: 'stop', index: 1, message: { role: 'assistant', content: 'ney je' } },
    ],
    created: 1795957678,
    model: 'gpt-oss-20b',
    object: 'chat.completion',
    usage: { completion_tokens: 4, prompt_tokens: 29, total_tokens: 33, prompt_tokens_details: { cached_tokens: 0 } },
    id: 'chatcmpl-1',
  });
  const s = await setup(t, {}, { failWith: { status: 200, body } });
  const res = await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ max_tokens: 4, n: 2 }) });
  t.equal(res.text, body, 'the answer passes unchanged');
  s.gw.fake.behavior.failWith = null;
  const rows = await closeAndRead(s);
  // The fake's tokenizer: one token per word ("ney je": 2); the choice at max_tokens: 4.
  t.match(rows, [{ status: 200, estimated: 1, prompt_tokens: 29 * 2, completion_tokens: 4 + 2 }]);
  t.match(auditLines(s)[0], { estimate: { prompt: 'counted', completion: 'retokenized' } });
});

t.test('shutdown waits for counts still running before the last flush', async (t) => {
  const s = await setup(t, {}, { headersDelayMs: Infinity, countDelayMs: 300 });
  await leaveAfter(s, '/v1/responses', JSON.stringify({ model: 'gpt-oss-20b', input: 'Hi', stream: true }), 20);
  await leaveAfter(s, '/v1/embeddings', JSON.stringify({ model: 'gpt-oss-20b', input: ['a b', 'c'] }), 20, 2);
  const rows = await closeAndRead(s); // at once: both counts are still waiting upstream
  t.match(rows, [
    // Left before llama-server's first byte: no speed known yet to time it by.
    { route: '/v1/responses', outcome: 'client_closed', estimated: 1, prompt_tokens: 29, completion_tokens: null },
    { route: '/v1/embeddings', outcome: 'client_closed', estimated: 1, prompt_tokens: 3 + 2, completion_tokens: null },
  ]);
});

t.test('refusals and failures are recorded with their outcome', async (t) => {
  const s = await setup(t, { headersTimeoutMs: 200 });
  await request(s.gw.port, {
    path: '/v1/chat/completions',
    headers: { authorization: 'Bearer sk-wrong-0123456789abcdef' },
    body: chatBody(),
  });
  await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: '{broken' });
  await request(s.gw.port, {
    path: '/v1/chat/completions',
    headers: AUTH_A,
    body: chatBody({ model: 'gpt-oss-20b', x_fake_context_exceeded: true }),
  });
  s.gw.fake.behavior.headersDelayMs = Infinity;
  await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  s.gw.fake.behavior.headersDelayMs = 0;
  await request(s.gw.port, { path: '/healthz' });
  await request(s.gw.port, { path: '/nothing-here', headers: AUTH_A });
  const rows = await closeAndRead(s);
  t.same(
    rows.map((r) => [r.status, r.outcome, r.key_name]),
    [
      [400, 'rejected_policy', 'env-1'],
      [400, 'upstream_error', 'env-1'],
      [504, 'timeout', 'env-1'],
    ],
    'health checks, unknown routes and wrong keys are not usage (wrong keys: llm_gateway_auth_failures_total)',
  );
});

t.test('the batch writer: records reach the database within a flush, without waiting for close', async (t) => {
  const s = await setup(t);
  await request(s.gw.port, { path: '/v1/embeddings', headers: AUTH_A, body: '{"input":"a"}' });
  let rows: Row[] = [];
  for (let i = 0; i < 50 && rows.length === 0; i++) {
    await sleep(20);
    rows = s.rows();
  }
  t.equal(rows.length, 1, 'written by the timer');
  t.equal(rows[0]!.prompt_tokens, 4);
});

t.test('audit log: JSON Lines per day, no key text; rotation keeps GATEWAY_AUDIT_KEEP_DAYS', async (t) => {
  const s = await setup(t);
  await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await request(s.gw.port, {
    path: '/v1/chat/completions',
    headers: { authorization: `Bearer ${KEY_B}` },
    body: chatBody({ stream: true }),
  });
  await closeAndRead(s);
  const files = readdirSync(s.dir).filter((f) => f.startsWith('audit-'));
  t.same(files, [`audit-${new Date().toISOString().slice(0, 10)}.jsonl`]);
  const lines = readFileSync(join(s.dir, files[0]!), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  t.equal(lines.length, 2);
  t.match(lines[0], { keyName: 'env-1', route: '/v1/chat/completions', promptTokens: 31, completionTokens: 8, outcome: 'ok' });
  t.match(lines[1], { keyName: 'env-2', streamed: true, completionTokens: 6 });
  t.type(lines[0]!.time, 'string');
  t.notOk('requestBody' in lines[0]!, 'no prompt unless GATEWAY_LOG_BODIES');
  // No key text in any file the gateway wrote.
  for (const f of readdirSync(s.dir)) {
    const bytes = readFileSync(join(s.dir, f));
    for (const key of [KEY_A, KEY_B]) t.notOk(bytes.includes(Buffer.from(key)), `${f} holds no key`);
  }

  // Rotation, with explicit times.
  const dir = mkdtempSync(join(tmpdir(), 'gw-audit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const log = new AuditLog(join(dir, 'audit.jsonl'), 2);
  const day = (d: string): number => Date.parse(`${d}T12:00:00Z`);
  writeFileSync(join(dir, 'unrelated.txt'), 'keep me');
  await log.write(['{"n":1}'], day('2026-11-20'));
  await log.write(['{"n":2}', '{"n":3}'], day('2026-11-20'));
  await log.write(['{"n":4}'], day('2026-11-21'));
  t.same(readdirSync(dir).sort(), ['audit-2026-11-20.jsonl', 'audit-2026-11-21.jsonl', 'unrelated.txt']);
  t.equal(readFileSync(join(dir, 'audit-2026-11-20.jsonl'), 'utf8'), '{"n":1}\n{"n":2}\n{"n":3}\n');
  await log.write(['{"n":5}'], day('2026-11-23'));
  t.same(
    readdirSync(dir).sort(),
    ['audit-2026-11-21.jsonl', 'audit-2026-11-23.jsonl', 'unrelated.txt'],
    'files older than 2 days are removed when the day turns',
  );
});

t.test('GATEWAY_LOG_BODIES=true records the prompt and the completion text', async (t) => {
  const s = await setup(t, { logBodies: true });
  await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true }) });
  await closeAndRead(s);
  const file = readdirSync(s.dir).find((f) => f.startsWith('audit-'))!;
  const line = JSON.parse(readFileSync(join(s.dir, file), 'utf8').trim()) as Record<string, unknown>;
  t.equal(line.requestBody, chatBody({ stream: true }));
  t.equal(line.responseText, 'mittelсу polity polity polity polity');
});

t.test('GATEWAY_USAGE=off: no records, streams untouched', async (t) => {
  const s = await setup(t, { usage: false });
  const res = await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true }) });
  t.equal(res.text, recordedBody(recordings['chat-stream']!.chunks), 'the plain recorded stream');
  t.equal(s.gw.fake.requests[0]!.body.toString(), chatBody({ stream: true }), 'no include_usage added');
  t.same(await closeAndRead(s), []);
  t.notOk(existsSync(join(s.dir, `audit-${new Date().toISOString().slice(0, 10)}.jsonl`)));
});

t.test('/metrics: Prometheus text, for a local scraper or the admin key only', async (t) => {
  const admin = 'admin-secret-0123456789abcdef0123456789';
  const s = await setup(t, { adminKey: admin });
  await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true }) });
  await request(s.gw.port, { path: '/v1/models', headers: { authorization: 'Bearer sk-wrong-0123456789abcdef' } });
  const res = await request(s.gw.port, { path: '/metrics' });
  t.equal(res.status, 200);
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/);
  const text = res.text;
  t.equal(metricValue(text, 'llm_gateway_requests_total', { route: '/v1/chat/completions', status: '200', key: 'env-1' }), 2);
  t.equal(
    metricValue(text, 'llm_gateway_requests_total', { route: '/v1/models', status: '401', key: '' }),
    undefined,
    'a wrong key is no request series…',
  );
  t.equal(metricValue(text, 'llm_gateway_auth_failures_total', { reason: 'invalid_key' }), 1, '… but an auth failure');
  t.equal(metricValue(text, 'llm_gateway_tokens_total', { key: 'env-1', model: 'gpt-oss-20b', kind: 'prompt' }), 62);
  t.equal(metricValue(text, 'llm_gateway_tokens_total', { key: 'env-1', model: 'gpt-oss-20b', kind: 'completion' }), 14);
  t.equal(metricValue(text, 'llm_gateway_tokens_total', { key: 'env-1', model: 'gpt-oss-20b', kind: 'cached' }), 40);
  t.equal(metricValue(text, 'llm_gateway_request_duration_seconds_count', { route: '/v1/chat/completions' }), 2);
  t.equal(metricValue(text, 'llm_gateway_time_to_first_token_seconds_count', { route: '/v1/chat/completions' }), 1);
  t.equal(metricValue(text, 'llm_gateway_requests_in_flight', {}), 0);
  t.equal(metricValue(text, 'llm_gateway_requests_waiting', {}), 0);
  t.ok(metricValue(text, 'process_cpu_user_seconds_total', {}) !== undefined, 'default process metrics');
  t.notMatch(text, KEY_A);
  // Through a tunnel (cloudflared adds Cf-Connecting-Ip) it needs the admin key.
  const tunnel = await request(s.gw.port, { path: '/metrics', headers: { 'cf-connecting-ip': '203.0.113.7' } });
  t.equal(tunnel.status, 401);
  const clientKey = await request(s.gw.port, { path: '/metrics', headers: { ...AUTH_A, 'x-forwarded-for': '203.0.113.7' } });
  t.equal(clientKey.status, 401, 'a client key is not enough');
  const withAdmin = await request(s.gw.port, {
    path: '/metrics',
    headers: { authorization: `Bearer ${admin}`, 'cf-connecting-ip': '203.0.113.7' },
  });
  t.equal(withAdmin.status, 200);
});

function runCli(args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      cwd,
      env: { PATH: process.env.PATH ?? '' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

t.test('reports: llm-gateway usage (table, CSV, JSON), GET /admin/usage, keys list tokens today', async (t) => {
  const admin = 'admin-secret-0123456789abcdef0123456789';
  const s = await setup(t, { adminKey: admin });
  s.store.create({ name: 'alice' });
  await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await request(s.gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody({ stream: true }) });
  await request(s.gw.port, {
    path: '/v1/embeddings',
    headers: { authorization: `Bearer ${KEY_B}` },
    body: '{"model":"embed","input":["a","b"]}',
  });
  for (let i = 0; i < 50 && s.rows().length < 3; i++) await sleep(20);

  const api = await request(s.gw.port, { path: '/admin/usage?by=key&since=1d', headers: { authorization: `Bearer ${admin}` } });
  t.equal(api.status, 200);
  const report = JSON.parse(api.text) as { by: string; data: Record<string, unknown>[]; total: Record<string, number> };
  t.equal(report.by, 'key');
  t.same(report.data, [
    {
      key: 'env-1',
      requests: 2,
      prompt_tokens: 62,
      cached_tokens: 40,
      completion_tokens: 14,
      total_tokens: 76,
      estimated: 0,
      errors: 0,
      cost: null,
    },
    {
      key: 'env-2',
      requests: 1,
      prompt_tokens: 4,
      cached_tokens: 0,
      completion_tokens: 0,
      total_tokens: 4,
      estimated: 0,
      errors: 0,
      cost: null,
    },
  ]);
  t.same(report.total, { requests: 3, prompt_tokens: 66, cached_tokens: 40, completion_tokens: 14, total_tokens: 80, cost: null });
  const bad = await request(s.gw.port, { path: '/admin/usage?since=yesterday', headers: { authorization: `Bearer ${admin}` } });
  t.equal(bad.status, 400);
  t.equal((JSON.parse(bad.text) as { error: { code: string } }).error.code, 'invalid_period');
  t.equal((await request(s.gw.port, { path: '/admin/usage', headers: AUTH_A })).status, 401, 'client keys get 401');

  await s.gw.app.close();
  const cwd = s.dir;
  const table = await runCli(['usage', '--db', s.dbPath, '--by', 'model'], cwd);
  t.equal(table.code, 0, table.stderr);
  t.match(table.stdout, /^MODEL\s+REQUESTS\s+PROMPT\s+CACHED\s+COMPLETION\s+TOTAL\s+EST\.\s+ERRORS\n/);
  t.match(table.stdout, /\nembed\s+1\s+4\s+0\s+0\s+4\s+0\s+0\n/);
  t.match(table.stdout, /\ngpt-oss-20b\s+2\s+62\s+40\s+14\s+76\s+0\s+0\n/);
  t.match(table.stdout, /\nTOTAL\s+3\s+66\s+40\s+14\s+80\s+0\s+0\n$/);
  const csv = await runCli(['usage', '--db', s.dbPath, '--by', 'key', '--csv'], cwd);
  t.equal(
    csv.stdout,
    'key,requests,prompt_tokens,cached_tokens,completion_tokens,total_tokens,estimated,errors\nenv-1,2,62,40,14,76,0,0\nenv-2,1,4,0,0,4,0,0\n',
  );
  const json = await runCli(['usage', '--db', s.dbPath, '--key', 'env-2', '--json'], cwd);
  const parsed = JSON.parse(json.stdout) as { data: { day: string; total_tokens: number }[] };
  t.same(
    parsed.data.map((d) => [d.day, d.total_tokens]),
    [[new Date().toISOString().slice(0, 10), 4]],
  );
  const future = await runCli(['usage', '--db', s.dbPath, '--since', '2999-01-01'], cwd);
  t.equal(future.stdout, 'No usage recorded for this selection.\n');
  const wrong = await runCli(['usage', '--db', s.dbPath, '--by', 'week'], cwd);
  t.equal(wrong.code, 2);
  t.match(wrong.stderr, /by must be one of day, key, model, user, got "week"/);

  const list = await runCli(['keys', 'list', '--db', s.dbPath, '--json'], cwd);
  t.match(JSON.parse(list.stdout), { data: [{ name: 'alice', tokens_today: 0 }] });
});

t.test('report periods', async (t) => {
  const now = Date.parse('2026-11-26T12:00:00Z');
  t.same(usageFilter({ since: '7d' }, now), { since: now - 7 * 86_400_000 });
  t.same(usageFilter({ since: '2026-11-01', until: '2026-11-30' }, now), {
    since: Date.parse('2026-11-01T00:00:00Z'),
    until: Date.parse('2026-12-01T00:00:00Z'),
  });
  t.same(usageFilter({ key: 'alice', since: '' }, now), { key: 'alice' });
  t.throws(() => usageFilter({ since: 'last week' }, now), /since "last week" is not a time/);
  t.throws(() => usageFilter({ since: '1d', until: '2d' }, now), /until must be after since/);
});
