// Bad input against a real llama-server (issue #12, item 4): every body llama-server would answer
// with a 500 and its parser's internals (or, nested deep enough, die of: SIGSEGV) gets the
// gateway's own 4xx in OpenAI's shape and never reaches llama-server; llama-server is still up
// afterwards. A control case shows what llama-server itself does with the same bytes.
import type { Test } from 'tap';
import t from 'tap';
import { MAX_ARRAY_ITEMS, MAX_JSON_DEPTH, MAX_MODEL_LENGTH } from '../../src/http/client-input.js';
import { AUTH_A, rawExchange, request } from '../helpers.js';
import { skipTier, startRealGateway, type RealGateway } from './llama.js';

const JSON_CT = { 'content-type': 'application/json' };

/** What llama-server logs when a request reached it: a task, or a request it could not parse. */
const REACHED = /processing task|got exception|parse_error/;

function chat(extra = ''): string {
  return `{"model":"gpt-oss-20b","max_tokens":4,"temperature":0,"messages":[{"role":"user","content":"hi"}]${extra}}`;
}

function withBytes(bytes: number[]): Buffer {
  return Buffer.concat([
    Buffer.from('{"model":"gpt-oss-20b","max_tokens":4,"temperature":0,"messages":[{"role":"user","content":"hi '),
    Buffer.from(bytes),
    Buffer.from('"}]}'),
  ]);
}

function deepSchema(depth: number): string {
  return chat(
    `,"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":${'{"type":"object","properties":{"a":'.repeat(depth)}{"type":"string"}${'}}'.repeat(depth)}}}`,
  );
}

async function healthy(gw: RealGateway): Promise<boolean> {
  try {
    const res = await fetch(`${gw.llama.url}/health`);
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

/** Sends `body`, expects the gateway's `status`/`code` in OpenAI's shape, and nothing upstream. */
async function refused(
  t: Test,
  gw: RealGateway,
  what: string,
  body: string | Buffer | undefined,
  status: number,
  code: string,
  headers: Record<string, string> = JSON_CT,
): Promise<void> {
  const from = gw.llama.log().length;
  const res = await request(gw.port, {
    method: 'POST',
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, ...headers },
    ...(body === undefined ? {} : { body }),
  });
  t.equal(res.status, status, `${what}: ${status}`);
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8');
  const parsed = JSON.parse(res.text) as { error?: Record<string, unknown> };
  t.match(parsed, { error: { type: 'invalid_request_error', code, message: String } }, `${what}: OpenAI-shaped`);
  t.same(Object.keys(parsed.error ?? {}).sort(), ['code', 'message', 'param', 'type']);
  t.notMatch(res.text, /json\.exception|parse_error/, `${what}: no llama-server parser internals`);
  await new Promise((r) => setTimeout(r, 50));
  t.notMatch(gw.llama.log().slice(from), REACHED, `${what}: never reached llama-server`);
}

t.test('bad bodies get the gateway 4xx, never a llama-server 500; llama-server stays up', async (t) => {
  if (skipTier(t)) return;
  const gw = await startRealGateway(t, { bodyLimit: 4 << 20 });

  // Control: the same invalid UTF-8 straight to llama-server is its 500 with parser internals.
  const direct = await fetch(`${gw.llama.url}/v1/chat/completions`, { method: 'POST', headers: JSON_CT, body: withBytes([0xff]) });
  t.equal(direct.status, 500, 'llama-server itself: 500');
  t.match(await direct.text(), 'json.exception.parse_error');
  await gw.llama.waitForLog(REACHED); // the log shows it reached llama-server (the check below relies on this)
  t.pass('llama-server logged the request it could not parse');

  for (const [what, bytes] of [
    ['0xFF', [0xff]],
    ['a lone 0x80', [0x80]],
    ['overlong 0xC0 0xAF', [0xc0, 0xaf]],
    ['a truncated sequence', [0xe2, 0x82]],
  ] as const) {
    await refused(t, gw, `invalid UTF-8: ${what}`, withBytes([...bytes]), 400, 'invalid_json');
  }
  await refused(
    t,
    gw,
    'a truncated sequence at the very end',
    Buffer.concat([Buffer.from(chat()), Buffer.from([0xe2, 0x82])]),
    400,
    'invalid_json',
  );
  await refused(t, gw, 'broken JSON', '{"messages":[{"role":"user","content":"hi"}', 400, 'invalid_json');
  await refused(t, gw, 'not JSON', 'hello', 400, 'invalid_json');
  await refused(t, gw, 'a JSON array', '[1,2]', 400, 'invalid_json');
  await refused(t, gw, 'a JSON string', '"hi"', 400, 'invalid_json');
  await refused(t, gw, 'null', 'null', 400, 'invalid_json');
  await refused(t, gw, 'an empty body', '', 400, 'missing_body');
  await refused(t, gw, 'a body over the limit', `{"p":"${'x'.repeat(5 << 20)}"}`, 413, 'request_too_large');
  await refused(
    t,
    gw,
    `a ${MAX_MODEL_LENGTH + 44}-character model`,
    chat(`,"model2":1`).replace('"gpt-oss-20b"', JSON.stringify('m'.repeat(MAX_MODEL_LENGTH + 44))),
    400,
    'string_above_max_length',
  );
  await refused(t, gw, 'a model that is a number', chat().replace('"gpt-oss-20b"', '5'), 400, 'invalid_type');
  await refused(
    t,
    gw,
    `nesting ${MAX_JSON_DEPTH + 1} levels`,
    chat(`,"x":${'['.repeat(MAX_JSON_DEPTH)}${']'.repeat(MAX_JSON_DEPTH)}`),
    400,
    'json_too_deep',
  );
  await refused(t, gw, 'nesting 10,000 levels', chat(`,"x":${'['.repeat(10_000)}${']'.repeat(10_000)}`), 400, 'json_too_deep');
  await refused(
    t,
    gw,
    'nesting 10,000 levels, streamed with stream_options',
    chat(`,"stream":true,"stream_options":{"include_usage":false},"x":${'['.repeat(10_000)}${']'.repeat(10_000)}`),
    400,
    'json_too_deep',
  );
  // llama-server dies (SIGSEGV) on this one and on a 1,000,000-level body (measured on this build).
  await refused(t, gw, 'a json_schema 10,000 levels deep', deepSchema(10_000), 400, 'json_too_deep');
  await refused(t, gw, 'nesting 1,000,000 levels', chat(`,"x":${'['.repeat(1_000_000)}${']'.repeat(1_000_000)}`), 400, 'json_too_deep');
  // Found by the red team: valid to Node, a 500 with parser internals from llama-server.
  await refused(t, gw, 'a lone surrogate escape', chat().replace('"hi"', '"\\ud800"'), 400, 'invalid_json');
  await refused(t, gw, 'a lone low surrogate in a key', chat(`,"\\udfff":1`), 400, 'invalid_json');
  await refused(t, gw, 'a number beyond a double', chat(',"top_p":1e400'), 400, 'invalid_json');
  await refused(
    t,
    gw,
    `${MAX_ARRAY_ITEMS + 1} inputs`,
    chat(`,"input":[${'"a",'.repeat(MAX_ARRAY_ITEMS)}"a"]`),
    400,
    'array_above_max_length',
  );
  t.ok(await healthy(gw), 'llama-server is still up');
  const paired = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, ...JSON_CT },
    body: chat().replace('"hi"', '"\\ud83d\\ude00 1e30"'),
  });
  t.equal(paired.status, 200, 'a surrogate pair (an emoji) and an ordinary exponent pass');

  // What the limits let through still works end to end.
  const atLimit = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, ...JSON_CT },
    body: chat(`,"x":${'['.repeat(MAX_JSON_DEPTH - 1)}${']'.repeat(MAX_JSON_DEPTH - 1)}`),
  });
  t.equal(atLimit.status, 200, `${MAX_JSON_DEPTH} levels reach llama-server and are answered`);
  const longModel = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, ...JSON_CT },
    body: chat().replace('"gpt-oss-20b"', JSON.stringify('m'.repeat(MAX_MODEL_LENGTH))),
  });
  t.equal(longModel.status, 200, `a ${MAX_MODEL_LENGTH}-character model is forwarded`);
  const utf8 = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { ...AUTH_A, ...JSON_CT },
    body: chat().replace('"hi"', '"héllo ✓ 🙂"'),
  });
  t.equal(utf8.status, 200, 'valid multi-byte UTF-8 is forwarded');
});

