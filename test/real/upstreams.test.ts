// Several real llama-servers behind one gateway (issue 14), each started and stopped by the test
// (by PID) on its own port:
//   - routing by model: a chat server and an embeddings server with different aliases;
//   - balancing across two servers of one model (2 slots each): neither idles while the other has
//     work, and what does not fit waits in the gateway, not in llama-server's own queue;
//   - fairness across keys within the model; cancellation freeing the right server's slot;
//   - prompt-cache affinity: cached_tokens over multi-turn conversations, affinity on vs off;
//   - failover before the first byte (a server killed while idle), none after (killed mid-stream),
//     and the killed server back in use once it is started again on its port.
// Which server ran a request is read from each server's own log (`processing task`, `cancel task`),
// never by polling /slots or /metrics while a cancellation is awaited (../shared/llama-server/README.md).
import http from 'node:http';
import OpenAI from 'openai';
import t, { type Test } from 'tap';
import type { SlotServer, Ticket } from '../../src/admission/scheduler.js';
import type { JsonBody } from '../../src/proxy/json-body.js';
import { KEY_A, KEY_B, metricValue, sleep, until } from '../helpers.js';
import { busySlots, skipTier, startLlama, startRealGateway, type RealGateway, type RealLlama } from './llama.js';

interface Sent {
  readonly req: http.ClientRequest;
  /** response body bytes received so far */
  bytes(): number;
  /** the response has ended */
  ended(): boolean;
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
  let ended = false;
  const done = new Promise<{ status: number; text: string }>((resolve, reject) => {
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => {
        bytes += c.length;
        chunks.push(c);
      });
      res.on('end', () => {
        ended = true;
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  done.catch(() => {}); // some are destroyed on purpose
  req.end(JSON.stringify(body));
  return { req, bytes: () => bytes, ended: () => ended, done };
}

async function post(gw: RealGateway, key: string, path: string, body: unknown): Promise<{ status: number; json: unknown }> {
  const res = await fetch(`${gw.url}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  return { status: res.status, json: await res.json() };
}

const POOL = 'pool-model';
/**
 * One thread each (-t 1): two llama-servers with llama.cpp's default threads on a 2-core machine
 * fight over the cores (measured: 4 × 300 tokens took 4–11 s instead of 0.5 s).
 */
const THREADS = ['-t', '1'];
const ONE_MODEL = { alias: POOL, extraArgs: THREADS };
/** A long generation (prompt "x" runs thousands of tokens fine on the tiny model; README). */
function long(maxTokens: number, model = POOL): Record<string, unknown> {
  return { model, prompt: 'x', max_tokens: maxTokens, stream: true, temperature: 0 };
}

const TASK = /launch_slot_: id +\d+ \| task (\d+) \| processing task/g;

/** Tasks llama-server launched since log offset `from`. */
function launched(llama: RealLlama, from: number): number {
  return llama.log().slice(from).match(TASK)?.length ?? 0;
}

/** The id of the first task llama-server launched after log offset `from`. */
async function launchedTask(llama: RealLlama, from: number): Promise<number> {
  const pattern = /launch_slot_: id +\d+ \| task (\d+) \| processing task/;
  await llama.waitForLog(pattern, from);
  return Number(pattern.exec(llama.log().slice(from))![1]);
}

/** A stream that ran to its end: `data: [DONE]`, no error event. */
function completeStream(r: { status: number; text: string }): boolean {
  return r.status === 200 && r.text.includes('data: [DONE]') && !r.text.includes('data: {"error"');
}

/** llama-server's own /metrics, one value. */
async function llamaMetric(llama: RealLlama, name: string): Promise<number | undefined> {
  const res = await fetch(`${llama.url}/metrics`);
  return metricValue(await res.text(), name);
}

/** The gateway's own /metrics (from loopback: a local scraper). */
async function gatewayMetrics(gw: RealGateway): Promise<string> {
  const res = await fetch(`${gw.url}/metrics`);
  return res.text();
}

/** Sends SIGKILL to a llama-server (by its PID) and waits until its port refuses connections. */
async function kill(llama: RealLlama): Promise<void> {
  process.kill(llama.pid, 'SIGKILL');
  await until(
    'the killed llama-server refuses connections',
    () =>
      fetch(`${llama.url}/health`).then(
        () => false,
        () => true,
      ),
    5000,
    20,
  );
}

async function readyGateway(
  t: Test,
  servers: readonly RealLlama[],
  overrides: Parameters<typeof startRealGateway>[1] = {},
): Promise<RealGateway> {
  const gw = await startRealGateway(t, { upstreams: servers.map((s) => s.url), ...overrides }, { llama: servers[0]!, usageFlushMs: 50 });
  await until(
    'the gateway read every server’s models and slots',
    () => gw.app.upstreams.nodes.every((n) => n.state === 'ready' && n.slots === 2 && n.models.length === 1),
    10_000,
  );
  return gw;
}

/** Records the order in which keys are admitted (the order tickets are let run), by key id. */
function admissions(gw: RealGateway): string[] {
  const order: string[] = [];
  const queue = gw.app.queue;
  const enter = queue.enter.bind(queue);
  queue.enter = (
    key: string,
    group: string,
    candidates: readonly SlotServer[],
    weight?: number,
    opts?: Parameters<typeof enter>[4],
  ): Ticket => {
    const ticket = enter(key, group, candidates, weight, opts);
    if (ticket.immediate) order.push(key);
    else
      ticket.admitted.then(
        () => order.push(key),
        () => {},
      );
    return ticket;
  };
  return order;
}

/**
 * Which server each chat request was forwarded to, by the opening of its first message and its
 * number of messages (a conversation's turn): each server's client is watched.
 */
function placements(gw: RealGateway): Map<string, number> {
  const placed = new Map<string, number>();
  for (const node of gw.app.upstreams.nodes) {
    const client = node.client;
    const forward = client.forward.bind(client);
    client.forward = (request, ...rest) => {
      const messages = (request.body as JsonBody | undefined)?.json.messages as { content: string }[] | undefined;
      if (messages !== undefined) placed.set(`${messages[0]!.content.slice(0, 8)}|${messages.length}`, node.index);
      return forward(request, ...rest);
    };
  }
  return placed;
}

// ---- prompt-cache affinity: interleaved multi-turn conversations ----

/** ~400 characters of words, different for every (seed): conversations differ from their first token. */
function words(seed: number): string {
  const vocabulary = ['river', 'stone', 'lamp', 'orbit', 'maple', 'copper', 'violet', 'harbor', 'ember', 'quartz', 'meadow', 'signal'];
  let x = seed * 2654435761;
  const out: string[] = [];
  let length = 0;
  while (length < 400) {
    x = (x * 1103515245 + 12345) % 2147483648;
    const w = vocabulary[x % vocabulary.length]!;
    out.push(w);
    length += w.length + 1;
  }
  return out.join(' ');
}

interface CacheRun {
  /** prompt tokens of every turn after the first */
  prompt: number;
  /** of those, taken from a slot's prompt cache */
  cached: number;
  turns: number;
  /** turns sent to another server than the conversation's previous turn (from the servers' logs) */
  moved: number;
  /** requests tried again after the tiny model's own format error (a 500) */
  retries: number;
}

const CONVERSATIONS = 4;
const TURNS = 6;

/**
 * CONVERSATIONS conversations at once, TURNS turns each (every turn: the conversation so far, the
 * answer, a new ~400-character user message), each at its own pace (a pause of 0–150 ms before a
 * turn, 4–16 tokens of answer), so other conversations' requests run while a turn is placed and
 * the servers' loads differ from one placement to the next. Sums usage over every turn after the
 * first.
 */
async function conversations(gw: RealGateway, run: number): Promise<CacheRun> {
  const placed = placements(gw);
  const total: CacheRun = { prompt: 0, cached: 0, turns: 0, moved: 0, retries: 0 };
  let random = run * 7919;
  const next = (n: number): number => {
    random = (random * 1103515245 + 12345) % 2147483648;
    return random % n;
  };
  await Promise.all(
    Array.from({ length: CONVERSATIONS }, async (_, c) => {
      const key = c % 2 === 0 ? KEY_A : KEY_B;
      const messages: { role: string; content: string }[] = [{ role: 'user', content: `${run}-${c}: ${words(run * 100 + c * 10)}` }];
      let last: number | undefined;
      for (let turn = 0; turn < TURNS; turn++) {
        await sleep(next(150));
        let answer: { status: number; json: unknown };
        const body = { model: POOL, messages, max_tokens: 4 + next(13), temperature: 0 };
        for (let tries = 1; ; tries++) {
          answer = await post(gw, key, '/v1/chat/completions', body);
          if (answer.status === 200 || tries === 5) break;
          total.retries++;
        }
        if (answer.status !== 200) throw new Error(`turn ${turn} of conversation ${c}: ${answer.status} ${JSON.stringify(answer.json)}`);
        const json = answer.json as {
          id: string;
          choices: { message: { content: string } }[];
          usage: { prompt_tokens: number; prompt_tokens_details?: { cached_tokens?: number } };
        };
        const on = placed.get(`${messages[0]!.content.slice(0, 8)}|${messages.length}`);
        if (turn > 0) {
          total.prompt += json.usage.prompt_tokens;
          total.cached += json.usage.prompt_tokens_details?.cached_tokens ?? 0;
          total.turns++;
          if (on !== last) total.moved++;
        }
        last = on;
        messages.push(
          { role: 'assistant', content: json.choices[0]!.message.content },
          { role: 'user', content: words(run * 100 + c * 10 + turn + 1) },
        );
      }
    }),
  );
  return total;
}

if (!skipTier(t)) {
  t.test('routing by model: a chat server and an embeddings server', async (t) => {
    const [chat, embed] = await Promise.all([
      startLlama(t, { alias: 'chat-model', embeddings: false, extraArgs: THREADS }),
      startLlama(t, { alias: 'embed-model', extraArgs: THREADS }),
    ]);
    const gw = await startRealGateway(t, { upstreams: [chat.url, embed.url] }, { llama: chat });
    await until('the gateway read both servers’ models', () => gw.app.upstreams.modelIds().length === 2, 10_000);

    let from: [number, number] = [chat.log().length, embed.log().length];
    const answer = await post(gw, KEY_A, '/v1/chat/completions', {
      model: 'chat-model',
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 4,
      temperature: 0,
    });
    t.equal(answer.status, 200);
    t.match(answer.json, { object: 'chat.completion', model: 'chat-model', usage: { completion_tokens: 4 } });
    const vectors = await post(gw, KEY_A, '/v1/embeddings', { model: 'embed-model', input: 'Hello there' });
    t.equal(vectors.status, 200, 'embeddings answered (the chat server has none: it answers 501)');
    t.match(vectors.json, { object: 'list', data: [{ object: 'embedding', index: 0 }] });
    await Promise.all([chat.mark(), embed.mark()]); // every line of the tasks above is in
    t.same(
      [launched(chat, from[0]), launched(embed, from[1])],
      [1, 1],
      'one task on each server (their own logs): the chat on chat-model’s, the embedding on embed-model’s',
    );

    const models = await fetch(`${gw.url}/v1/models`, { headers: { authorization: `Bearer ${KEY_A}` } });
    t.equal(models.status, 200);
    t.same(
      ((await models.json()) as { data: { id: string }[] }).data.map((m) => m.id),
      ['chat-model', 'embed-model'],
      'GET /v1/models lists both servers’ models',
    );

    from = [await chat.mark(), await embed.mark()];
    const unknown = await post(gw, KEY_A, '/v1/chat/completions', { model: 'nope', messages: [{ role: 'user', content: 'Hi' }] });
    t.equal(unknown.status, 404);
    t.same(unknown.json, {
      error: {
        message: "The model 'nope' does not exist or is not served now. Available to this key: chat-model, embed-model.",
        type: 'invalid_request_error',
        param: 'model',
        code: 'model_not_found',
      },
    });
    const none = await post(gw, KEY_A, '/v1/chat/completions', { messages: [{ role: 'user', content: 'Hi' }] });
    t.equal(none.status, 400);
    t.same(none.json, {
      error: {
        message: 'This gateway serves several models; say which one in "model". Available to this key: chat-model, embed-model.',
        type: 'invalid_request_error',
        param: 'model',
        code: 'model_required',
      },
    });
    await Promise.all([chat.mark(), embed.mark()]); // every line of the tasks above is in
    t.same([launched(chat, from[0]), launched(embed, from[1])], [0, 0], 'neither reached a server');

    const openai = new OpenAI({ apiKey: KEY_B, baseURL: `${gw.url}/v1`, maxRetries: 0 });
    from = [await chat.mark(), await embed.mark()];
    const completion = await openai.chat.completions.create({
      model: 'chat-model',
      messages: [{ role: 'user', content: 'Hi' }],
      max_tokens: 4,
      temperature: 0,
    });
    t.equal(completion.usage?.completion_tokens, 4, 'the openai SDK: chat on chat-model');
    const embedding = await openai.embeddings.create({ model: 'embed-model', input: ['a', 'b'], encoding_format: 'float' });
    t.same(
      embedding.data.map((d) => [d.index, d.embedding.length]),
      [
        [0, 64],
        [1, 64],
      ],
      'the openai SDK: embeddings on embed-model',
    );
    const sdkModels = await openai.models.list();
    t.same(
      sdkModels.data.map((m) => m.id),
      ['chat-model', 'embed-model'],
    );
    await Promise.all([chat.mark(), embed.mark()]); // every line of the tasks above is in
    t.equal(launched(chat, from[0]), 1, 'the SDK’s chat ran on chat-model’s server');
    t.ok(launched(embed, from[1]) >= 1, 'the SDK’s embeddings ran on embed-model’s server');
  });

  t.test('two servers of one model, 2 slots each', async (t) => {
    const servers = await Promise.all([startLlama(t, ONE_MODEL), startLlama(t, ONE_MODEL)]);
    const [p0, p1] = servers;

    t.test('balancing: 4 generations run 2 + 2; of 6, 4 run and 2 wait in the gateway', async (t) => {
      const gw = await readyGateway(t, servers);
      const queue = gw.app.queue;
      const [n0, n1] = gw.app.upstreams.nodes;
      let from: [number, number] = [p0.log().length, p1.log().length];
      const four = [0, 1, 2, 3].map((i) => send(gw.port, i % 2 === 0 ? KEY_A : KEY_B, '/v1/completions', long(300)));
      t.teardown(() => four.forEach((s) => s.req.destroy()));
      await until('the four are admitted', () => queue.running === 4, 10_000);
      t.same([queue.runningOn(n0!), queue.runningOn(n1!), queue.waiting], [2, 2, 0], 'the gateway runs 2 on each server');
      await until('each server runs two of them', () => launched(p0, from[0]) === 2 && launched(p1, from[1]) === 2, 10_000);
      t.pass('each server launched 2 tasks (its own log)');
      const fourDone = await Promise.all(four.map((s) => s.done));
      t.ok(fourDone.every(completeStream), 'all four ran to their end');

      from = [await p0.mark(), await p1.mark()];
      const six = Array.from({ length: 6 }, (_, i) => send(gw.port, i % 2 === 0 ? KEY_A : KEY_B, '/v1/completions', long(1000)));
      t.teardown(() => six.forEach((s) => s.req.destroy()));
      await until('4 run and 2 wait', () => queue.running === 4 && queue.waiting === 2, 10_000);
      t.same([queue.runningOn(n0!), queue.runningOn(n1!)], [2, 2], 'every slot of both servers is taken');
      const metrics = await gatewayMetrics(gw);
      t.same(
        [
          metricValue(metrics, 'llm_gateway_upstream_in_flight', { upstream: 'upstream-1' }),
          metricValue(metrics, 'llm_gateway_upstream_in_flight', { upstream: 'upstream-2' }),
          metricValue(metrics, 'llm_gateway_upstream_slots', { upstream: 'upstream-1' }),
          metricValue(metrics, 'llm_gateway_upstream_slots', { upstream: 'upstream-2' }),
          metricValue(metrics, 'llm_gateway_model_requests_waiting', { model: POOL }),
        ],
        [2, 2, 2, 2, 2],
        'the gateway’s /metrics: 2 in flight on each server of 2 slots, 2 waiting for the model',
      );
      await until('each server runs two of them', () => launched(p0, from[0]) === 2 && launched(p1, from[1]) === 2, 10_000);
      // One read of each server's gauges while its two slots generate (streams only: no
      // cancellation to hide): nothing waits in llama-server's own queue.
      const deferred = await Promise.all(servers.map((s) => llamaMetric(s, 'llamacpp:requests_deferred')));
      t.same(deferred, [0, 0], 'llama-server’s own queue is empty on both (requests_deferred 0)');
      const sixDone = await Promise.all(six.map((s) => s.done));
      t.ok(sixDone.every(completeStream), 'all six ran to their end');
      await Promise.all([p0.mark(), p1.mark()]); // every line of the tasks above is in
      const tasks = [launched(p0, from[0]), launched(p1, from[1])];
      t.equal(tasks[0]! + tasks[1]!, 6, `6 tasks: ${tasks.join(' + ')}`);
      t.ok(tasks.every((n) => n >= 2));
      const after = await Promise.all(
        servers.map(async (s) => [
          await llamaMetric(s, 'llamacpp:requests_deferred'),
          await llamaMetric(s, 'llamacpp:requests_processing'),
        ]),
      );
      t.same(after, [
        [0, 0],
        [0, 0],
      ]);
      t.same([queue.running, queue.waiting], [0, 0]);
    });

    t.test('fairness across keys within the model: B’s one request starts before A’s 5th', async (t) => {
      // GATEWAY_KEY_SLOTS=all: A may take all 4 slots; its 5th and 6th wait, then B's arrives.
      const gw = await readyGateway(t, servers, { keySlots: 'all' });
      const order = admissions(gw);
      const queue = gw.app.queue;
      const a = Array.from({ length: 6 }, () => send(gw.port, KEY_A, '/v1/completions', long(1000)));
      t.teardown(() => a.forEach((s) => s.req.destroy()));
      await until('A’s 4 run and 2 wait', () => queue.running === 4 && queue.waiting === 2, 10_000);
      const b = send(gw.port, KEY_B, '/v1/completions', long(50));
      t.teardown(() => b.req.destroy());
      await until('B waits too', () => queue.waiting === 3, 10_000);
      const done = await Promise.all([...a, b].map((s) => s.done));
      t.ok(done.every(completeStream), 'all seven ran to their end');
      const idA = order[0]!;
      t.same(
        order.map((id) => (id === idA ? 'A' : 'B')),
        ['A', 'A', 'A', 'A', 'B', 'A', 'A'],
        'the first slot freed went to B, ahead of A’s 5th and 6th',
      );
    });

    t.test('a client that leaves frees its slot on the server that has it, and only there', async (t) => {
      const gw = await readyGateway(t, servers);
      const queue = gw.app.queue;
      const [n0, n1] = gw.app.upstreams.nodes;
      const from: [number, number] = [p0.log().length, p1.log().length];
      const stays = send(gw.port, KEY_A, '/v1/completions', long(3000));
      t.teardown(() => stays.req.destroy());
      const onA = await launchedTask(p0, from[0]);
      const leaves = send(gw.port, KEY_B, '/v1/completions', long(2000));
      t.teardown(() => leaves.req.destroy());
      const onB = await launchedTask(p1, from[1]);
      t.same([queue.runningOn(n0!), queue.runningOn(n1!)], [1, 1], 'one on each server');
      await until('both stream', () => stays.bytes() > 1000 && leaves.bytes() > 1000, 10_000);
      leaves.req.destroy();
      await p1.waitForLog(`cancel task, id_task = ${onB}`, from[1], 10_000);
      t.pass(`the second server cancelled task ${onB}`);
      await p1.waitForLog(new RegExp(`task ${onB} \\| stop processing`), from[1], 2000);
      await until('the gateway gives the second server’s slot back', () => queue.runningOn(n1!) === 0, 2000);
      t.equal(queue.runningOn(n0!), 1, 'the first server’s request still runs');
      t.equal(stays.ended(), false, 'its stream goes on');
      t.notOk(p0.log().slice(from[0]).includes('cancel task'), `the first server cancelled nothing (task ${onA} runs)`);
      t.equal(await busySlots(p1), 0, 'no slot of the second server is busy (read after its log said cancelled)');
      t.ok(completeStream(await stays.done), 'the first server’s stream ran to its end');
      t.equal(queue.running, 0);
    });

    t.test('prompt-cache affinity raises cached_tokens on interleaved multi-turn conversations', async (t) => {
      const result: Record<'off' | 'on', CacheRun> = {} as Record<'off' | 'on', CacheRun>;
      for (const [run, affinity] of [
        [1, false],
        [2, true],
      ] as const) {
        const gw = await readyGateway(t, servers, { affinity });
        const r = await conversations(gw, run);
        result[affinity ? 'on' : 'off'] = r;
        t.comment(
          `affinity ${affinity ? 'on ' : 'off'}: ${CONVERSATIONS} conversations × ${TURNS - 1} later turns: ` +
            `cached_tokens ${r.cached} of prompt_tokens ${r.prompt} (${((100 * r.cached) / r.prompt).toFixed(1)}%), ` +
            `${r.moved} turns on another server than the turn before` +
            (r.retries > 0 ? `, ${r.retries} tried again after a 500` : ''),
        );
        t.equal(r.turns, CONVERSATIONS * (TURNS - 1));
      }
      t.ok(result.on.cached > result.off.cached, `cached_tokens with affinity ${result.on.cached} > without ${result.off.cached}`);
    });

    t.test('failover before the first byte, none after; a killed server is used again once restarted', async (t) => {
      const gw = await readyGateway(t, servers);
      const queue = gw.app.queue;
      const [n0, n1] = gw.app.upstreams.nodes;
      const short = { model: POOL, prompt: 'x', max_tokens: 8, temperature: 0 };
      const failovers = (): number => gw.logs.filter((l) => l.msg === 'upstream unreachable; request sent to another server').length;

      await kill(p1);
      t.equal(n1!.state, 'ready', 'the gateway has not noticed yet (idle, between probes)');
      let from = p0.log().length;
      // Long enough that all four are placed before the first ends: the second goes to the killed
      // server (the first server then has one running, the killed one none).
      const first = await Promise.all(
        [0, 1, 2, 3].map((i) => send(gw.port, i % 2 === 0 ? KEY_A : KEY_B, '/v1/completions', { ...short, max_tokens: 100 }).done),
      );
      t.same(
        first.map((r) => r.status),
        [200, 200, 200, 200],
        'all four succeed',
      );
      await p0.mark(); // every line of the tasks above is in
      t.equal(launched(p0, from), 4, 'all four ran on the first server');
      t.equal(n1!.state, 'down', 'the gateway marked the killed server down');
      t.ok(failovers() >= 1, `${failovers()} sent to the other server after connection refused`);
      t.equal(n1!.failures, failovers(), 'its failures are counted');
      const metrics = await gatewayMetrics(gw);
      t.same(
        [
          metricValue(metrics, 'llm_gateway_upstream_state', { upstream: 'upstream-2', state: 'down' }),
          metricValue(metrics, 'llm_gateway_upstream_state', { upstream: 'upstream-2', state: 'ready' }),
          metricValue(metrics, 'llm_gateway_upstream_failures_total', { upstream: 'upstream-2' }),
          metricValue(metrics, 'llm_gateway_upstream_failures_total', { upstream: 'upstream-1' }),
        ],
        [1, 0, failovers(), 0],
        'the gateway’s /metrics: the killed server is down, with its failures',
      );
      const health = await fetch(`${gw.url}/health`);
      t.equal(health.status, 200);
      t.same(await health.json(), {
        status: 'degraded',
        upstreams: [
          { name: 'upstream-1', state: 'ready', slots: 2 },
          { name: 'upstream-2', state: 'down', slots: 2 },
        ],
      });

      const seen = failovers();
      from = await p0.mark();
      const next = await Promise.all([0, 1, 2, 3].map((i) => send(gw.port, i % 2 === 0 ? KEY_A : KEY_B, '/v1/completions', short).done));
      t.same(
        next.map((r) => r.status),
        [200, 200, 200, 200],
        'the next four succeed too',
      );
      t.equal(failovers(), seen, 'none of them tried the down server');
      await p0.mark(); // every line of the tasks above is in
      t.equal(launched(p0, from), 4);

      const restartedAt = Date.now();
      const again = await startLlama(t, { ...ONE_MODEL, port: p1.port });
      await until('the restarted server is ready again', () => n1!.state === 'ready', 35_000, 20);
      t.comment(`the restarted server was ready in the gateway ${Date.now() - restartedAt} ms after its start (probe backoff)`);

      const before: [number, number] = [p0.log().length, again.log().length];
      const streams = [KEY_A, KEY_B].map((key) => send(gw.port, key, '/v1/completions', long(2000)));
      t.teardown(() => streams.forEach((s) => s.req.destroy()));
      await until('one stream on each server', () => launched(p0, before[0]) === 1 && launched(again, before[1]) === 1, 10_000);
      t.same([queue.runningOn(n0!), queue.runningOn(n1!)], [1, 1], 'the restarted server is used again');
      await until('both stream', () => streams.every((s) => s.bytes() > 1000), 10_000);
      process.kill(again.pid, 'SIGKILL');
      const ends = await Promise.all(streams.map((s) => s.done));
      const broken = ends.filter((r) => !completeStream(r));
      t.equal(broken.length, 1, 'one stream broke, the other ran to its end');
      t.equal(broken[0]?.status, 200);
      const tail = broken[0]?.text.trimEnd().split('\n\n').at(-1);
      t.match(
        JSON.parse(tail?.replace(/^data: /, '') ?? 'null'),
        { error: { type: 'upstream_error' } },
        'the broken one ends with an error event',
      );
      t.equal(launched(p0, before[0]), 1, 'nothing was sent again after the first byte');
      await until('no slot is taken in the gateway', () => queue.running === 0, 5000);
    });
  });
}
