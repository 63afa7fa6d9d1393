// The non-streamed tap reads `usage` only where the response format puts it: a key of the body's
// top-level object. Content (a tool call's arguments, a model's text) never counts, however the
// body is cut into chunks and however large it is.
import t from 'tap';
import { JsonTap, topLevelFromEnd, topLevelFromStart } from '../../src/proxy/json-tap.js';
import { GenerationRates } from '../../src/usage/estimate.js';
import { Exchange, type RouteKind } from '../../src/usage/exchange.js';
import { recordings } from '../fixtures/fake-llama.js';

function tap(kind: RouteKind, body: string | Buffer, pieceSize = Infinity, rates: GenerationRates | null = null): Exchange {
  const ex = new Exchange(kind, '/x', 'm', 0);
  const bytes = typeof body === 'string' ? Buffer.from(body) : body;
  const tap = new JsonTap(ex, rates);
  const out: Buffer[] = [];
  for (let at = 0; at < bytes.length; at += pieceSize) out.push(tap.chunk(bytes.subarray(at, Math.min(bytes.length, at + pieceSize))));
  tap.end();
  if (!Buffer.concat(out).equals(bytes)) throw new Error('the tap changed the body');
  return ex;
}

const numbers = (ex: Exchange): [number | null, number | null, number | null] => [ex.promptTokens, ex.cachedTokens, ex.completionTokens];

// Anthropic's shape, as llama-server writes it: content (with tool_use.input) before usage.
const TOOL_CALL = JSON.stringify({
  id: 'msg_1',
  type: 'message',
  role: 'assistant',
  content: [
    { type: 'tool_use', id: 'toolu_1', name: 'f', input: { usage: { input_tokens: 0, output_tokens: 0 }, note: 'a "quoted" \\ text }' } },
  ],
  model: 'm',
  stop_reason: 'tool_use',
  stop_sequence: null,
  usage: { cache_read_input_tokens: 2, input_tokens: 40, output_tokens: 12 },
});

t.test('messages: a tool call whose arguments hold "usage" does not fool the tap (regression)', async (t) => {
  t.same(numbers(tap('messages', TOOL_CALL)), [42, 2, 12], 'the top-level usage');
  for (const size of [1, 3, 7, 64]) t.same(numbers(tap('messages', TOOL_CALL, size)), [42, 2, 12], `cut every ${size} bytes`);
});

t.test('content with "usage" in strings, nested objects and escapes; usage last', async (t) => {
  const tricky = JSON.stringify({
    choices: [
      {
        message: {
          content: '"usage":{"prompt_tokens":0,"completion_tokens":0}} \\"',
          tool_calls: [{ function: { arguments: '{"usage":{"prompt_tokens":0}}' } }],
        },
      },
    ],
    meta: { usage: { prompt_tokens: 1, completion_tokens: 1 } },
    usage: { completion_tokens: 7, prompt_tokens: 30, prompt_tokens_details: { cached_tokens: 3 } },
    id: 'x"}\\',
    timings: { prompt_n: 30, prompt_ms: 3, predicted_n: 7, predicted_ms: 7 },
  });
  t.same(numbers(tap('chat', tricky)), [30, 3, 7]);
  // A body whose only "usage" is content: no numbers at all.
  const none = JSON.stringify({ choices: [{ message: { content: 'x' } }], meta: { usage: { prompt_tokens: 1 } }, id: 'y' });
  t.same(numbers(tap('chat', none)), [null, null, null]);
  t.same(numbers(tap('chat', 'not json')), [null, null, null]);
  t.same(numbers(tap('chat', '')), [null, null, null]);
});

t.test('a large body: usage at the end is found in the last 16 KiB, with timings for the speed estimate', async (t) => {
  const big = JSON.stringify({
    choices: [{ message: { content: 'w '.repeat(100_000) + '"usage":{"prompt_tokens":0}' } }],
    usage: { completion_tokens: 9000, prompt_tokens: 12, prompt_tokens_details: { cached_tokens: 0 } },
    id: 'z',
    timings: { prompt_n: 32, prompt_ms: 16, predicted_n: 9000, predicted_ms: 9000 },
  });
  const rates = new GenerationRates();
  t.same(numbers(tap('completions', big, 16_384, rates)), [12, 0, 9000]);
  t.same(rates.speeds(), { prompt: 2000, predicted: 1000 });
  // usage cut by the start of the kept tail is not taken from content before it
  const cut = Buffer.from(big);
  t.same(topLevelFromEnd(cut.subarray(cut.length - 50), [Buffer.from('usage')]), [undefined], 'not reachable in a 50-byte tail');
});

