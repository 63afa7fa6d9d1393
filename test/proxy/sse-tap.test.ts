// The SSE tap sees llama-server's stream in whatever pieces the socket delivers: an event may be
// cut anywhere, even between the two newlines that end it. However a recorded stream is cut, the
// client gets the same bytes (minus the usage-only chunk the gateway asked for itself) and the
// usage numbers are the same as for the stream in one piece.
import t from 'tap';
import { SseTap } from '../../src/proxy/sse-tap.js';
import { Exchange, type RouteKind } from '../../src/usage/exchange.js';
import { recordings } from '../fixtures/fake-llama.js';

function run(kind: RouteKind, pieces: Buffer[], strip: boolean): { out: string; ex: Exchange } {
  const ex = new Exchange(kind, '/x', 'm', 0);
  ex.stripUsageChunk = strip;
  const tap = new SseTap(ex);
  const out: Buffer[] = [];
  const take = (b: Buffer | Buffer[] | null): void => {
    if (b === null) return;
    if (Array.isArray(b)) out.push(...b);
    else out.push(b);
  };
  for (const p of pieces) take(tap.chunk(p));
  take(tap.end());
  return { out: Buffer.concat(out).toString('utf8'), ex };
}

/** Cuts `body` at the given offsets. */
function cut(body: Buffer, at: number[]): Buffer[] {
  const pieces: Buffer[] = [];
  let from = 0;
  for (const a of [...at, body.length]) {
    pieces.push(body.subarray(from, a));
    from = a;
  }
  return pieces;
}

// A deterministic pseudo-random cut list (no flaky seeds).
function cuts(length: number, seed: number, maxPiece: number): number[] {
  const at: number[] = [];
  let x = seed;
  for (let pos = 0; ;) {
    x = (x * 1103515245 + 12345) % 2147483648;
    pos += 1 + (x % maxPiece);
    if (pos >= length) return at;
    at.push(pos);
  }
}

const STREAMS: [string, RouteKind][] = [
  ['chat-stream', 'chat'],
  ['chat-stream-include-usage', 'chat'],
  ['completions-stream', 'completions'],
  ['messages-anthropic-stream', 'messages'],
  ['responses-stream', 'responses'],
];

for (const [name, kind] of STREAMS) {
  t.test(`${name}: the same bytes and numbers however the stream is cut`, async (t) => {
    const body = Buffer.concat(recordings[name]!.chunks);
    for (const strip of kind === 'chat' ? [false, true] : [false]) {
      const whole = run(kind, [body], strip);
      if (!strip) t.equal(whole.out, body.toString('utf8'), 'unfiltered: byte for byte');
      const cutsToTry: [string, number[]][] = [
        ['every byte', Array.from({ length: body.length - 1 }, (_, i) => i + 1)],
        ['between the two newlines of every event end', [...body.toString('latin1').matchAll(/\n\n/g)].map((m) => m.index + 1)],
        ...[1, 2, 3, 4, 5].map((seed): [string, number[]] => [`random pieces (seed ${seed})`, cuts(body.length, seed, 200)]),
      ];
      for (const [how, at] of cutsToTry) {
        const r = run(kind, cut(body, at), strip);
        t.equal(r.out, whole.out, `${strip ? 'filtered' : 'unfiltered'}, cut at ${how}: same bytes`);
        t.same(
          [r.ex.promptTokens, r.ex.completionTokens, r.ex.cachedTokens, r.ex.contentEvents, r.ex.bytesOut],
          [whole.ex.promptTokens, whole.ex.completionTokens, whole.ex.cachedTokens, whole.ex.contentEvents, whole.ex.bytesOut],
          `${strip ? 'filtered' : 'unfiltered'}, cut at ${how}: same numbers`,
        );
      }
    }
  });
}

