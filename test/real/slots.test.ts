// A key's share of the slots and cancellation, against a real llama-server with 2 slots (-np 2).
//   - One key's long generations cannot take both slots (GATEWAY_KEY_SLOTS=auto: all but one): a
//     second key is served while they run, instead of waiting until one of them ends.
//   - A client that leaves frees its slot in every phase: while it waits in the gateway's queue
//     (llama-server never sees it), while llama-server processes the prompt, mid-stream, and
//     during a stream:false generation.
// Cancellations are read from llama-server's log (`cancel task`) before /slots is read: polling
// /slots wakes waiting non-streamed requests and hides their cancellation (see
// ../shared/llama-server/README.md).
import http from 'node:http';
import { performance } from 'node:perf_hooks';
import t, { type Test } from 'tap';
import { KEY_A, KEY_B, sleep, until } from '../helpers.js';
import { busySlots, countTokens, skipTier, startLlama, startRealGateway, type RealGateway, type RealLlama } from './llama.js';

interface Sent {
  readonly req: http.ClientRequest;
  /** response body bytes received so far */
  bytes(): number;
  /** when the response ended (performance.now()), or undefined */
  endedAt(): number | undefined;
  /** the whole response (rejects if the request was destroyed) */
  readonly done: Promise<{ status: number; text: string }>;
}

