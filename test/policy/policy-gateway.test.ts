// The request policy through a real gateway and the fake llama-server: what the client gets back
// and what llama-server receives (the recorded body), for each rule, with the defaults and with a
// key's own policy from the key database.
import { test } from 'tap';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { AUTH_A, bearer, request, startGateway, tempStore, type Gateway } from '../helpers.js';

const CHAT = '/v1/chat/completions';

interface Err {
  error: { message: string; param: string | null; code: string };
}

function post(gw: Gateway, body: string, headers: Record<string, string> = AUTH_A, path = CHAT) {
  return request(gw.port, { path, headers: { ...headers, 'content-type': 'application/json' }, body });
}

const error = (message: string, code: string, param: string | null, type = 'invalid_request_error'): unknown => ({
  error: { message, type, param, code },
});

/** The bodies llama-server received on `path`, as text. */
const received = (gw: Gateway, path = CHAT): string[] => gw.fake.requests.filter((r) => r.url === path).map((r) => r.body.toString('utf8'));

test('the cap: a body within it is forwarded byte for byte; one without max_tokens gets it', async (t) => {
  const gw = await startGateway(t, { maxTokens: 16 });
  const within = '{ "model":"m", "messages":[{"role":"user","content":"Hi"}], "temperature":0.10, "max_tokens": 16 }';
  t.equal((await post(gw, within)).status, 200);
  const over = '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":4096, "n_predict": -1}';
  t.equal((await post(gw, over)).status, 200);
  const none = '{"messages":[{"role":"user","content":"Hi"}]}';
  t.equal((await post(gw, none)).status, 200);
  t.same(received(gw), [
    within,
    '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":16, "n_predict": 16}',
    '{"messages":[{"role":"user","content":"Hi"}],"max_tokens":16}',
  ]);
  const emb = '{"input":"hello","max_tokens":99999}';
  t.equal((await post(gw, emb, AUTH_A, '/v1/embeddings')).status, 200);
  t.same(received(gw, '/v1/embeddings'), [emb], 'embeddings generate nothing: untouched');
});

test('refused parameters: 403 naming the parameter and the rule, nothing sent upstream', async (t) => {
  const gw = await startGateway(t);
  const res = await post(gw, '{"messages":[{"role":"user","content":"Hi"}],"id_slot":0}');
  t.equal(res.status, 403);
  t.equal(res.headers['content-type'], 'application/json; charset=utf-8');
  t.same(
    JSON.parse(res.text),
    error(
      "This API key may not use the parameter 'id_slot' (parameter policy: GATEWAY_PARAM_POLICY or the key's policy); remove it from the request.",
      'param_not_allowed',
      'id_slot',
    ),
  );
  const probs = await post(gw, '{"prompt":"a","n_probs":1000}', AUTH_A, '/v1/completions');
  t.same(
    JSON.parse(probs.text),
    error(
      "This API key may not set 'n_probs' above 20 (parameter policy: GATEWAY_PARAM_POLICY or the key's policy).",
      'param_not_allowed',
      'n_probs',
    ),
  );
  t.equal(gw.fake.requests.length, 0, 'llama-server saw none of them');
});

test("a key's own policy from the key database wins over the defaults", async (t) => {
  const store = tempStore(t);
  const { key } = store.create({ name: 'slots', policy: { params: { id_slot: 'allow', n_probs: 'remove' }, max_tokens: 5 } });
  const { key: plain } = store.create({ name: 'plain' });
  const gw = await startGateway(
    t,
    { maxTokens: 1000, paramPolicy: { temperature: 'remove' } },
    {},
    { registry: new KeyRegistry([], store) },
  );
  const m = '"messages":[{"role":"user","content":"Hi"}]';
  t.equal((await post(gw, `{${m},"id_slot":1,"n_probs":99,"temperature":1,"max_tokens":50}`, bearer(key))).status, 200);
  t.equal((await post(gw, `{${m},"id_slot":1}`, bearer(plain))).status, 403, 'another key keeps the defaults');
  t.equal((await post(gw, `{${m},"temperature":1,"max_tokens":50}`, bearer(plain))).status, 200);
  t.same(received(gw), [`{${m},"id_slot":1,"max_tokens":5}`, `{${m},"max_tokens":50}`]);
});