// Chunks over 4 KiB are searched in place, smaller ones as strings (src/proxy/sse-tap.ts): the same
// stream behind a 5,000-byte SSE comment, in one piece, in pieces of up to 9,000 bytes (both kinds
// mixed) and of up to 200, gives the numbers of the stream alone.
for (const [name, kind] of STREAMS) {
  t.test(`${name}: chunks searched in place and as strings agree`, async (t) => {
    const body = Buffer.concat(recordings[name]!.chunks);
    const pad = Buffer.from(`: ${'p'.repeat(4996)}\n\n`);
    const padded = Buffer.concat([pad, body]);
    for (const strip of kind === 'chat' ? [false, true] : [false]) {
      const alone = run(kind, [body], strip);
      for (const [how, pieces] of [
        ['one piece', [padded]],
        ...[1, 2, 3].map((seed): [string, Buffer[]] => [
          `pieces up to 9,000 bytes (seed ${seed})`,
          cut(padded, cuts(padded.length, seed, 9000)),
        ]),
        ['pieces up to 200 bytes', cut(padded, cuts(padded.length, 4, 200))],
      ] as [string, Buffer[]][]) {
        const r = run(kind, pieces, strip);
        t.equal(r.out, pad.toString('utf8') + alone.out, `${strip ? 'filtered' : 'unfiltered'}, ${how}: same bytes`);
        t.same(
          [r.ex.promptTokens, r.ex.completionTokens, r.ex.cachedTokens, r.ex.contentEvents, r.ex.bytesOut],
          [alone.ex.promptTokens, alone.ex.completionTokens, alone.ex.cachedTokens, alone.ex.contentEvents, alone.ex.bytesOut + pad.length],
          `${strip ? 'filtered' : 'unfiltered'}, ${how}: same numbers`,
        );
      }
    }
  });
}

t.test('the usage-only chunk the gateway asked for is dropped, whole or cut', async (t) => {
  const body = Buffer.concat(recordings['chat-stream-include-usage']!.chunks);
  const text = body.toString('utf8');
  const usageEvent = text.split('\n\n').find((e) => e.includes('"choices":[]') && e.includes('"usage"'));
  t.ok(usageEvent, 'the recording has a usage-only chunk');
  const whole = run('chat', [body], true);
  t.equal(whole.out, text.replace(`${usageEvent}\n\n`, ''));
  t.ok(whole.ex.completionTokens !== null && whole.ex.promptTokens !== null, 'its numbers were read');
  t.equal(run('chat', [body], false).out, text, 'kept when the client asked for usage itself');
});

// llama-server writes each usage event as one `data: {"choices":…}` line, which the tap reads
// without parsing the whole event (src/proxy/sse-tap.ts, #readTopLevel); any other shape goes the
// general way. Either way: the same numbers, and in filtered mode the same usage-only chunk cut out.
t.test('usage events in other shapes than llama-server writes: the same numbers, the same chunk dropped', async (t) => {
  const body = Buffer.concat(recordings['chat-stream-include-usage']!.chunks).toString('utf8');
  const usageEvent = body.split('\n\n').find((e) => e.includes('"choices":[]') && e.includes('"usage"'))!;
  const finishEvent = body.split('\n\n').find((e) => e.includes('"finish_reason":"length"'))!;
  const standard = run('chat', [Buffer.from(body)], true);
  t.ok(standard.ex.completionTokens !== null && standard.ex.completionTokens > 0, 'the recording has numbers');
  const data = usageEvent.slice('data: '.length);
  const usage = /"usage":(\{[^}]*\}\})/.exec(data)![1]!;
  const shapes: [string, string][] = [
    ['no space after data:', `data:${data}`],
    ['data on two lines', `data: ${data.replace(',"created"', '\ndata: ,"created"')}`],
    ['an id line first', `id: 7\n${usageEvent}`],
    ['usage before choices', `data: {"usage":${usage},${data.slice(1).replace(`,"usage":${usage}`, '')}`],
    ['spaces in the choices', `data: ${data.replace('"choices":[]', '"choices": [ ]')}`],
  ];
  for (const [how, shaped] of shapes) {
    const text = body.replace(usageEvent, shaped);
    t.not(text, body, `${how}: the stream changed`);
    for (const pieces of [[Buffer.from(text)], cut(Buffer.from(text), cuts(text.length, 11, 90))]) {
      const filtered = run('chat', pieces, true);
      t.equal(filtered.out, text.replace(`${shaped}\n\n`, ''), `${how}: filtered, the usage-only chunk is dropped`);
      t.same(
        [filtered.ex.promptTokens, filtered.ex.completionTokens, filtered.ex.cachedTokens, filtered.ex.usageEvents],
        [standard.ex.promptTokens, standard.ex.completionTokens, standard.ex.cachedTokens, standard.ex.usageEvents],
        `${how}: filtered, the same numbers`,
      );
      const unfiltered = run('chat', pieces, false);
      t.equal(unfiltered.out, text, `${how}: unfiltered, byte for byte`);
      t.same([unfiltered.ex.promptTokens, unfiltered.ex.completionTokens], [standard.ex.promptTokens, standard.ex.completionTokens]);
    }
  }
  // A usage-carrying chunk that is not usage-only (choices first, not empty) stays, in either mode.
  const inline = body.replace(`${finishEvent}\n\n${usageEvent}`, finishEvent.replace(/\}$/, `,"usage":${usage}}`));
  const r = run('chat', [Buffer.from(inline)], true);
  t.equal(r.out, inline, 'usage on a chunk with choices: nothing dropped');
  t.same([r.ex.promptTokens, r.ex.completionTokens], [standard.ex.promptTokens, standard.ex.completionTokens]);
});

