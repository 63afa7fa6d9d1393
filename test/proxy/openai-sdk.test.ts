// The official OpenAI SDK (v6) as a real client through the gateway: every call a client app makes
// returns what llama-server recorded, upstream errors surface as the SDK's typed errors, and the
// SDK's own headers reach upstream while the client's key does not.
import net from 'node:net';
import OpenAI from 'openai';
import t from 'tap';
import { recordings } from '../fixtures/fake-llama.js';
import { KEY_A, recordedBody, startGateway, type Gateway } from '../helpers.js';

type Json = Record<string, unknown>;

/** A recording's body parsed as JSON. */
function recordedJson(name: string): Json {
  return JSON.parse(recordedBody(recordings[name]!.chunks)) as Json;
}

/** A recorded SSE body's `data:` events, parsed, without the final [DONE]. */
function recordedEvents(name: string): Json[] {
  return recordedBody(recordings[name]!.chunks)
    .split('\n')
    .filter((line) => line.startsWith('data: ') && line !== 'data: [DONE]')
    .map((line) => JSON.parse(line.slice('data: '.length)) as Json);
}

interface Sent {
  url: string;
  headers: Headers;
}

/** An SDK client aimed at the gateway whose fetch notes what the SDK sent. */
function client(gw: Gateway, apiKey = KEY_A): { openai: OpenAI; sent: Sent[] } {
  const sent: Sent[] = [];
  const recordingFetch = (input: string | URL | Request, init?: RequestInit): Promise<Response> => {
    sent.push({ url: input instanceof Request ? input.url : String(input), headers: new Headers(init?.headers) });
    return fetch(input, init);
  };
  return { openai: new OpenAI({ apiKey, baseURL: `${gw.url}/v1`, maxRetries: 0, fetch: recordingFetch }), sent };
}

const MESSAGES = [{ role: 'user' as const, content: 'Hello' }];

t.test('chat.completions.create, not streamed: the recorded completion, whole', async (t) => {
  const gw = await startGateway(t);
  const { openai } = client(gw);
  const completion = await openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES, max_tokens: 8 });
  const recorded = recordedJson('chat-nonstream');
  t.strictSame(completion, recorded, 'the whole object as llama-server sent it');
  t.equal(completion.choices[0]?.message.content, 'mittelсу polity polity polity polity polity polity');
  t.same(completion.usage, { completion_tokens: 8, prompt_tokens: 31, total_tokens: 39, prompt_tokens_details: { cached_tokens: 10 } });
  t.equal(gw.fake.requests.length, 1);
  t.equal(gw.fake.requests[0]?.url, '/v1/chat/completions');
  t.same(
    JSON.parse(gw.fake.requests[0]!.body.toString('utf8')),
    { model: 'gpt-oss-20b', messages: MESSAGES, max_tokens: 8 },
    'the SDK body reaches upstream',
  );
});

t.test('chat.completions.create, streamed: every recorded chunk, in order', async (t) => {
  const gw = await startGateway(t);
  const { openai } = client(gw);
  const stream = await openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES, max_tokens: 8, stream: true });
  const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  // The gateway asked llama-server for usage (accounting) and hid the usage-only chunk.
  const recorded = recordedEvents('chat-stream-include-usage').filter((e) => e.usage === undefined);
  t.equal(chunks.length, recorded.length, `${recorded.length} chunks, as many as the recorded data: events without [DONE] and usage`);
  t.strictSame(chunks, recorded, 'each chunk is the recorded event');
  t.equal(
    chunks.map((c) => c.choices[0]?.delta.content ?? '').join(''),
    'mittelсу polity polity polity polity',
    'deltas join to the recorded content',
  );
  t.equal(chunks.at(-1)?.choices[0]?.finish_reason, 'length');
  t.equal(chunks.at(-1)?.usage, undefined, 'no usage chunk unless asked');
});