test('remote media: an http(s) URL is refused by default, a data: URL passes', async (t) => {
  const gw = await startGateway(t);
  const image = (url: string): string =>
    JSON.stringify({
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is this?' },
            { type: 'image_url', image_url: { url } },
          ],
        },
      ],
    });
  const res = await post(gw, image('http://169.254.169.254/latest/meta-data/'));
  t.equal(res.status, 400);
  t.same((JSON.parse(res.text) as Err).error.code, 'remote_media_refused');
  t.same((JSON.parse(res.text) as Err).error.param, 'messages[0].content[1].image_url.url');
  t.match((JSON.parse(res.text) as Err).error.message, /data: URL/);
  const data = image('data:image/png;base64,iVBORw0KGgo=');
  t.equal((await post(gw, data)).status, 200);
  t.same(received(gw), [data], 'only the data: URL reached llama-server, as sent');

  const open = await startGateway(t, { remoteMedia: 'allow' });
  const url = image('https://example.com/cat.png');
  t.equal((await post(open, url)).status, 200, "allow: the operator's choice");
  t.same(received(open), [url]);
});

test('prompt size: bytes at once; tokens counted by llama-server only when the bytes could exceed', async (t) => {
  const gw = await startGateway(t, { maxPromptBytes: 200, maxPromptTokens: 30 });
  const big = JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(200) }] });
  const res = await post(gw, big);
  t.equal(res.status, 400);
  t.same(
    JSON.parse(res.text),
    error(
      `The request is ${big.length} bytes; this API key may send prompts of at most 200 bytes (max_prompt_bytes: the key's policy or GATEWAY_MAX_PROMPT_BYTES).`,
      'prompt_too_large',
      null,
    ),
  );
  // The fake counts 28 + one token per word for a chat prompt.
  const small = '{"messages":[{"role":"user","content":"Hi"}]}'; // 45 bytes > 30: counted, 29 tokens
  t.equal((await post(gw, small)).status, 200);
  const five = '{"messages":[{"role":"user","content":"one two three"}]}'; // 31 tokens
  const refused = await post(gw, five);
  t.equal(refused.status, 400);
  t.same(
    JSON.parse(refused.text),
    error(
      "The prompt is 31 tokens; this API key may send prompts of at most 30 tokens (max_prompt_tokens: the key's policy or GATEWAY_MAX_PROMPT_TOKENS).",
      'prompt_too_large',
      null,
    ),
  );
  t.same(
    gw.fake.requests.map((r) => r.url),
    ['/v1/chat/completions/input_tokens', CHAT, '/v1/chat/completions/input_tokens'],
    'each counted once; the refused one never generated',
  );

  const tiny = await startGateway(t, { maxPromptTokens: 1000 });
  t.equal((await post(tiny, small)).status, 200);
  t.same(
    tiny.fake.requests.map((r) => r.url),
    [CHAT],
    'fewer bytes than the limit: no count at all',
  );

  const ids = await startGateway(t, { maxPromptTokens: 3 });
  const r = await post(ids, '{"prompt":[1,2,3,4]}', AUTH_A, '/v1/completions');
  t.equal((JSON.parse(r.text) as Err).error.code, 'prompt_too_large', 'token ids: known without asking llama-server');
  t.equal(ids.fake.requests.length, 0);
});

test("remote media 'fetch': the gateway fetches (or refuses) before anything reaches llama-server", async (t) => {
  const store = tempStore(t);
  const { key } = store.create({ name: 'fetcher', policy: { remote_media: 'fetch' } });
  const gw = await startGateway(t, {}, {}, { registry: new KeyRegistry([], store) });
  const body = JSON.stringify({
    messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://127.0.0.1:9/cat.png' } }] }],
  });
  const res = await post(gw, body, bearer(key));
  t.equal(res.status, 400);
  const err = (JSON.parse(res.text) as { error: { code: string; param: string } }).error;
  t.same(
    [err.code, err.param],
    ['media_fetch_failed', 'messages[0].content[0].image_url.url'],
    "the key's rule: fetched, and plain http is not",
  );
  t.equal(gw.fake.requests.length, 0);
});