t.test('big events in big reads: held pieces are not copied until their event is complete', async (t) => {
  const event = `data: {"choices":[{"delta":{"content":"${'x'.repeat(16_000)}"}}]}\n\n`;
  const body = Buffer.from(event.repeat(20) + 'data: [DONE]\n\n');
  const pieces = cut(body, cuts(body.length, 7, 65_536));
  for (const strip of [false, true]) {
    const r = run('chat', pieces, strip);
    t.equal(r.out, body.toString('utf8'), `${strip ? 'filtered' : 'unfiltered'}: every byte arrives`);
    t.equal(r.ex.contentEvents, 20);
  }
});

t.test('an unfinished event over 1 MiB is passed on unread instead of held', async (t) => {
  const huge = Buffer.from(`data: ${'y'.repeat((1 << 20) + 10)}`);
  const after = Buffer.from('\n\ndata: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: [DONE]\n\n');
  for (const strip of [false, true]) {
    const ex = new Exchange('chat', '/x', 'm', 0);
    ex.stripUsageChunk = strip;
    const tap = new SseTap(ex);
    const sent: Buffer[] = [];
    for (const piece of cut(huge, cuts(huge.length, 3, 65_536))) {
      const o = tap.chunk(piece);
      if (o !== null) sent.push(...(Array.isArray(o) ? o : [o]));
    }
    t.ok(Buffer.concat(sent).length >= 1 << 20, `${strip ? 'filtered' : 'unfiltered'}: the big event went out before it ended`);
    const o = tap.chunk(after);
    if (o !== null) sent.push(...(Array.isArray(o) ? o : [o]));
    const e = tap.end();
    if (e !== null) sent.push(...(Array.isArray(e) ? e : [e]));
    t.equal(Buffer.concat(sent).toString('utf8'), huge.toString('utf8') + after.toString('utf8'), 'every byte, in order');
    t.equal(ex.bytesOut, huge.length + after.length, 'each byte counted once');
    t.equal(ex.contentEvents, 1, 'the events after it are read again');
  }
});

t.test('an oversized event that starts after a boundary in the same chunk: bytes and counts once', async (t) => {
  for (const strip of [false, true]) {
    const ex = new Exchange('chat', '/x', 'm', 0);
    ex.stripUsageChunk = strip;
    const tap = new SseTap(ex);
    const body = Buffer.from(`data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: ${'z'.repeat((1 << 20) + 5)}\n\ndata: [DONE]\n\n`);
    const sent: Buffer[] = [];
    for (const piece of [body.subarray(0, body.length - 30), body.subarray(body.length - 30)]) {
      const o = tap.chunk(piece);
      if (o !== null) sent.push(...(Array.isArray(o) ? o : [o]));
    }
    const e = tap.end();
    if (e !== null) sent.push(...(Array.isArray(e) ? e : [e]));
    t.equal(Buffer.concat(sent).toString('utf8'), body.toString('utf8'), `${strip ? 'filtered' : 'unfiltered'}: every byte, in order`);
    t.equal(ex.bytesOut, body.length, 'each byte counted once');
    t.equal(ex.contentEvents, 1);
  }
});

