// Remote media end to end, through the gateway to the fake llama-server: refused by default (data:
// URLs pass byte for byte), fetched and inlined with GATEWAY_REMOTE_MEDIA=fetch (what llama-server
// receives holds the data: URL, never the URL), a failed fetch answered before anything is
// forwarded, and "allow" forwarding the URL as sent.
import t from 'tap';
import { AUTH_A, request, startGateway, type Gateway } from '../helpers.js';
import { PNG, SECRET, TEST_NAMES, resolver, startMediaServer, type MediaServer } from './media-https.js';

const JSON_HEADERS = { ...AUTH_A, 'content-type': 'application/json' };

function chat(url: string): Record<string, unknown> {
  return {
    model: 'gpt-oss-20b',
    max_tokens: 4,
    messages: [
      {
        role: 'user',
        content: [
          { type: 'text', text: 'What is this?' },
          { type: 'image_url', image_url: { url } },
        ],
      },
    ],
  };
}

async function gateway(t: Parameters<typeof startGateway>[0], server: MediaServer, rule: 'refuse' | 'fetch' | 'allow'): Promise<Gateway> {
  const { resolve } = resolver(TEST_NAMES);
  return startGateway(t, { remoteMedia: rule }, {}, { mediaFetch: { treatAsPublic: ['127.0.0.1'], ca: server.ca, resolve } });
}

async function post(gw: Gateway, body: string): Promise<{ status: number; json: unknown }> {
  const res = await request(gw.port, { path: '/v1/chat/completions', headers: JSON_HEADERS, body });
  return { status: res.status, json: JSON.parse(res.text) as unknown };
}

t.test('default (refuse): a URL is a 400 naming its place; a data: URL is forwarded byte for byte', async (t) => {
  const server = await startMediaServer(t);
  const gw = await gateway(t, server, 'refuse');
  t.same(await post(gw, JSON.stringify(chat(server.url('/cat.png')))), {
    status: 400,
    json: {
      error: {
        message:
          "'messages[0].content[1].image_url.url' is a URL the model server would download; this API key may not send media by URL (remote media rule: refuse). Send the file inline instead: a data: URL (data:image/png;base64,…) or base64 data.",
        type: 'invalid_request_error',
        param: 'messages[0].content[1].image_url.url',
        code: 'remote_media_refused',
      },
    },
  });
  t.equal(gw.fake.requests.length, 0, 'nothing forwarded');
  t.equal(server.seen.length, 0, 'nothing fetched');
  const inline = JSON.stringify(chat(`data:image/png;base64,${PNG.toString('base64')}`));
  t.equal((await post(gw, inline)).status, 200);
  t.equal(gw.fake.requests[0]!.body.toString('utf8'), inline, 'a data: URL passes untouched');
});

t.test('fetch: the gateway downloads the image and llama-server gets it inline', async (t) => {
  const server = await startMediaServer(t);
  const gw = await gateway(t, server, 'fetch');
  t.equal((await post(gw, JSON.stringify(chat(server.url('/to-cat'))))).status, 200);
  t.same(JSON.parse(gw.fake.requests[0]!.body.toString('utf8')), chat(`data:image/png;base64,${PNG.toString('base64')}`));
  t.same(
    server.seen.map((s) => s.path),
    ['/to-cat', '/cat.png'],
  );
  // A body without media is not rewritten.
  const plain = JSON.stringify({ model: 'gpt-oss-20b', max_tokens: 4, messages: [{ role: 'user', content: 'hi' }] });
  t.equal((await post(gw, plain)).status, 200);
  t.equal(gw.fake.requests[1]!.body.toString('utf8'), plain);
});

t.test('fetch: a refused or failed fetch is a 400 before anything is forwarded', async (t) => {
  const server = await startMediaServer(t);
  const gw = await gateway(t, server, 'fetch');
  const failed = (host: string, reason: string): unknown => ({
    status: 400,
    json: {
      error: {
        message: `The gateway could not fetch the media at 'messages[0].content[1].image_url.url' (host ${host}): ${reason}. Send the file inline as a data: URL instead.`,
        type: 'invalid_request_error',
        param: 'messages[0].content[1].image_url.url',
        code: 'media_fetch_failed',
      },
    },
  });
  const host = `media.test:${server.port}`;
  t.same(
    await post(gw, JSON.stringify(chat('https://169.254.169.254/latest/meta-data/'))),
    failed(
      '169.254.169.254',
      'its address is not public (loopback, private, link-local or reserved); the gateway fetches only from the internet',
    ),
  );
  t.same(await post(gw, JSON.stringify(chat(server.url('/missing.png')))), failed(host, 'it answered HTTP 404'));
  t.same(await post(gw, JSON.stringify(chat(server.url('/page.html')))), failed(host, "its Content-Type is 'text/html', not image/*"));
  t.equal(gw.fake.requests.length, 0, 'nothing forwarded');
  t.notMatch(gw.logText(), SECRET, 'the remote answer is not logged either');
});

t.test('allow: the URL is forwarded as sent (the operator’s choice)', async (t) => {
  const server = await startMediaServer(t);
  const gw = await gateway(t, server, 'allow');
  const body = JSON.stringify(chat(server.url('/cat.png')));
  t.equal((await post(gw, body)).status, 200);
  t.equal(gw.fake.requests[0]!.body.toString('utf8'), body);
  t.equal(server.seen.length, 0, 'the gateway fetched nothing');
});