t.test('malformed HTTP gets an OpenAI-shaped answer and never reaches llama-server', async (t) => {
  if (skipTier(t)) return;
  const gw = await startRealGateway(t);
  const from = gw.llama.log().length;
  for (const [what, bytes, status, code] of [
    [
      'a header line without a colon',
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH_A.authorization}\r\nBad Header\r\n\r\n`,
      400,
      'malformed_request',
    ],
    [
      'a broken chunked body',
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH_A.authorization}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n${chat()}\r\n0\r\n\r\n`,
      400,
      'malformed_request',
    ],
    [
      'headers over the limit',
      `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: ${AUTH_A.authorization}\r\nX-Big: ${'a'.repeat(20_000)}\r\n\r\n`,
      431,
      'headers_too_large',
    ],
    [
      'no Host',
      `POST /v1/chat/completions HTTP/1.1\r\nAuthorization: ${AUTH_A.authorization}\r\nContent-Type: application/json\r\nContent-Length: ${chat().length}\r\n\r\n${chat()}`,
      400,
      'missing_host',
    ],
  ] as const) {
    const answer = await rawExchange(gw.port, bytes);
    const [head, body] = answer.split('\r\n\r\n') as [string, string];
    t.match(head, new RegExp(`^HTTP/1.1 ${status} `), what);
    t.match(head.toLowerCase(), /\r\nconnection: close/, `${what}: the connection closes`);
    t.match(JSON.parse(body) as unknown, { error: { type: 'invalid_request_error', param: null, code } }, `${what}: OpenAI-shaped`);
  }
  await new Promise((r) => setTimeout(r, 50));
  t.notMatch(gw.llama.log().slice(from), REACHED, 'none reached llama-server');
});