// #12: a /v1/completions prompt array streams one usage event per prompt (real llama-server
// b10587: `data: null` first, content events by `index`, each prompt's usage in its final chunk).
const PROMPT_ARRAY_STREAM = [
  'data: null\n\n',
  ...[0, 1, 2].flatMap((index) => [
    `data: {"choices":[{"text":" a","index":${index},"logprobs":null,"finish_reason":null}],"object":"text_completion","id":"c"}\n\n`,
    `data: {"choices":[{"text":" b","index":${index},"logprobs":null,"finish_reason":null}],"object":"text_completion","id":"c"}\n\n`,
    `data: {"choices":[{"text":"","index":${index},"logprobs":null,"finish_reason":"length"}],"object":"text_completion","usage":{"completion_tokens":4,"prompt_tokens":${3 + index},"total_tokens":${7 + index},"prompt_tokens_details":{"cached_tokens":1}},"id":"c","timings":{"prompt_n":2,"prompt_ms":1,"predicted_n":4,"predicted_ms":2}}\n\n`,
  ]),
  'data: [DONE]\n\n',
].join('');

t.test("a streamed prompt array: every prompt's usage is summed, however the stream is cut (regression)", async (t) => {
  const body = Buffer.from(PROMPT_ARRAY_STREAM);
  for (const [how, at] of [
    ['whole', []],
    ['every byte', Array.from({ length: body.length - 1 }, (_, i) => i + 1)],
    ['random', cuts(body.length, 11, 90)],
  ] as [string, number[]][]) {
    const r = run('completions', cut(body, at), false);
    t.same(
      [r.ex.promptTokens, r.ex.cachedTokens, r.ex.completionTokens, r.ex.usageEvents, r.ex.contentEvents],
      [3 + 4 + 5, 3, 12, 3, 6],
      how,
    );
  }
});

t.test("llama-server's own error event at a 200 stream's end marks the exchange (regression)", async (t) => {
  const first = recordings['chat-stream']!.chunks[0]!.toString('utf8');
  const openai = `${first}data: {"error":{"code":500,"message":"The model produced output that does not match the expected peg-native format","type":"server_error"}}\n\n`;
  const anthropic =
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" x"}}\n\nevent: error\ndata: {"code":500,"message":"The model produced output that does not match the expected peg-native format","type":"server_error"}\n\n';
  for (const [kind, text] of [
    ['chat', openai],
    ['responses', openai],
    ['messages', anthropic],
  ] as [RouteKind, string][]) {
    const body = Buffer.from(text);
    for (const at of [[], [body.length - 20], [body.length - 1], cuts(body.length, 5, 40)]) {
      const r = run(kind, cut(body, at), false);
      t.equal(r.ex.broken, 'error', `${kind}: cut at ${at.length} places`);
      t.equal(r.out, text, 'the error event itself reaches the client unchanged');
    }
  }
  // Content that merely mentions an error, and ordinary endings, are not errors.
  for (const [kind, name] of [
    ['chat', 'chat-stream'],
    ['completions', 'completions-stream'],
    ['messages', 'messages-anthropic-stream'],
    ['responses', 'responses-stream'],
  ] as [RouteKind, string][]) {
    t.equal(run(kind, recordings[name]!.chunks, false).ex.broken, null, `${name}: ok`);
  }
  const mention = 'data: {"choices":[{"delta":{"content":"{\\"error\\":{\\"code\\":500}}"}}]}\n\n';
  t.equal(run('chat', [Buffer.from(mention)], false).ex.broken, null, 'an error in content (no [DONE] yet) is content');
  t.equal(
    run(
      'responses',
      [
        Buffer.from(
          'event: response.completed\ndata: {"type":"response.completed","response":{"error":null,"usage":{"input_tokens":1,"output_tokens":1}}}\n\n',
        ),
      ],
      false,
    ).ex.broken,
    null,
    '"error": null is no error',
  );
});

