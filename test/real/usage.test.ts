// Usage records against a real llama-server (#12, "usage can be dodged"): a client that leaves is
// billed its exact prompt (llama-server's own count), streamed or not; a streamed prompt array is
// summed exactly; llama-server's error inside a 200 stream is an upstream_error; ordinary requests
// on every API are recorded with llama-server's own numbers.
import http from 'node:http';
import t from 'tap';
import type { UsageRecord } from '../../src/usage/exchange.js';
import { AUTH_A, until } from '../helpers.js';
import { countTokens, skipTier, startRealGateway, type RealGateway } from './llama.js';

/** Every record the gateway emits (once each, with final numbers), by request id order of arrival. */
function watch(gw: RealGateway): UsageRecord[] {
  const records: UsageRecord[] = [];
  gw.app.usage!.onRecord((r) => records.push(r));
  return records;
}

async function post(gw: RealGateway, path: string, body: unknown): Promise<{ status: number; text: string }> {
  const res = await fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { ...AUTH_A, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, text: await res.text() };
}

/**
 * A request that must succeed: the tiny model's random output now and then ends in its own format
 * error (a 500, or an error event in a stream: README); such an answer is tried again, up to 5 times.
 */
async function postOk(gw: RealGateway, path: string, body: unknown): Promise<{ status: number; text: string; tries: number }> {
  for (let tries = 1; ; tries++) {
    const res = await post(gw, path, body);
    if ((res.status === 200 && !/data: \{"error"/.test(res.text)) || tries === 5) return { ...res, tries };
  }
}

/**
 * Sends a request and leaves: after the first SSE event (`afterMs` null; a keep-alive comment the
 * gateway writes while the request waits for a slot does not count) or after `afterMs`.
 */
function leave(gw: RealGateway, path: string, body: unknown, afterMs: number | null): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: gw.port, method: 'POST', path, headers: { ...AUTH_A, 'content-type': 'application/json' } },
      (res) => {
        res.on('data', (chunk: Buffer) => {
          if (afterMs === null && chunk.includes('data:')) req.destroy();
        });
      },
    );
    req.on('error', () => {});
    req.on('close', () => resolve());
    req.end(JSON.stringify(body));
    if (afterMs !== null) setTimeout(() => req.destroy(), afterMs);
    setTimeout(() => reject(new Error('the request did not end')), 20_000).unref();
  });
}

/** The usage objects of an SSE body. */
function sseUsages(
  text: string,
): { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens?: number } }[] {
  return text
    .split('\n\n')
    .map((e) => /^data: (\{.*\})$/m.exec(e)?.[1])
    .filter((d): d is string => d !== undefined)
    .map((d) => (JSON.parse(d) as { usage?: { prompt_tokens: number; completion_tokens: number } }).usage)
    .filter((u) => u !== undefined && u !== null);
}

// ~400 prompt tokens: long enough to matter, and the tiny model generates from it for seconds.
const LONG = `${'x '.repeat(400)}x`;

