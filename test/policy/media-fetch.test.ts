// The gateway's own fetch of remote media (src/policy/media-fetch.ts), against a local https server
// with a certificate made at test time: each guard refuses what it should (http, private and
// metadata addresses, directly, by name, through a redirect, by DNS rebinding; size, count, time,
// Content-Type, redirect loops), a good file is inlined, and no refusal quotes the remote answer.
import t, { type Test } from 'tap';
import { GatewayError } from '../../src/errors.js';
import { findRemoteMedia, type RemoteMedia } from '../../src/policy/media.js';
import { MAX_REDIRECTS, inlineRemoteMedia, isPublicAddress, type MediaFetchOptions } from '../../src/policy/media-fetch.js';
import type { RouteKind } from '../../src/usage/exchange.js';
import { PNG, SECRET, TEST_NAMES, WAV, resolver, startMediaServer, type MediaServer } from './media-https.js';

type Json = Record<string, unknown>;

function chat(...urls: string[]): Json {
  return {
    model: 'm',
    messages: [
      { role: 'system', content: 'Describe images.' },
      {
        role: 'user',
        content: [{ type: 'text', text: 'What is this?' }, ...urls.map((url) => ({ type: 'image_url', image_url: { url } }))],
      },
    ],
  };
}

function optionsFor(server: MediaServer, more: Partial<MediaFetchOptions> = {}): MediaFetchOptions & { asked: string[] } {
  const { resolve, asked } = resolver(TEST_NAMES);
  return { maxBytes: 4096, maxCount: 4, timeoutMs: 10_000, treatAsPublic: ['127.0.0.1'], ca: server.ca, resolve, asked, ...more };
}

async function inline(kind: RouteKind, json: Json, opts: MediaFetchOptions): Promise<Json> {
  return inlineRemoteMedia(json, findRemoteMedia(kind, json), opts);
}

/** The error body a client would get, parsed. */
async function refusal(t: Test, p: Promise<unknown>): Promise<{ message: string; type: string; param: string | null; code: string }> {
  try {
    await p;
  } catch (err) {
    if (!(err instanceof GatewayError)) throw err;
    t.equal(err.statusCode, 400);
    t.notMatch(err.body, SECRET, 'the remote answer is never quoted');
    return (JSON.parse(err.body) as { error: { message: string; type: string; param: string | null; code: string } }).error;
  }
  throw new Error('expected a refusal');
}

const PATH = 'messages[1].content[1].image_url.url';
const failed = (host: string, reason: string, param = PATH): unknown => ({
  message: `The gateway could not fetch the media at '${param}' (host ${host}): ${reason}. Send the file inline as a data: URL instead.`,
  type: 'invalid_request_error',
  param,
  code: 'media_fetch_failed',
});
const NOT_PUBLIC = 'its address is not public (loopback, private, link-local or reserved); the gateway fetches only from the internet';

t.test('a public https image is inlined as a data: URL; the client body is not changed', async (t) => {
  const server = await startMediaServer(t);
  const body = chat(server.url('/cat.png'));
  const before = JSON.stringify(body);
  const out = await inline('chat', body, optionsFor(server));
  t.same(out, chat(`data:image/png;base64,${PNG.toString('base64')}`));
  t.equal(JSON.stringify(body), before, 'the parse the client sent is untouched');
  t.equal((out.messages as Json[])[0], (body.messages as Json[])[0], 'untouched branches are shared, not copied');
  t.same(
    server.seen,
    [{ path: '/cat.png', host: `media.test:${server.port}` }],
    'one request, with the name as Host (SNI and certificate too)',
  );
});

t.test('a redirect to the same public host is followed; the same URL twice is fetched once', async (t) => {
  const server = await startMediaServer(t);
  const out = await inline('chat', chat(server.url('/to-cat'), server.url('/to-cat')), optionsFor(server));
  const data = `data:image/png;base64,${PNG.toString('base64')}`;
  t.same(out, chat(data, data));
  t.same(
    server.seen.map((s) => s.path),
    ['/to-cat', '/cat.png'],
  );
});