t.test('the error event is found after a long stream, whatever its ending and however it is cut', async (t) => {
  const first = recordings['chat-stream']!.chunks[0]!.toString('utf8');
  const error = 'data: {"error":{"code":500,"message":"boom","type":"server_error"}}';
  for (const ending of ['\n\n', '\n', '', '\r\n\r\n']) {
    const text = `${first.repeat(200)}${error}${ending}`;
    const body = Buffer.from(text);
    for (const [how, at] of [
      ['whole', []],
      ['every byte of the last 400', Array.from({ length: 400 }, (_, i) => body.length - 400 + i)],
      ['random pieces', cuts(body.length, 9, 700)],
    ] as [string, number[]][]) {
      const r = run('chat', cut(body, at), false);
      t.equal(r.ex.broken, 'error', `ending ${JSON.stringify(ending)}, ${how}`);
      t.equal(r.out, text, 'the stream reaches the client unchanged');
    }
  }
  // A last event longer than the end check's byte-by-byte look (512 bytes) is found as well.
  const long = `data: {"error":{"code":500,"message":"${'m'.repeat(2000)}","type":"server_error"}}`;
  for (const ending of ['\n\n', '', '\r\n\r\n']) {
    const text = `${first.repeat(20)}${long}${ending}`;
    for (const at of [[], cuts(text.length, 4, 300)]) {
      t.equal(
        run('chat', cut(Buffer.from(text), at), false).ex.broken,
        'error',
        `a ${long.length}-byte error event, ending ${JSON.stringify(ending)}`,
      );
    }
  }
  const longContent = `data: {"choices":[{"delta":{"content":"${'c'.repeat(2000)}"}}]}\n\n`;
  t.equal(
    run('chat', [Buffer.from(`${first}${error}\n\n${longContent}`)], false).ex.broken,
    null,
    'a long last event after an error event: not an error',
  );
  t.equal(
    run('chat', [Buffer.from(`${first}${error}\n\n${longContent}`.replace(/\n\n/g, '\r\n\r\n'))], false).ex.broken,
    null,
    'the same with CRLF endings',
  );
  const ok = Buffer.from(`${error.replace('data: ', 'data: {"choices":[{"delta":{"content":').replace(/}$/, '}}}]}')}\n\n${first}`);
  t.equal(
    run('chat', cut(ok, cuts(ok.length, 3, 30)), false).ex.broken,
    null,
    'an error object in content before the last event: not an error',
  );
});

t.test('usage is read from where each API puts it in an event, never from content', async (t) => {
  // Anthropic: a content_block_start whose tool input holds "usage" at the top of that object.
  const spoof =
    'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{"usage":{"input_tokens":0}}},"usage":{"input_tokens":0,"output_tokens":0}}\n\n';
  const body = Buffer.concat([
    ...recordings['messages-anthropic-stream']!.chunks.slice(0, 1),
    Buffer.from(spoof),
    ...recordings['messages-anthropic-stream']!.chunks.slice(1),
  ]);
  const r = run('messages', [body], false);
  t.same([r.ex.promptTokens, r.ex.completionTokens], [29, 4], 'message_start and message_delta only');
});

t.test('n: 2 on chat: one usage event per task, summed (red team F3)', async (t) => {
  // As llama-server b10587 sends it: each task's last chunk carries that task's usage.
  const usage = '{"completion_tokens":4,"prompt_tokens":29,"total_tokens":33,"prompt_tokens_details":{"cached_tokens":0}}';
  const chunk = (index: number, content: string): string =>
    `data: {"choices":[{"finish_reason":null,"index":${index},"delta":{"content":"${content}"}}],"object":"chat.completion.chunk"}\n\n`;
  const last = (index: number): string =>
    `data: {"choices":[{"finish_reason":"length","index":${index},"delta":{}}],"object":"chat.completion.chunk","usage":${usage}}\n\n`;
  const body = Buffer.from(`${chunk(0, 'a')}${chunk(1, 'b')}${last(1)}${last(0)}data: [DONE]\n\n`);
  const ex = new Exchange('chat', '/v1/chat/completions', null, 0);
  ex.prompts = 2;
  ex.streamed = true;
  const tap = new SseTap(ex);
  tap.chunk(body);
  tap.end();
  t.same([ex.promptTokens, ex.completionTokens, ex.usageEvents], [58, 8, 2]);
});