function send(port: number, key: string, path: string, body: unknown): Sent {
  const req = http.request({
    host: '127.0.0.1',
    port,
    method: 'POST',
    path,
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    agent: false,
  });
  let bytes = 0;
  let endedAt: number | undefined;
  const done = new Promise<{ status: number; text: string }>((resolve, reject) => {
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => {
        bytes += c.length;
        chunks.push(c);
      });
      res.on('end', () => {
        endedAt = performance.now();
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  done.catch(() => {}); // tests destroy some requests on purpose
  req.end(JSON.stringify(body));
  return { req, bytes: () => bytes, endedAt: () => endedAt, done };
}

/**
 * A long generation: 2,000 tokens from prompt "x" (~2 s here). With temperature 0: sampled, the
 * tiny model's output often ends in llama-server's "does not match the expected Content-only
 * format" error event after a few hundred tokens (seen on b10587).
 */
const LONG = { model: 'gpt-oss-20b', prompt: 'x', max_tokens: 2000, stream: true, temperature: 0 };

/** The id of the next task llama-server launches after log offset `from`. */
async function launchedTask(llama: RealLlama, from: number): Promise<number> {
  const pattern = /launch_slot_: id +\d+ \| task (\d+) \| processing task/;
  await llama.waitForLog(pattern, from);
  return Number(pattern.exec(llama.log().slice(from))![1]);
}

/** llama-server cancelled `task`, and no slot is busy any more; the gateway holds no slot either. */
async function slotFreed(t: Test, gw: RealGateway, task: number, what: string): Promise<void> {
  await gw.llama.waitForLog(`cancel task, id_task = ${task}`, 0, 10_000);
  t.pass(`${what}: llama-server cancelled task ${task}`);
  await gw.llama.waitForLog(new RegExp(`task ${task} \\| stop processing`), 0, 2000); // the slot's release follows the cancel
  await until('the gateway gives the slot back', () => gw.app.queue.running === 0, 2000);
  t.equal(await busySlots(gw.llama), 0, `${what}: both llama-server slots are free`);
}

if (!skipTier(t)) {
  t.test('a key’s long generations hold one of two slots; another key is served while they run', async (t) => {
    const gw = await startRealGateway(t, {}, { llamaOptions: { slots: 2 } });
    await until('the gateway read llama-server’s slot count', () => gw.app.upstreams.nodes[0]!.slots === 2, 10_000);
    t.equal(gw.app.queue.keySlotsOf(gw.app.upstreams.nodes), 1, '2 slots: a key holds at most 1');

    const a = [1, 2, 3].map(() => send(gw.port, KEY_A, '/v1/completions', LONG));
    t.teardown(() => a.forEach((s) => s.req.destroy()));
    await until('A’s three are in the gateway', () => gw.app.queue.running + gw.app.queue.waiting === 3, 10_000);
    await until('A’s first stream is generating', () => a.some((s) => s.bytes() > 1000), 10_000);
    t.equal(gw.app.queue.running, 1, 'one of A’s runs');
    t.equal(gw.app.queue.waiting, 2, 'two wait in the gateway, though a slot is free');

    const b = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY_B}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-oss-20b', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8, temperature: 0 }),
    });
    t.equal(b.status, 200);
    const answer = (await b.json()) as { usage: { completion_tokens: number } };
    t.equal(answer.usage.completion_tokens, 8, 'B got its answer');
    t.ok(
      a.every((s) => s.endedAt() === undefined),
      'while none of A’s generations had ended',
    );
    t.equal(await busySlots(gw.llama), 1, 'A holds one llama-server slot, the other is free again');

    // A's next one runs when its first ends; no need to wait for 3 × 2,000 tokens here.
    for (const s of a) s.req.destroy();
    await until('the gateway holds no slot', () => gw.app.queue.running === 0 && gw.app.queue.waiting === 0, 10_000);
  });

  t.test('light calls are answered while both slots generate: count_tokens and the input_tokens routes', async (t) => {
    const gw = await startRealGateway(t, {}, { llamaOptions: { slots: 2 } });
    await until('the gateway read llama-server’s slot count', () => gw.app.upstreams.nodes[0]!.slots === 2, 10_000);
    const gens = [KEY_A, KEY_B].map((key) => send(gw.port, key, '/v1/completions', LONG));
    t.teardown(() => gens.forEach((s) => s.req.destroy()));
    await until('both slots generate', () => gens.every((s) => s.bytes() > 1000), 30_000);
    const chat = { model: 'gpt-oss-20b', messages: [{ role: 'user', content: 'Hello there' }] };
    const calls: [string, unknown][] = [
      ['/v1/messages/count_tokens', chat],
      ['/v1/chat/completions/input_tokens', chat],
      ['/v1/responses/input_tokens', { model: 'gpt-oss-20b', input: 'Hello there' }],
    ];
    const started = performance.now();
    const answers = await Promise.all(
      Array.from({ length: 30 }, (_, i) => send(gw.port, i % 2 === 0 ? KEY_A : KEY_B, calls[i % 3]![0], calls[i % 3]![1]).done),
    );
    const ms = performance.now() - started;
    const direct = await Promise.all(calls.map(([path, body]) => countTokens(gw.llama, path, body)));
    t.same(
      answers.map((r) => [r.status, (JSON.parse(r.text) as { input_tokens?: unknown }).input_tokens]),
      answers.map((_, i) => [200, direct[i % 3]]),
      `all 30 answered with llama-server’s counts (${direct.join(', ')})`,
    );
    t.comment(`30 light calls in ${Math.round(ms)} ms while both slots generate`);
    t.ok(
      gens.every((s) => s.endedAt() === undefined),
      'the generations were still running',
    );
  });

  t.test(
    'a request running several tasks counts them: a prompt array or n beyond the share is refused, one within takes that many slots',
    async (t) => {
      const llama = await startLlama(t, { slots: 2 });
      const gw = await startRealGateway(t, {}, { llama });
      await until('the gateway read llama-server’s slot count', () => gw.app.upstreams.nodes[0]!.slots === 2, 10_000);
      // 2 slots, a key's share 1: one request with 2 tasks would take both (seen: B waited 19.5 s).
      const array = await send(gw.port, KEY_A, '/v1/completions', { ...LONG, prompt: ['x', 'x'] }).done;
      t.equal(array.status, 400);
      t.match(JSON.parse(array.text), { error: { code: 'too_many_tasks', param: 'prompt', type: 'invalid_request_error' } });
      const chat = { model: 'gpt-oss-20b', messages: [{ role: 'user', content: 'Hello' }], max_tokens: 8, temperature: 0 };
      const n = await send(gw.port, KEY_A, '/v1/chat/completions', { ...chat, n: 2 }).done;
      t.equal(n.status, 400);
      t.match(JSON.parse(n.text), { error: { code: 'too_many_tasks', param: 'n' } });
      t.notOk(llama.log().includes('processing task'), 'neither reached llama-server');
      const tokens = await send(gw.port, KEY_A, '/v1/completions', { model: 'gpt-oss-20b', prompt: [1, 2, 3], max_tokens: 2 }).done;
      t.equal(tokens.status, 200, 'a prompt of token ids is one task');

      const all = await startRealGateway(t, { keySlots: 'all' }, { llama });
      await until('the gateway read llama-server’s slot count', () => all.app.upstreams.nodes[0]!.slots === 2, 10_000);
      const from = llama.log().length;
      const a = send(all.port, KEY_A, '/v1/completions', { ...LONG, prompt: ['x', 'x'] });
      t.teardown(() => a.req.destroy());
      await until('A’s two prompts are generating', () => a.bytes() > 1000, 10_000);
      t.equal(all.app.queue.running, 2, 'A’s one request counts 2 slots');
      t.equal(
        llama
          .log()
          .slice(from)
          .match(/processing task/g)?.length,
        2,
        'llama-server runs it as 2 tasks',
      );
      const b = send(all.port, KEY_B, '/v1/chat/completions', chat);
      await until('B waits in the gateway, not in llama-server’s queue', () => all.app.queue.waiting === 1, 2000);
      a.req.destroy();
      t.equal((await b.done).status, 200, 'B is served once A’s slots are free');
    },
  );

  t.test('a key that abandons non-streamed requests one after another does not make other keys wait', async (t) => {
    const gw = await startRealGateway(t, {}, { llamaOptions: { slots: 2 } });
    await until('the gateway read llama-server’s slot count', () => gw.app.upstreams.nodes[0]!.slots === 2, 10_000);
    const from = gw.llama.log().length;
    const first = send(gw.port, KEY_A, '/v1/completions', { ...LONG, stream: false });
    await launchedTask(gw.llama, from);
    await sleep(50);
    first.req.destroy(); // llama-server notices only at its next ~1 s poll
    await until('the gateway saw A leave', () => gw.app.queue.holding === 1, 1000);
    const second = send(gw.port, KEY_A, '/v1/completions', { ...LONG, stream: false });
    t.teardown(() => second.req.destroy());
    await until('A’s next request reached the gateway', () => gw.app.queue.waiting === 1, 2000);
    t.equal(gw.app.queue.running, 1, 'it waits: A’s abandoned one still counts (llama-server still runs it)');
    const started = performance.now();
    const b = await send(gw.port, KEY_B, '/v1/chat/completions', {
      model: 'gpt-oss-20b',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 2,
      temperature: 0,
    }).done;
    const ms = performance.now() - started;
    t.equal(b.status, 200);
    // Not a timed assertion (the machine is shared): what made B wait before was A's next request
    // sent to llama-server's free slot while A's abandoned one still ran there. It is still here.
    t.equal(gw.app.queue.waiting, 1, 'A’s next request still waits in the gateway: B did not queue behind it in llama-server');
    t.comment(`B answered in ${Math.round(ms)} ms (was ~930 ms when it queued behind A's abandoned task in llama-server)`);
    second.req.destroy();
  });

  t.test('cancellation in every phase frees the slot', async (t) => {
    const llama = await startLlama(t, { slots: 2 });
    const gw = await startRealGateway(t, {}, { llama });
    await until('the gateway read llama-server’s slot count', () => gw.app.upstreams.nodes[0]!.slots === 2, 10_000);

    t.test('while queued in the gateway, and mid-stream', async (t) => {
      const from = llama.log().length;
      const running = send(gw.port, KEY_A, '/v1/completions', LONG);
      const task = await launchedTask(llama, from);
      const queued = send(gw.port, KEY_A, '/v1/completions', LONG);
      t.teardown(() => [running, queued].forEach((s) => s.req.destroy()));
      await until('the second waits in the gateway (A holds its share)', () => gw.app.queue.waiting === 1, 10_000);
      queued.req.destroy();
      await until('it left the queue', () => gw.app.queue.waiting === 0, 1000);
      t.ok(gw.logs.some((l) => l.msg === 'client left while waiting for a slot; never sent upstream'));

      await until('the first is streaming', () => running.bytes() > 1000, 10_000);
      t.equal(running.endedAt(), undefined, 'mid-stream');
      running.req.destroy();
      await slotFreed(t, gw, task, 'mid-stream');
      t.equal(
        llama
          .log()
          .slice(from)
          .match(/processing task/g)?.length,
        1,
        'llama-server never saw the request that left the queue',
      );
    });

    t.test('while llama-server processes the prompt', async (t) => {
      // ~2,900 prompt tokens (~0.3 s to process here); a fresh first token so the slot's cache
      // cannot skip the work.
      const prompt = `${Date.now()} ${'x '.repeat(2900)}`;
      const from = llama.log().length;
      const leaving = send(gw.port, KEY_A, '/v1/completions', { ...LONG, prompt });
      const task = await launchedTask(llama, from);
      const body = leaving.bytes();
      leaving.req.destroy();
      t.equal(body, 0, 'no token had reached the client yet');
      t.notOk(llama.log().slice(from).includes('print_timing'), 'llama-server had not finished the task');
      await slotFreed(t, gw, task, 'prompt processing');
    });

    t.test('during a stream:false generation', async (t) => {
      const from = llama.log().length;
      const leaving = send(gw.port, KEY_A, '/v1/completions', { ...LONG, stream: false });
      const task = await launchedTask(llama, from);
      await sleep(300); // generating (2,000 tokens take seconds)
      t.equal(leaving.endedAt(), undefined);
      leaving.req.destroy();
      await slotFreed(t, gw, task, 'stream:false');
    });

    t.test('afterwards both slots serve', async (t) => {
      const results = await Promise.all(
        [KEY_A, KEY_B].map((key) => send(gw.port, key, '/v1/completions', { model: 'gpt-oss-20b', prompt: 'x', max_tokens: 8 }).done),
      );
      t.same(
        results.map((r) => r.status),
        [200, 200],
      );
    });
  });
}