t.test('audio, Anthropic and Responses parts are written back in their own shapes', async (t) => {
  const server = await startMediaServer(t);
  const opts = optionsFor(server);
  const audio = {
    messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: { url: server.url('/voice.wav'), format: 'wav' } }] }],
  };
  t.same(await inline('chat', audio, opts), {
    messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: { format: 'wav', data: WAV.toString('base64') } }] }],
  });
  const anthropic = {
    max_tokens: 10,
    messages: [{ role: 'user', content: [{ type: 'image', source: { type: 'url', url: server.url('/cat.png') } }] }],
  };
  t.same(await inline('messages', anthropic, opts), {
    max_tokens: 10,
    messages: [
      { role: 'user', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: PNG.toString('base64') } }] },
    ],
  });
  const responses = { input: [{ role: 'user', content: [{ type: 'input_image', image_url: server.url('/cat.png') }] }] };
  t.same(await inline('responses', responses, opts), {
    input: [{ role: 'user', content: [{ type: 'input_image', image_url: `data:image/png;base64,${PNG.toString('base64')}` }] }],
  });
  // An image URL for an audio part: the Content-Type must fit the part.
  const wrongKind = { messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: { data: server.url('/cat.png') } }] }] };
  t.same(
    await refusal(t, inline('chat', wrongKind, opts)),
    failed(`media.test:${server.port}`, "its Content-Type is 'image/png', not audio/*", 'messages[0].content[0].input_audio.data'),
  );
});

t.test('http:// is refused before any connection, also when a redirect leads there', async (t) => {
  const server = await startMediaServer(t);
  const opts = optionsFor(server);
  t.same(
    await refusal(t, inline('chat', chat(`http://media.test:${server.port}/cat.png`), opts)),
    failed(`media.test:${server.port}`, 'only https:// URLs are fetched'),
  );
  t.equal(server.connections(), 0);
  t.same(
    await refusal(t, inline('chat', chat(server.url('/to-http')), opts)),
    failed(`media.test:${server.port}`, 'it redirects to a URL that is not https://'),
  );
  t.same(
    await refusal(t, inline('chat', chat(server.url('/to-metadata')), opts)),
    failed(`media.test:${server.port}`, 'it redirects to a URL that is not https://'),
  );
  t.same(
    server.seen.map((s) => s.path),
    ['/to-http', '/to-metadata'],
    'the http targets were never requested',
  );
});

t.test('loopback, private, link-local and metadata addresses are refused: as literals, by name, after a redirect', async (t) => {
  const server = await startMediaServer(t);
  const opts = optionsFor(server);
  const port = server.port;
  const refused = async (url: string, host: string): Promise<void> => {
    t.same(await refusal(t, inline('chat', chat(url), opts)), failed(host, NOT_PUBLIC), url);
  };
  // Without the test's exemption 127.0.0.1 is loopback, like any other.
  t.same(
    await refusal(t, inline('chat', chat(`https://127.0.0.1:${port}/cat.png`), optionsFor(server, { treatAsPublic: [] }))),
    failed(`127.0.0.1:${port}`, NOT_PUBLIC),
  );
  // Other spellings of loopback: the URL parser's normal form is what is checked.
  const strict = optionsFor(server, { treatAsPublic: [] });
  for (const [url, host] of <[string, string][]>[
    ['https://2130706433/', '127.0.0.1'],
    ['https://0x7f.1/', '127.0.0.1'],
    ['https://0177.0.0.1/', '127.0.0.1'],
    ['https://localhost/', 'localhost'],
  ])
    t.same(await refusal(t, inline('chat', chat(url), strict)), failed(host, NOT_PUBLIC), url);
  await refused(`https://[::ffff:127.0.0.1]:${port}/cat.png`, `[::ffff:7f00:1]:${port}`);
  await refused(`https://[::1]:${port}/cat.png`, `[::1]:${port}`);
  await refused('https://169.254.169.254/latest/meta-data/', '169.254.169.254');
  await refused('https://10.0.0.1/', '10.0.0.1');
  await refused('https://100.64.0.1/', '100.64.0.1');
  await refused('https://0.0.0.0/', '0.0.0.0');
  await refused('https://[fd12::1]/', '[fd12::1]');
  await refused(`https://private.test:${port}/cat.png`, `private.test:${port}`);
  await refused('https://metadata.test/latest/meta-data/', 'metadata.test');
  await refused('https://v6private.test/', 'v6private.test');
  // Every address of a name must be public, not just the first.
  await refused(`https://mixed.test:${port}/cat.png`, `mixed.test:${port}`);
  t.equal(server.connections(), 0, 'none of them was connected to');
  await refused(server.url('/to-private-ip'), `media.test:${port}`);
  await refused(server.url('/to-metadata-https'), `media.test:${port}`);
  await refused(server.url('/to-private-name'), `media.test:${port}`);
  t.same(
    server.seen.map((s) => s.path),
    ['/to-private-ip', '/to-metadata-https', '/to-private-name'],
  );
});