t.test('chat.completions.create, streamed with include_usage: the last chunk carries the recorded usage', async (t) => {
  const gw = await startGateway(t);
  const { openai } = client(gw);
  const stream = await openai.chat.completions.create({
    model: 'gpt-oss-20b',
    messages: MESSAGES,
    max_tokens: 8,
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  const recorded = recordedEvents('chat-stream-include-usage');
  t.equal(chunks.length, recorded.length);
  t.strictSame(chunks, recorded);
  const last = chunks.at(-1);
  t.same(last?.choices, [], 'the usage chunk has no choices');
  t.same(last?.usage, { completion_tokens: 6, prompt_tokens: 31, total_tokens: 37, prompt_tokens_details: { cached_tokens: 30 } });
  t.equal(chunks.map((c) => c.choices[0]?.delta.content ?? '').join(''), 'mittelсу polity polity polity polity');
});

t.test('completions.create, not streamed and streamed', async (t) => {
  const gw = await startGateway(t);
  const { openai } = client(gw);
  const completion = await openai.completions.create({ model: 'gpt-oss-20b', prompt: 'Hi', max_tokens: 5 });
  t.strictSame(completion, recordedJson('completions-nonstream'));
  t.equal(completion.choices[0]?.text, " tienenŐ multimedia '',looking");
  t.same(completion.usage, { completion_tokens: 5, prompt_tokens: 2, total_tokens: 7, prompt_tokens_details: { cached_tokens: 1 } });

  const stream = await openai.completions.create({ model: 'gpt-oss-20b', prompt: 'Hi', max_tokens: 4, stream: true });
  const chunks: OpenAI.Completions.Completion[] = [];
  for await (const chunk of stream) chunks.push(chunk);
  const recorded = recordedEvents('completions-stream');
  t.equal(chunks.length, recorded.length);
  t.strictSame(chunks, recorded);
  t.equal(chunks.map((c) => c.choices[0]?.text ?? '').join(''), " tienenŐ multimedia '',");
  t.same(
    chunks.at(-1)?.usage,
    { completion_tokens: 4, prompt_tokens: 2, total_tokens: 6, prompt_tokens_details: { cached_tokens: 1 } },
    'usage rides on the last chunk',
  );
  t.same(
    gw.fake.requests.map((r) => r.url),
    ['/v1/completions', '/v1/completions'],
  );
});

t.test('embeddings.create: two inputs, two vectors of the recorded length', async (t) => {
  const gw = await startGateway(t);
  const { openai } = client(gw);
  const recorded = recordedJson('embeddings') as { data: { embedding: number[] }[] };
  const dims = recorded.data[0]!.embedding.length;
  // encoding_format is given: left out, the SDK asks for base64 and decodes whatever comes back as
  // base64. The fake llama-server always answers floats (see the report), so ask for floats.
  const result = await openai.embeddings.create({ model: 'gpt-oss-20b', input: ['a', 'b'], encoding_format: 'float' });
  t.strictSame(result, recorded, 'the whole recorded response');
  t.equal(result.data.length, 2);
  t.same(
    result.data.map((d) => d.embedding.length),
    [dims, dims],
  );
  t.ok(dims > 0);
  t.same(
    result.data.map((d) => d.embedding),
    recorded.data.map((d) => d.embedding),
    'the recorded vectors',
  );
  t.equal(gw.fake.requests[0]?.url, '/v1/embeddings');
});

t.test('models.list and models.retrieve', async (t) => {
  const gw = await startGateway(t);
  const { openai } = client(gw);
  const recorded = recordedJson('models') as { data: Json[] };
  const page = await openai.models.list();
  t.same(
    page.data.map((m) => m.id),
    ['gpt-oss-20b'],
  );
  t.strictSame(page.data, recorded.data, 'the recorded model entries');
  const ids: string[] = [];
  for await (const model of openai.models.list()) ids.push(model.id);
  t.same(ids, ['gpt-oss-20b'], 'auto-pagination ends after one page');

  const model = await openai.models.retrieve('gpt-oss-20b');
  t.strictSame(model, recorded.data[0], 'the entry from the model list');
  t.equal(model.id, 'gpt-oss-20b');
  t.equal(model.object, 'model');
  t.equal(model.owned_by, 'llamacpp');
  t.same(
    gw.fake.requests.map((r) => r.url),
    ['/v1/models', '/v1/models', '/v1/models'],
  );
});

t.test('a wrong key is an AuthenticationError (401, the original message), upstream untouched', async (t) => {
  const gw = await startGateway(t);
  const { openai } = client(gw, 'sk-wrong-0123456789abcdef');
  for (const call of [() => openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES }), () => openai.models.list()]) {
    const err = await call().then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(err instanceof OpenAI.AuthenticationError, 'OpenAI.AuthenticationError');
    if (!(err instanceof OpenAI.AuthenticationError)) continue;
    t.equal(err.status, 401);
    t.equal(err.message, '401 Incorrect API key provided.');
    t.same(err.error, { message: 'Incorrect API key provided.', type: 'invalid_api_key', param: null, code: 'invalid_api_key' });
    t.equal(err.code, 'invalid_api_key');
    t.equal(err.type, 'invalid_api_key');
  }
  t.equal(gw.fake.requests.length, 0);
});