t.test('embeddings: usage near the start, read forward past large data', async (t) => {
  const embeddings = JSON.stringify({
    model: 'm',
    object: 'list',
    usage: { prompt_tokens: 8, total_tokens: 8 },
    data: [{ embedding: Array.from({ length: 20_000 }, (_, i) => i / 7), index: 0, object: 'embedding' }],
  });
  t.same(numbers(tap('embeddings', embeddings, 8192)), [8, null, null]);
  // input text with a usage key comes later and is never read
  const rerank = JSON.stringify({
    model: 'm',
    object: 'list',
    usage: { prompt_tokens: 12, total_tokens: 12 },
    results: [{ index: 0, document: { text: '{"usage":{"prompt_tokens":0}}' } }],
  });
  t.same(numbers(tap('rerank', rerank)), [12, null, null]);
  const spoofFirst = JSON.stringify({
    model: 'm"usage":{"prompt_tokens":0}',
    object: 'list',
    data: [{ usage: { prompt_tokens: 0 } }],
    usage: { prompt_tokens: 5, total_tokens: 5 },
  });
  t.same(numbers(tap('embeddings', spoofFirst)), [5, null, null], 'a usage after the data is still the top-level one');
});

t.test('every recorded non-streamed body gives its usage', async (t) => {
  const body = (name: string): string => Buffer.concat(recordings[name]!.chunks).toString('utf8');
  t.same(numbers(tap('chat', body('chat-nonstream'))), [31, 10, 8]);
  t.same(numbers(tap('completions', body('completions-nonstream'))), [2, 1, 5]);
  t.same(numbers(tap('embeddings', body('embeddings'))), [4, null, null]);
});

t.test('the scanners themselves', async (t) => {
  const keys = [Buffer.from('usage'), Buffer.from('timings')];
  const found = (b: (Buffer | undefined)[]): (string | undefined)[] => b.map((x) => x?.toString());
  t.same(found(topLevelFromEnd(Buffer.from(' { "usage" : {"a":{"b":[1,{"c":"}"}]}} , "timings":{"t":1} } \n'), keys)), [
    '{"a":{"b":[1,{"c":"}"}]}}',
    '{"t":1}',
  ]);
  t.same(
    found(topLevelFromEnd(Buffer.from('{"usage":[1],"x":{"usage":{"a":1}}}'), keys)),
    [undefined, undefined],
    'arrays and nested keys are not usage',
  );
  t.same(
    found(topLevelFromEnd(Buffer.from('{"a":"\\\\","usage":{"n":1}}'), keys)),
    ['{"n":1}', undefined],
    'an escaped backslash before a quote',
  );
  t.same(found(topLevelFromEnd(Buffer.from('{"a":"\\"usage\\":{\\"n\\":0}"}'), keys)), [undefined, undefined], 'escaped quotes in content');
  t.same(found(topLevelFromEnd(Buffer.from('[{"usage":{"n":1}}]'), keys)), [undefined, undefined], 'not an object body');
  t.same(found(topLevelFromStart(Buffer.from('{"x":"\\"usage\\":{}","usage":{"n":2},"data":[]}'), [keys[0]!])), ['{"n":2}']);
  t.same(found(topLevelFromStart(Buffer.from('{"x":{"usage":{"n":0}},"usage":{"n":'), [keys[0]!])), [undefined], 'cut before its end');
});

t.test('a kept tail that starts inside a long string: the scan stops there, whatever the string length', async (t) => {
  // The scan skips strings with a byte loop for 48 bytes, then indexOf: a string cut by the tail's
  // start at exactly that distance once made lastIndexOf count from the end (offset -1).
  const keys = [Buffer.from('usage'), Buffer.from('timings')];
  for (let n = 40; n <= 110; n++) {
    const tail = Buffer.from(`${'w'.repeat(n)}","usage":{"prompt_tokens":7}}`);
    t.same(topLevelFromEnd(tail, keys)[0]?.toString(), '{"prompt_tokens":7}', `usage after a cut string of ${n} bytes`);
    const fake = Buffer.from(`${'w'.repeat(n)}\\"usage\\":{\\"prompt_tokens\\":0}","id":"x"}`);
    t.same(topLevelFromEnd(fake, keys), [undefined, undefined], `content of a cut string of ${n} bytes is not usage`);
    const open = Buffer.from(`${'w'.repeat(n)}"}`);
    t.same(topLevelFromEnd(open, keys), [undefined, undefined], `a lone closing quote after ${n} bytes`);
  }
});
