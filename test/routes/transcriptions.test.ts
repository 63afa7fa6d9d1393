// POST /v1/audio/transcriptions (issue 14): OpenAI's multipart/form-data upload, read for its
// `model` (key policy, routing) and `stream`, forwarded byte for byte with the client's
// Content-Type (boundary kept), under the same body limit as JSON; a form the gateway cannot read
// is a 400 in OpenAI's shape, a form sent to any other route the 400 it always was; the usage
// record has llama-server's numbers. Real sockets, with a small upstream of our own (the fake
// llama-server has no transcriptions route) that records what reached it.
import { once } from 'node:events';
import http from 'node:http';
import type net from 'node:net';
import OpenAI, { toFile } from 'openai';
import t from 'tap';
import { ERROR_TABLE } from '../../src/errors.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import type { UsageRecord } from '../../src/usage/exchange.js';
import { KEY_A, bearer, request, startGateway, tempStore, until, type Gateway, type Teardown } from '../helpers.js';

const MODEL = 'whisper-test';
const PATH = '/v1/audio/transcriptions';
const BOUNDARY = '----gwTestBoundary7MA4YWxkTrZu0gW';
const FORM_TYPE = `multipart/form-data; boundary=${BOUNDARY}`;
const ANSWER = JSON.stringify({ text: 'Hello there.', usage: { type: 'tokens', input_tokens: 14, output_tokens: 3, total_tokens: 17 } });
const STREAM =
  'data: {"type":"transcript.text.delta","delta":"Hello"}\n\n' +
  'data: {"type":"transcript.text.delta","delta":" there."}\n\n' +
  'data: {"type":"transcript.text.done","text":"Hello there.","usage":{"type":"tokens","input_tokens":15,"output_tokens":4,"total_tokens":19}}\n\n' +
  'data: [DONE]\n\n';