t.test('an upstream 400 is a BadRequestError with llama-server’s error', async (t) => {
  const body = recordedBody(recordings['error-context-exceeded']!.chunks);
  const gw = await startGateway(t, {}, { failWith: { status: 400, body } });
  const { openai } = client(gw);
  const err = await openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof OpenAI.BadRequestError, 'OpenAI.BadRequestError');
  if (err instanceof OpenAI.BadRequestError) {
    t.equal(err.status, 400);
    t.same(err.error, (JSON.parse(body) as { error: unknown }).error, 'the recorded error object, n_ctx and all');
    t.equal(err.message, '400 request (5028 tokens) exceeds the available context size (2048 tokens), try increasing it');
    t.equal(err.type, 'exceed_context_size_error');
  }
  t.equal(gw.fake.requests.length, 1);
});

t.test('llama-server loading past the queue deadline is an APIError with status 503', async (t) => {
  const gw = await startGateway(t, { queueTimeoutMs: 300 }, { loading: true });
  const { openai } = client(gw);
  const LLAMA_LOADING = { message: 'Loading model', type: 'unavailable_error', code: 503 };
  // The first generation is llama-server's own 503 (held until the deadline); the gateway then knows
  // the server is loading, so the next waits for it and is never sent (503 model_loading).
  const WAITED = {
    message: 'The model server was still loading its model after this request waited 0 s (GATEWAY_QUEUE_TIMEOUT_MS); try again shortly.',
    type: 'server_error',
    param: null,
    code: 'model_loading',
  };
  for (const [call, expected] of [
    [() => openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES }), LLAMA_LOADING],
    [() => openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES, stream: true }), WAITED],
    [() => openai.models.list(), LLAMA_LOADING],
    [() => openai.models.retrieve('gpt-oss-20b'), LLAMA_LOADING],
  ] as const) {
    const err = await (call as () => Promise<unknown>)().then(
      () => undefined,
      (e: unknown) => e,
    );
    t.ok(err instanceof OpenAI.APIError, 'OpenAI.APIError');
    t.ok(err instanceof OpenAI.InternalServerError, 'the 5xx subclass');
    if (!(err instanceof OpenAI.APIError)) continue;
    t.equal(err.status, 503);
    t.same(err.error, expected);
  }
  t.equal(gw.fake.requests.filter((r) => r.url !== '/health').length, 3, 'one attempt each (maxRetries: 0), none for the waiting one');
});

