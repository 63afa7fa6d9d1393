// llama-server's token-counting routes and the audio upload, end to end against a real
// llama-server (issue 14, "every llama-server route a client needs"): the three counting routes
// answer llama-server's own count through the gateway (and cost no usage), and
// /v1/audio/transcriptions reaches llama-server as the client's form and comes back as its own
// answer — the tiny test model has no audio, so that answer is its 501 not_supported_error.
import t from 'tap';
import type { UsageRecord } from '../../src/usage/exchange.js';
import { AUTH_A, until } from '../helpers.js';
import { countTokens, skipTier, startRealGateway } from './llama.js';

const MODEL = 'gpt-oss-20b';
const MESSAGES = [
  { role: 'system', content: 'You answer in one short sentence.' },
  { role: 'user', content: 'How many legs does a spider have?' },
];

/** Each counting route with a body in its own API's shape. */
const COUNTING: readonly (readonly [string, Record<string, unknown>])[] = [
  ['/v1/chat/completions/input_tokens', { model: MODEL, messages: MESSAGES }],
  [
    '/v1/responses/input_tokens',
    { model: MODEL, instructions: 'You answer in one short sentence.', input: 'How many legs does a spider have?' },
  ],
  ['/v1/messages/count_tokens', { model: MODEL, system: 'You answer in one short sentence.', messages: MESSAGES.slice(1) }],
];

const BOUNDARY = '----gwRealTest3f9a0c';

/** A transcription form: a small WAV header and a few bytes of "audio", and the model. */
function transcriptionForm(): Buffer {
  const wav = Buffer.concat([
    Buffer.from('RIFF\x24\x00\x00\x00WAVEfmt ', 'latin1'),
    Buffer.from(Array.from({ length: 64 }, (_, i) => i * 4)),
  ]);
  return Buffer.concat([
    Buffer.from(`--${BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="speech.wav"\r\nContent-Type: audio/wav\r\n\r\n`),
    wav,
    Buffer.from(`\r\n--${BOUNDARY}\r\nContent-Disposition: form-data; name="model"\r\n\r\n${MODEL}\r\n--${BOUNDARY}--\r\n`),
  ]);
}

if (!skipTier(t)) {
  t.test('the three token-counting routes answer llama-server’s own count', async (t) => {
    const gw = await startRealGateway(t, {}, { usageFlushMs: 20 });
    const records: UsageRecord[] = [];
    gw.app.usage!.onRecord((r) => records.push(r));
    for (const [path, body] of COUNTING) {
      const direct = await countTokens(gw.llama, path, body);
      t.ok(direct > 10, `${path}: llama-server counts ${direct} tokens`);
      const res = await fetch(`${gw.url}${path}`, {
        method: 'POST',
        headers: { ...AUTH_A, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      t.equal(res.status, 200, `${path}: 200`);
      t.equal(res.headers.get('content-type'), 'application/json; charset=utf-8', `${path}: JSON`);
      const answer = (await res.json()) as { input_tokens?: unknown };
      t.equal(answer.input_tokens, direct, `${path}: the same count through the gateway`);
      const record = await until(`${path}: its usage record`, () => records.find((r) => r.route === path));
      // Counting runs no generation: the record is there (requests, bytes), with no tokens to bill.
      t.match(record, {
        route: path,
        model: MODEL,
        status: 200,
        promptTokens: null,
        completionTokens: null,
        estimated: false,
        outcome: 'ok',
      });
    }
  });

  t.test('a transcription reaches llama-server as the client’s form and comes back as its own answer', async (t) => {
    const gw = await startRealGateway(t, {}, { usageFlushMs: 20 });
    const records: UsageRecord[] = [];
    gw.app.usage!.onRecord((r) => records.push(r));
    const body = transcriptionForm();
    const type = `multipart/form-data; boundary=${BOUNDARY}`;
    const direct = await fetch(`${gw.llama.url}/v1/audio/transcriptions`, { method: 'POST', headers: { 'content-type': type }, body });
    const directText = await direct.text();
    t.comment(`llama-server itself (tiny model, no audio): ${direct.status} ${directText}`);

    const res = await fetch(`${gw.url}/v1/audio/transcriptions`, { method: 'POST', headers: { ...AUTH_A, 'content-type': type }, body });
    const text = await res.text();
    t.equal(res.status, direct.status, 'llama-server’s status');
    t.equal(res.headers.get('content-type'), direct.headers.get('content-type'), 'its Content-Type');
    t.equal(text, directText, 'its body, unchanged');
    t.same(JSON.parse(text), {
      error: { code: 501, message: 'The current model does not support audio input.', type: 'not_supported_error' },
    });
    const record = await until('the usage record', () => records.find((r) => r.route === '/v1/audio/transcriptions'));
    t.match(record, {
      model: MODEL,
      status: 501,
      streamed: false,
      promptTokens: null,
      completionTokens: null,
      estimated: false,
      bytesIn: body.length,
      outcome: 'upstream_error',
    });

    // A form the gateway cannot read never reaches llama-server (whose own answer would be 501 anyway).
    const cut = await fetch(`${gw.url}/v1/audio/transcriptions`, {
      method: 'POST',
      headers: { ...AUTH_A, 'content-type': type },
      body: body.subarray(0, body.length - 10),
    });
    t.equal(cut.status, 400);
    t.match(await cut.json(), { error: { code: 'invalid_form', type: 'invalid_request_error' } });
  });
}
