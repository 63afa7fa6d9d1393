// The SSE tap sees llama-server's stream in whatever pieces the socket delivers: an event may be
// cut anywhere, even between the two newlines that end it. However a recorded stream is cut, the
// client gets the same bytes (minus the usage-only chunk the gateway asked for itself) and the
// usage numbers are the same as for the stream in one piece.
import t from 'tap';
import { SseTap } from '../src/lib/sse-relay.js';
import { Exchange, type RouteKind } from '../src/lib/usage.js';
import { recordings } from './fixtures/fake-llama.js';

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
  for (let pos = 0; ; ) {
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
    t.ok(Buffer.concat(sent).length >= (1 << 20), `${strip ? 'filtered' : 'unfiltered'}: the big event went out before it ended`);
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