t.test('DNS rebinding: each connection checks the address it connects to', async (t) => {
  const server = await startMediaServer(t);
  const opts = optionsFor(server);
  // rebind.test answers 127.0.0.1 (public here) first, then 10.0.0.9: the redirect to the same name
  // is looked up again, checked again, and refused; the first connection went to what was checked.
  t.same(
    await refusal(t, inline('chat', chat(`https://rebind.test:${server.port}/to-self-rebind`), opts)),
    failed(`rebind.test:${server.port}`, NOT_PUBLIC),
  );
  t.same(opts.asked, ['rebind.test', 'rebind.test'], 'one lookup per connection, each checked');
  t.same(server.seen, [{ path: '/to-self-rebind', host: `rebind.test:${server.port}` }]);
});

t.test('size, count, time, type, status, encoding and redirect limits', async (t) => {
  const server = await startMediaServer(t);
  const opts = optionsFor(server);
  const host = `media.test:${server.port}`;
  t.same(
    await refusal(t, inline('chat', chat(server.url('/big.png')), opts)),
    failed(host, 'it is larger than 4096 bytes (GATEWAY_MEDIA_MAX_BYTES)'),
  );
  t.same(
    await refusal(t, inline('chat', chat(server.url('/declared-big.png')), opts)),
    failed(host, 'it is larger than 4096 bytes (GATEWAY_MEDIA_MAX_BYTES)'),
  );
  t.same(
    await refusal(t, inline('chat', chat(server.url('/page.html')), opts)),
    failed(host, "its Content-Type is 'text/html', not image/*"),
  );
  t.same(await refusal(t, inline('chat', chat(server.url('/no-type')), opts)), failed(host, 'its Content-Type is missing, not image/*'));
  t.same(
    await refusal(t, inline('chat', chat(server.url('/gzip.png')), opts)),
    failed(host, 'it was sent compressed (Content-Encoding), which the gateway does not unpack'),
  );
  t.same(await refusal(t, inline('chat', chat(server.url('/missing.png')), opts)), failed(host, 'it answered HTTP 404'));
  t.same(await refusal(t, inline('chat', chat(server.url('/no-location')), opts)), failed(host, 'it answered HTTP 302 without a Location'));
  server.seen.length = 0;
  t.same(await refusal(t, inline('chat', chat(server.url('/loop')), opts)), failed(host, `it redirects more than ${MAX_REDIRECTS} times`));
  t.equal(server.seen.length, MAX_REDIRECTS + 1, 'the first request and three redirects, then no more');
  // A short limit so the test does not wait; nothing is asserted about how long it took.
  t.same(
    await refusal(t, inline('chat', chat(server.url('/slow.png')), optionsFor(server, { timeoutMs: 200 }))),
    failed(host, 'it did not arrive within 0.2 s (GATEWAY_MEDIA_TIMEOUT_MS)'),
  );
  const before = server.connections();
  const five = chat(...[1, 2, 3, 4, 5].map((i) => server.url(`/cat.png?${i}`)));
  t.same(await refusal(t, inline('chat', five, opts)), {
    message:
      'This request has 5 media URLs; the gateway fetches at most 4 per request (GATEWAY_MEDIA_MAX_COUNT). Send the files inline as data: URLs instead.',
    type: 'invalid_request_error',
    param: null,
    code: 'too_many_media_urls',
  });
  t.equal(server.connections(), before, 'too many: nothing fetched');
});