t.test('llama-server down is an APIError with status 502 and the gateway’s upstream_error', async (t) => {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  const gw = await startGateway(t, { upstreams: [`http://127.0.0.1:${port}`] });
  const { openai } = client(gw);
  const err = await openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(err instanceof OpenAI.InternalServerError, 'OpenAI.InternalServerError');
  if (err instanceof OpenAI.APIError) {
    t.equal(err.status, 502);
    t.equal(err.code, 'upstream_unreachable');
    t.equal(err.type, 'upstream_error');
  }
});

t.test('an error in the middle of a stream makes the iteration throw', async (t) => {
  const gw = await startGateway(t, {}, { midStreamError: true });
  const { openai } = client(gw);
  const stream = await openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES, max_tokens: 8, stream: true });
  const chunks: OpenAI.Chat.Completions.ChatCompletionChunk[] = [];
  let caught: unknown;
  try {
    for await (const chunk of stream) chunks.push(chunk);
  } catch (err) {
    caught = err;
  }
  t.ok(caught instanceof OpenAI.APIError, 'the stream throws an OpenAI.APIError');
  if (caught instanceof OpenAI.APIError) {
    t.equal(caught.message, 'fake-llama: simulated failure in the middle of the stream');
    t.same(caught.error, { code: 500, message: 'fake-llama: simulated failure in the middle of the stream', type: 'server_error' });
  }
  // The fake sends the first recorded chunk (two events), then the error event.
  t.strictSame(chunks, recordedEvents('chat-stream-include-usage').slice(0, 2), 'what came before the error was delivered');
});

const STAINLESS = [
  'x-stainless-arch',
  'x-stainless-lang',
  'x-stainless-os',
  'x-stainless-package-version',
  'x-stainless-retry-count',
  'x-stainless-runtime',
  'x-stainless-runtime-version',
];

t.test("the SDK's x-stainless-* headers reach upstream; the client's key does not", async (t) => {
  const gw = await startGateway(t);
  const { openai, sent } = client(gw);
  await openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES, max_tokens: 8 });
  const stream = await openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES, max_tokens: 8, stream: true });
  for await (const chunk of stream) void chunk;
  t.equal(sent.length, 2);
  t.equal(gw.fake.requests.length, 2);
  for (const [i, out] of sent.entries()) {
    const stainless = [...out.headers.entries()].filter(([name]) => name.startsWith('x-stainless-'));
    t.same(
      STAINLESS.filter((name) => !out.headers.has(name)),
      [],
      `the SDK sent its usual x-stainless-* headers (${stainless.map(([n]) => n).join(', ')})`,
    );
    t.equal(out.headers.get('authorization'), `Bearer ${KEY_A}`, 'the SDK sent the client key');
    const upstream = gw.fake.requests[i]!.headers;
    for (const [name, value] of stainless) t.equal(upstream[name], value, `${name} reached upstream unchanged`);
    t.equal(upstream['x-stainless-retry-count'], '0');
    t.equal(upstream['x-stainless-lang'], 'js');
    t.equal(upstream.authorization, undefined, 'no Authorization upstream (no upstreamApiKey configured)');
    t.notMatch(JSON.stringify(upstream), KEY_A, 'the client key appears in no upstream header');
  }
});

t.test('with upstreamApiKey, upstream gets that key, never the client key', async (t) => {
  const upstreamKey = 'llama-secret-0123456789abcdef';
  const gw = await startGateway(t, { upstreamApiKey: upstreamKey }, { apiKey: upstreamKey });
  const { openai } = client(gw);
  const completion = await openai.chat.completions.create({ model: 'gpt-oss-20b', messages: MESSAGES, max_tokens: 8 });
  t.strictSame(completion, recordedJson('chat-nonstream'));
  const upstream = gw.fake.requests[0]!.headers;
  t.equal(upstream.authorization, `Bearer ${upstreamKey}`);
  t.equal(upstream['x-stainless-lang'], 'js');
  t.notMatch(JSON.stringify(upstream), KEY_A);
});