interface Received {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

interface Upstream {
  readonly url: string;
  /** the transcription requests that reached it */
  readonly received: Received[];
}

/**
 * A llama-server stand-in with an audio model: /v1/audio/transcriptions answers ANSWER (or the
 * STREAM when the form asks for one), and the routes the gateway reads itself (/health, /props,
 * /v1/models) answer as llama-server does.
 */
async function startUpstream(t: Teardown): Promise<Upstream> {
  const received: Received[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const json = (status: number, body: unknown): void => {
        res.writeHead(status, { 'content-type': 'application/json; charset=utf-8' }).end(JSON.stringify(body));
      };
      if (req.url === '/health') return json(200, { status: 'ok' });
      if (req.url === '/props') return json(200, { total_slots: 4, default_generation_settings: { n_ctx: 4096 } });
      if (req.url === '/v1/models') return json(200, { object: 'list', data: [{ id: MODEL, object: 'model', owned_by: 'llamacpp' }] });
      if (req.url !== PATH) return json(404, { error: { code: 404, message: 'File Not Found', type: 'not_found_error' } });
      const body = Buffer.concat(chunks);
      received.push({ method: req.method ?? '', url: req.url, headers: req.headers, body });
      if (body.includes('name="stream"\r\n\r\ntrue\r\n')) {
        res.writeHead(200, { 'content-type': 'text/event-stream' }).end(STREAM);
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' }).end(ANSWER);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    server.closeAllConnections();
    return new Promise((r) => server.close(r));
  });
  return { url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`, received };
}

type Part = readonly [name: string, value: string | Buffer, filename?: string];

/** A multipart/form-data body as client libraries write it (CRLF line ends, the closing delimiter). */
function form(parts: readonly Part[], boundary = BOUNDARY): Buffer {
  const out: Buffer[] = [];
  for (const [name, value, filename] of parts) {
    const disposition = `Content-Disposition: form-data; name="${name}"${filename === undefined ? '' : `; filename="${filename}"`}`;
    const type = filename === undefined ? '' : '\r\nContent-Type: audio/wav';
    out.push(Buffer.from(`--${boundary}\r\n${disposition}${type}\r\n\r\n`), Buffer.from(value), Buffer.from('\r\n'));
  }
  out.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(out);
}

/**
 * An "audio file" made to trip a careless parser: every byte value, CRLFs, blank lines, the
 * boundary without its leading CRLF, the delimiter with one byte changed or one dash short, a
 * part's headers, and bytes that are not UTF-8. (Never the delimiter itself: a client picks a
 * boundary its content does not hold.)
 */
const AUDIO = Buffer.concat([
  Buffer.from('RIFF\x24\x00\x00\x00WAVEfmt ', 'latin1'),
  Buffer.from(Array.from({ length: 256 }, (_, i) => i)),
  Buffer.from(`\r\n\r\nx--${BOUNDARY}\r\n`),
  Buffer.from(`\r\n--${BOUNDARY.slice(0, -1)}X--\r\n`),
  Buffer.from(`\r\n-${BOUNDARY}`),
  Buffer.from([0xff, 0xfe, 0x00, 0x0d, 0x0a, 0x2d, 0x2d, 0xc3, 0x28]),
  Buffer.from(`Content-Disposition: form-data; name="model"\r\n\r\nother-model`),
]);

const FILE: Part = ['file', AUDIO, 'speech.wav'];

async function setup(
  t: Teardown,
  overrides: Parameters<typeof startGateway>[1] = {},
): Promise<{ gw: Gateway; up: Upstream; records: UsageRecord[] }> {
  const up = await startUpstream(t);
  const gw = await startGateway(t, { upstreams: [up.url], ...overrides }, {}, { usageFlushMs: 20 });
  const records: UsageRecord[] = [];
  gw.app.usage!.onRecord((r) => records.push(r));
  return { gw, up, records };
}

function post(gw: Gateway, body: Buffer, type = FORM_TYPE, path = PATH, key = KEY_A): ReturnType<typeof request> {
  return request(gw.port, { method: 'POST', path, headers: { ...bearer(key), 'content-type': type }, body });
}

/** The body an error entry's cause gives, by its message's start (the table is read, not copied). */
function errorBody(code: string, param: string | null, message: string): unknown {
  return { error: { message, type: 'invalid_request_error', param, code } };
}

t.test('the form reaches llama-server byte for byte, with its Content-Type; the answer comes back; usage recorded', async (t) => {
  const { gw, up, records } = await setup(t);
  const body = form([
    ['model', MODEL],
    ['language', 'en'],
    ['prompt', 'A talk about "gateways".'],
    ['response_format', 'json'],
    ['temperature', '0'],
    FILE,
  ]);
  const res = await post(gw, body);
  t.equal(res.status, 200);
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8');
  t.equal(res.text, ANSWER, "llama-server's answer, unchanged");
  t.equal(up.received.length, 1);
  const got = up.received[0]!;
  t.equal(got.method, 'POST');
  t.equal(got.url, PATH);
  t.ok(got.body.equals(body), `the same ${body.length} bytes upstream`);
  t.equal(got.headers['content-type'], FORM_TYPE, 'the client’s Content-Type, boundary kept');
  t.equal(got.headers['content-length'], String(body.length));
  t.equal(got.headers.authorization, undefined, 'the client’s key stays at the gateway');

  const record = await until('the usage record', () => records.find((r) => r.route === PATH));
  t.match(record, {
    route: PATH,
    model: MODEL,
    status: 200,
    streamed: false,
    promptTokens: 14,
    completionTokens: 3,
    cachedTokens: null,
    estimated: false,
    bytesIn: body.length,
    bytesOut: Buffer.byteLength(ANSWER),
    outcome: 'ok',
  });
});

t.test(
  'a streamed transcription: the events pass unchanged, the body gets no stream_options, usage from transcript.text.done',
  async (t) => {
    const { gw, up, records } = await setup(t);
    const body = form([FILE, ['model', MODEL], ['stream', 'true']]);
    const res = await post(gw, body);
    t.equal(res.status, 200);
    t.equal(res.headers['content-type'], 'text/event-stream');
    t.equal(res.text, STREAM);
    t.ok(up.received[0]!.body.equals(body), 'the form unchanged: nothing spliced in');
    const record = await until('the usage record', () => records.find((r) => r.route === PATH));
    t.match(record, { model: MODEL, status: 200, streamed: true, promptTokens: 15, completionTokens: 4, estimated: false, outcome: 'ok' });
  },
);

t.test('the model is read from the form wherever it is: a key kept to other models gets 403', async (t) => {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A], store);
  const up = await startUpstream(t);
  const gw = await startGateway(t, { upstreams: [up.url] }, {}, { registry });
  const { key: allowed } = store.create({ name: 'voice', models: [MODEL] });
  const { key: other } = store.create({ name: 'chat-only', models: ['gpt-oss-20b'] });
  registry.reload();

  // model after the file part (as some clients write it); the file itself holds a decoy "model" part
  const after = await post(gw, form([FILE, ['model', MODEL]]), FORM_TYPE, PATH, allowed);
  t.equal(after.status, 200, 'the model field after the file: read, allowed');
  t.equal(after.text, ANSWER);

  const refused = await post(gw, form([['model', MODEL], FILE]), FORM_TYPE, PATH, other);
  t.equal(refused.status, 403);
  t.same(JSON.parse(refused.text), {
    error: {
      message: `This API key may not use the model '${MODEL}'.`,
      type: 'invalid_request_error',
      param: 'model',
      code: 'model_not_allowed',
    },
  });
  const none = await post(gw, form([FILE, ['language', 'en']]), FORM_TYPE, PATH, other);
  t.equal(none.status, 403, 'no model in the form: refused too');
  t.equal((JSON.parse(none.text) as { error: { code: string } }).error.code, 'model_not_allowed');
  t.equal(up.received.length, 1, 'only the allowed one reached llama-server');
});

t.test('a form the gateway cannot read: 400 in OpenAI’s shape, nothing sent upstream', async (t) => {
  const { gw, up } = await setup(t);
  const formErrors = ERROR_TABLE.find((e) => e.name === 'INVALID_FORM')!.message as Record<string, string>;
  const invalid = (cause: string): unknown => errorBody('invalid_form', null, formErrors[cause]!);
  const whole = form([['model', MODEL], FILE]);
  const cases: [string, Buffer, string, number, unknown][] = [
    ['no boundary in the Content-Type', whole, 'multipart/form-data', 400, invalid('noBoundary')],
    ['a boundary over 70 characters', whole, `multipart/form-data; boundary=${'b'.repeat(71)}`, 400, invalid('noBoundary')],
    ['cut before the closing boundary', whole.subarray(0, whole.length - 200), FORM_TYPE, 400, invalid('notClosed')],
    ['another boundary than the body’s', whole, 'multipart/form-data; boundary=somethingElse', 400, invalid('notClosed')],
    ['an empty body', Buffer.alloc(0), FORM_TYPE, 400, invalid('notClosed')],
    ['LF line ends', Buffer.from(whole.toString('latin1').replace(/\r\n/g, '\n'), 'latin1'), FORM_TYPE, 400, invalid('malformed')],
    [
      'a part without a name',
      Buffer.from(`--${BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--${BOUNDARY}--\r\n`),
      FORM_TYPE,
      400,
      invalid('malformed'),
    ],
    ['two model fields', form([['model', MODEL], FILE, ['model', 'other-model']]), FORM_TYPE, 400, invalid('twoModels')],
    ['a model that is not UTF-8', form([['model', Buffer.from([0x77, 0xff, 0x68])], FILE]), FORM_TYPE, 400, invalid('modelNotUtf8')],
    [
      'a model over 256 characters',
      form([['model', 'm'.repeat(300)], FILE]),
      FORM_TYPE,
      400,
      errorBody(
        'string_above_max_length',
        'model',
        "Invalid 'model': string too long. Expected a string with maximum length 256, but got a string with length 300 instead.",
      ),
    ],
    [
      'no file part',
      form([
        ['model', MODEL],
        ['language', 'en'],
      ]),
      FORM_TYPE,
      400,
      errorBody(
        'missing_file',
        'file',
        'The form has no "file" part; send the audio to transcribe as the "file" field (multipart/form-data).',
      ),
    ],
  ];
  for (const [what, body, type, status, expected] of cases) {
    const res = await post(gw, body, type);
    t.equal(res.status, status, `${what}: status`);
    t.equal(res.headers['content-type'], 'application/json; charset=utf-8', `${what}: JSON`);
    t.same(JSON.parse(res.text), expected, `${what}: body`);
  }
  t.equal(up.received.length, 0, 'none reached llama-server');
});

t.test('the body limit is the same as for JSON: 413', async (t) => {
  const { gw, up } = await setup(t, { bodyLimit: 64 * 1024 });
  const res = await post(
    gw,
    form([
      ['model', MODEL],
      ['file', Buffer.alloc(100 * 1024, 7), 'long.wav'],
    ]),
  );
  t.equal(res.status, 413);
  t.same(JSON.parse(res.text), {
    error: {
      message: "The request body is larger than this gateway's limit of 65536 bytes (GATEWAY_BODY_LIMIT).",
      type: 'invalid_request_error',
      param: null,
      code: 'request_too_large',
    },
  });
  const under = await post(
    gw,
    form([
      ['model', MODEL],
      ['file', Buffer.alloc(60 * 1024, 7), 'short.wav'],
    ]),
  );
  t.equal(under.status, 200, 'just under the limit: forwarded');
  t.equal(up.received.length, 1);
});

t.test('a form sent to any other route gets the 400 it always got (read as JSON)', async (t) => {
  const { gw, up } = await setup(t);
  for (const body of [
    form([
      ['model', MODEL],
      ['prompt', 'hi'],
    ]),
    form([['model', MODEL], FILE]),
  ]) {
    const asForm = await post(gw, body, FORM_TYPE, '/v1/chat/completions');
    const asText = await post(gw, body, 'text/plain', '/v1/chat/completions');
    t.equal(asForm.status, 400);
    t.equal(asForm.text, asText.text, 'the same answer as for the same bytes of any other type');
    t.match(JSON.parse(asForm.text), { error: { type: 'invalid_request_error', code: 'invalid_json' } });
  }
  t.equal(up.received.length, 0);
});

t.test('the openai SDK’s audio.transcriptions.create() through the gateway', async (t) => {
  const { gw, up } = await setup(t);
  const openai = new OpenAI({ apiKey: KEY_A, baseURL: `${gw.url}/v1`, maxRetries: 0 });
  const result = await openai.audio.transcriptions.create({ file: await toFile(AUDIO, 'speech.wav'), model: MODEL, language: 'en' });
  t.same(result, JSON.parse(ANSWER));
  const got = up.received[0]!;
  t.match(got.headers['content-type'], /^multipart\/form-data; boundary=/, 'the SDK’s own boundary reached llama-server');
  t.ok(got.body.includes(AUDIO), 'the file bytes, whole');
  t.ok(got.body.includes(`\r\n\r\n${MODEL}\r\n`), 'the model field');
});