t.test('a certificate that does not name the host is not accepted', async (t) => {
  const server = await startMediaServer(t);
  const { resolve } = resolver({ 'other.test': [['127.0.0.1']] });
  const opts = optionsFor(server, { resolve });
  t.same(
    await refusal(t, inline('chat', chat(`https://other.test:${server.port}/cat.png`), opts)),
    failed(`other.test:${server.port}`, 'its TLS certificate was not accepted'),
  );
  t.same(
    await refusal(t, inline('chat', chat(server.url('/cat.png')), optionsFor(server, { ca: undefined }))),
    failed(`media.test:${server.port}`, 'its TLS certificate was not accepted'),
    'a certificate no trusted CA signed',
  );
});

t.test('a client that leaves stops the fetches', async (t) => {
  const server = await startMediaServer(t);
  const gone = new AbortController();
  const p = inline('chat', chat(server.url('/slow.png')), optionsFor(server, { signal: gone.signal }));
  while (server.seen.length === 0) await new Promise((r) => setTimeout(r, 5));
  gone.abort();
  await t.rejects(p, { name: 'AbortError' });
  const none: readonly RemoteMedia[] = [];
  const json = chat();
  t.equal(await inlineRemoteMedia(json, none, optionsFor(server)), json, 'nothing found: the same body back');
});

t.test('isPublicAddress: the special-purpose ranges', async (t) => {
  const notPublic = [
    '0.0.0.0',
    '0.1.2.3',
    '10.1.2.3',
    '100.64.0.1',
    '100.127.255.255',
    '127.0.0.1',
    '127.255.255.254',
    '169.254.169.254',
    '172.16.0.1',
    '172.31.255.255',
    '192.0.0.8',
    '192.0.2.1',
    '192.88.99.1',
    '192.168.0.1',
    '198.18.0.1',
    '198.19.255.255',
    '198.51.100.7',
    '203.0.113.9',
    '224.0.0.1',
    '239.255.255.250',
    '240.0.0.1',
    '255.255.255.255',
    '::',
    '::1',
    '::127.0.0.1',
    '::ffff:127.0.0.1',
    '::ffff:7f00:1',
    '::ffff:10.0.0.1',
    '::ffff:169.254.169.254',
    '64:ff9b::a00:1',
    '64:ff9b::10.0.0.1',
    '64:ff9b:1::1',
    '100::1',
    'fc00::1',
    'fd12:3456::1',
    'fe80::1',
    'fe80::1%eth0',
    'fec0::1',
    'ff02::1',
    '2001::1',
    '2001:db8::1',
    '2002:7f00:1::1',
    '3fff::1',
    'not-an-ip',
    '',
  ];
  const isPublic = [
    '1.1.1.1',
    '8.8.8.8',
    '100.63.255.255',
    '100.128.0.1',
    '172.15.255.255',
    '172.32.0.1',
    '192.169.0.1',
    '198.20.0.1',
    '223.255.255.255',
    '::ffff:8.8.8.8',
    '64:ff9b::8.8.8.8',
    '2606:4700:4700::1111',
    '2a00:1450:4001::200e',
    '2001:4860:4860::8888',
  ];
  for (const ip of notPublic) t.notOk(isPublicAddress(ip), `${ip} is not public`);
  for (const ip of isPublic) t.ok(isPublicAddress(ip), `${ip} is public`);
  t.ok(isPublicAddress('127.0.0.1', ['127.0.0.1']), 'the test exemption');
  t.notOk(isPublicAddress('::ffff:127.0.0.1', ['127.0.0.1']), 'the exemption is exact: the mapped form is still loopback');
});