if (!skipTier(t)) {
  t.test('a client that leaves is billed its exact prompt, streamed or not', async (t) => {
    const gw = await startRealGateway(t, {}, { usageFlushMs: 50 });
    const records = watch(gw);
    // Finished answers: the gateway learns llama-server's speed from their `timings`.
    // (The first after start is slow: a second one makes the speed more like the steady one.)
    let seeded = 0;
    for (const first of ['y', 'w'])
      seeded += (await postOk(gw, '/v1/completions', { model: 'gpt-oss-20b', prompt: `${first} ${LONG}`, max_tokens: 16 })).tries;

    const chat = { model: 'gpt-oss-20b', messages: [{ role: 'user', content: LONG }], max_tokens: 32, stream: true };
    const completions = { model: 'gpt-oss-20b', prompt: LONG, max_tokens: 3000, stream: true };
    const nonStream = { model: 'gpt-oss-20b', prompt: LONG, max_tokens: 3000 };
    await leave(gw, '/v1/chat/completions', chat, null);
    await leave(gw, '/v1/completions', completions, null);
    await leave(gw, '/v1/completions', nonStream, 600);
    const [c, s, n] = await until(
      'three completed records',
      () => (records.length >= seeded + 3 ? records.slice(seeded, seeded + 3) : undefined),
      15_000,
      20,
    );

    const chatCount = await countTokens(gw.llama, '/v1/chat/completions/input_tokens', chat);
    const promptCount = await countTokens(gw.llama, '/tokenize', { content: LONG, add_special: true });
    t.ok(promptCount > 400, `the prompt is ${promptCount} tokens`);
    t.match(
      c,
      { route: '/v1/chat/completions', outcome: 'client_closed', streamed: true, promptTokens: chatCount, estimated: true },
      `aborted chat stream: ${chatCount} prompt tokens, as llama-server counts`,
    );
    t.match(
      s,
      {
        route: '/v1/completions',
        outcome: 'client_closed',
        streamed: true,
        promptTokens: promptCount,
        estimated: true,
        estimate: { prompt: 'counted', completion: 'relayed' },
      },
      'aborted completions stream',
    );
    t.ok(s!.completionTokens! >= 1 && s!.completionTokens! < 3000, `relayed ${s!.completionTokens} completion tokens`);
    t.match(
      n,
      {
        route: '/v1/completions',
        outcome: 'client_closed',
        streamed: false,
        promptTokens: promptCount,
        estimated: true,
        estimate: { prompt: 'counted', completion: 'timed' },
      },
      'aborted stream:false: the prompt, exactly',
    );
    // The timed estimate is an estimate: on a busy machine the prompt alone can take the ~600 ms, so 0 is honest.
    t.ok(
      typeof n!.completionTokens === 'number' && n!.completionTokens >= 0 && n!.completionTokens <= 3000,
      `stream:false: ${n!.completionTokens} completion tokens estimated from ~600 ms at llama-server's speed`,
    );
    t.equal(records.length, seeded + 3, 'each record once');
  });

  t.test('a streamed prompt array is summed exactly; a non-streamed one counts every prompt', async (t) => {
    // Two prompts, both slots for one key: a request runs one task per prompt at once, and one over
    // the key's share (default: all but one slot) or the slots is refused.
    const gw = await startRealGateway(t, { keySlots: 'all' }, { usageFlushMs: 50 });
    const records = watch(gw);
    // Prompts of x: the tiny model's outputs from them do not end in its format error (README).
    const prompts = ['x', 'x x x x'];
    const streamed = await postOk(gw, '/v1/completions', { model: 'gpt-oss-20b', prompt: prompts, max_tokens: 5, stream: true });
    t.equal(streamed.status, 200);
    const usages = sseUsages(streamed.text);
    t.equal(usages.length, 2, 'llama-server sent one usage per prompt');
    const sum = (f: (u: (typeof usages)[number]) => number): number => usages.reduce((a, u) => a + f(u), 0);
    const r = await until('the record', () => records[streamed.tries - 1], 15_000, 20);
    t.match(r, {
      outcome: 'ok',
      estimated: false,
      promptTokens: sum((u) => u.prompt_tokens),
      completionTokens: sum((u) => u.completion_tokens),
      cachedTokens: sum((u) => u.prompt_tokens_details?.cached_tokens ?? 0),
    });

    const plain = await postOk(gw, '/v1/completions', { model: 'gpt-oss-20b', prompt: prompts, max_tokens: 5 });
    t.equal(plain.status, 200);
    t.equal((JSON.parse(plain.text) as { choices: unknown[] }).choices.length, 2);
    let exact = 0;
    for (const p of prompts) exact += await countTokens(gw.llama, '/tokenize', { content: p, add_special: true });
    const r2 = await until('the second record', () => records[streamed.tries + plain.tries - 1], 15_000, 20);
    t.match(
      r2,
      { outcome: 'ok', estimated: true, promptTokens: exact, estimate: { prompt: 'counted', completion: 'retokenized' } },
      `every prompt: ${exact} tokens`,
    );
    const finishes = (JSON.parse(plain.text) as { choices: { finish_reason: string }[] }).choices.map((c) => c.finish_reason);
    if (finishes.every((f) => f === 'length')) t.equal(r2.completionTokens, 10, 'every choice stopped at max_tokens: 2 × 5');
    else t.ok(r2.completionTokens! >= 2 && r2.completionTokens! <= 14, `choices ${finishes.join(', ')}: ${r2.completionTokens} tokens`);
  });

  t.test('n: 2 on chat: both choices billed, streamed (one usage per task, summed) and not (red team F3)', async (t) => {
    // Both slots for one key: n: 2 runs two tasks at once (the default share, all but one slot, refuses it).
    const gw = await startRealGateway(t, { keySlots: 'all' }, { usageFlushMs: 50 });
    const records = watch(gw);
    const chat = { model: 'gpt-oss-20b', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 4, n: 2 };
    const prompt = await countTokens(gw.llama, '/v1/chat/completions/input_tokens', { messages: chat.messages });
    const asked = await postOk(gw, '/v1/chat/completions', { ...chat, stream: true, stream_options: { include_usage: true } });
    const usages = sseUsages(asked.text);
    t.equal(usages.length, 2, 'llama-server sent one usage per task');
    const r = await until('the streamed record', () => records[asked.tries - 1], 15_000, 20);
    t.match(r, {
      outcome: 'ok',
      estimated: false,
      promptTokens: 2 * prompt,
      completionTokens: usages.reduce((a, u) => a + u.completion_tokens, 0),
    });
    t.equal(r.completionTokens, 8, 'two choices of 4');
    // A client that did not ask for usage: the gateway asked, and hides both usage chunks.
    const hidden = await postOk(gw, '/v1/chat/completions', { ...chat, stream: true });
    t.notMatch(hidden.text, '"usage"');
    const r2 = await until('the hidden-usage record', () => records[asked.tries + hidden.tries - 1], 15_000, 20);
    t.match(r2, { outcome: 'ok', estimated: false, promptTokens: 2 * prompt, completionTokens: 8 });

    const plain = await postOk(gw, '/v1/chat/completions', chat);
    const body = JSON.parse(plain.text) as { choices: { finish_reason: string }[]; usage: { completion_tokens: number } };
    t.equal(body.choices.length, 2);
    t.equal(body.usage.completion_tokens, 4, "llama-server's usage is one task's");
    const r3 = await until('the non-streamed record', () => records[asked.tries + hidden.tries + plain.tries - 1], 15_000, 20);
    t.match(r3, { outcome: 'ok', estimated: true, promptTokens: 2 * prompt, estimate: { prompt: 'counted', completion: 'retokenized' } });
    if (body.choices.every((c) => c.finish_reason === 'length'))
      t.equal(r3.completionTokens, 8, 'both choices stopped at max_tokens: 2 × 4');
    else t.ok(r3.completionTokens! >= 2 && r3.completionTokens! <= 12, `${r3.completionTokens} tokens`);
  });

  t.test("llama-server's error inside a 200 stream is recorded as upstream_error", async (t) => {
    const gw = await startRealGateway(t, {}, { usageFlushMs: 50 });
    const records = watch(gw);
    // The tiny model's long chat outputs end in llama-server's own 500 event (README); a seed makes
    // it repeatable, and a few are tried in case one finishes cleanly.
    let text = '';
    let seed = 0;
    for (seed = 1; seed <= 8; seed++) {
      const res = await post(gw, '/v1/chat/completions', {
        model: 'gpt-oss-20b',
        messages: [{ role: 'user', content: 'Hello' }],
        max_tokens: 400,
        stream: true,
        seed,
      });
      t.equal(res.status, 200);
      text = res.text;
      if (/data: \{"error":/.test(text)) break;
    }
    t.match(text, /data: \{"error":\{"code":500/, `seed ${seed}: the stream ended in llama-server's error event`);
    const r = await until('its record', () => (records.length >= seed ? records[seed - 1] : undefined), 15_000, 20);
    const chatCount = await countTokens(gw.llama, '/v1/chat/completions/input_tokens', {
      model: 'gpt-oss-20b',
      messages: [{ role: 'user', content: 'Hello' }],
    });
    t.match(r, {
      status: 200,
      outcome: 'upstream_error',
      estimated: true,
      promptTokens: chatCount,
      estimate: { prompt: 'counted', completion: 'relayed' },
    });
    t.ok(r.completionTokens! > 0, `${r.completionTokens} relayed tokens`);
  });

  t.test("ordinary requests on every API: the record has llama-server's own numbers", async (t) => {
    const gw = await startRealGateway(t, {}, { usageFlushMs: 50 });
    const records = watch(gw);
    // temperature 0: the tiny model's random weights sometimes sample text its output parser answers
    // with a 500 (the shared llama-server README); greedy output is the same every run.
    const cases: [string, unknown, (u: Record<string, number>) => [number, number | null]][] = [
      [
        '/v1/chat/completions',
        { model: 'gpt-oss-20b', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 4, temperature: 0 },
        (u) => [u.prompt_tokens!, u.completion_tokens!],
      ],
      [
        '/v1/completions',
        { model: 'gpt-oss-20b', prompt: 'x', max_tokens: 4, temperature: 0 },
        (u) => [u.prompt_tokens!, u.completion_tokens!],
      ],
      ['/v1/embeddings', { model: 'gpt-oss-20b', input: ['hello world', 'abc def'] }, (u) => [u.prompt_tokens!, null]],
      [
        '/v1/messages',
        { model: 'gpt-oss-20b', max_tokens: 4, temperature: 0, messages: [{ role: 'user', content: 'Hi' }] },
        (u) => [u.input_tokens! + (u.cache_read_input_tokens ?? 0), u.output_tokens!],
      ],
      [
        '/v1/responses',
        { model: 'gpt-oss-20b', input: 'Hi', max_output_tokens: 4, temperature: 0 },
        (u) => [u.input_tokens!, u.output_tokens!],
      ],
    ];
    for (const [i, [path, body, numbers]] of cases.entries()) {
      const res = await post(gw, path, body);
      t.equal(res.status, 200, path);
      const usage = (JSON.parse(res.text) as { usage: Record<string, number> }).usage;
      const [prompt, completion] = numbers(usage);
      const r = await until(`${path} record`, () => records[i], 15_000, 20);
      t.match(
        r,
        { route: path, outcome: 'ok', estimated: false, promptTokens: prompt, completionTokens: completion },
        `${path}: ${JSON.stringify(usage)}`,
      );
    }
    // The same, streamed (chat: the gateway asks for usage and hides it from this client).
    const streamed = await post(gw, '/v1/chat/completions', {
      model: 'gpt-oss-20b',
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 4,
      temperature: 0,
      stream: true,
    });
    t.notMatch(streamed.text, '"usage"');
    const r = await until('streamed chat record', () => records[cases.length], 15_000, 20);
    t.match(r, {
      outcome: 'ok',
      estimated: false,
      promptTokens: await countTokens(gw.llama, '/v1/chat/completions/input_tokens', { messages: [{ role: 'user', content: 'Hello' }] }),
      completionTokens: 4,
    });
  });
}
