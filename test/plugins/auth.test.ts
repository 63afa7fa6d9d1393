// Who may call: Bearer or x-api-key, constant-time digest check, the original 401 body, and a
// refused request never reads its body and never reaches llama-server.
import net from 'node:net';
import t from 'tap';
import { KeyIndex } from '../../src/keys/key-index.js';
import { AUTH_A, KEY_A, KEY_B, chatBody, request, startGateway, within } from '../helpers.js';

const ORIGINAL_401 = { error: { message: 'Incorrect API key provided.', type: 'invalid_api_key', param: null, code: 'invalid_api_key' } };

t.test('missing or wrong key → 401 with the original body, upstream untouched', async (t) => {
  const gw = await startGateway(t);
  const cases: [string, Record<string, string>][] = [
    ['no key', {}],
    ['wrong Bearer key', { authorization: 'Bearer sk-wrong-0123456789abcdef' }],
    ['a prefix of a real key', { authorization: `Bearer ${KEY_A.slice(0, -1)}` }],
    ['the key with a suffix', { authorization: `Bearer ${KEY_A}x` }],
    ['empty Bearer', { authorization: 'Bearer ' }],
    ['Basic auth', { authorization: `Basic ${Buffer.from(`u:${KEY_A}`).toString('base64')}` }],
    ['key without the Bearer word', { authorization: KEY_A }],
    ['wrong x-api-key', { 'x-api-key': 'sk-wrong-0123456789abcdef' }],
  ];
  for (const [what, headers] of cases) {
    for (const [method, path] of [
      ['POST', '/v1/chat/completions'],
      ['GET', '/v1/models'],
    ] as const) {
      const res = await request(gw.port, {
        method,
        path,
        headers: { 'content-type': 'application/json', ...headers },
        body: method === 'POST' ? chatBody() : undefined,
      });
      t.equal(res.status, 401, `${what}, ${method} ${path}`);
      t.equal(res.headers['www-authenticate'], 'Bearer');
      t.equal(res.headers['content-type'], 'application/json; charset=utf-8');
      t.same(JSON.parse(res.text), ORIGINAL_401);
    }
  }
  t.equal(gw.fake.requests.length, 0, 'llama-server never saw a request');
});

t.test('right key: Bearer (any case of the word), x-api-key, second key', async (t) => {
  const gw = await startGateway(t);
  const ok: [string, Record<string, string>, string][] = [
    ['Bearer', AUTH_A, 'env-1'],
    ['bearer lowercase', { authorization: `bearer ${KEY_A}` }, 'env-1'],
    ['x-api-key (Anthropic clients)', { 'x-api-key': KEY_B }, 'env-2'],
    ['Authorization wins over a wrong x-api-key', { ...AUTH_A, 'x-api-key': 'sk-wrong-0123456789abcdef' }, 'env-1'],
  ];
  for (const [what, headers, id] of ok) {
    const res = await request(gw.port, { path: '/v1/models', headers });
    t.equal(res.status, 200, what);
    const line = gw.logs.filter((l) => l.msg === 'request').at(-1);
    t.equal(line?.key, id, `logged as ${id}`);
  }
  t.equal(gw.fake.requests.length, ok.length);
});

t.test('the request log names the key by position and never holds a key', async (t) => {
  const gw = await startGateway(t);
  await request(gw.port, { path: '/v1/chat/completions', headers: AUTH_A, body: chatBody() });
  await request(gw.port, { path: '/v1/chat/completions', headers: { authorization: `Bearer ${KEY_B}` }, body: chatBody() });
  await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { authorization: 'Bearer sk-attempted-guess-0123456789' },
    body: chatBody(),
  });
  const lines = gw.logs.filter((l) => l.msg === 'request');
  t.same(
    lines.map((l) => [l.key, l.status, l.method, l.url]),
    [
      ['env-1', 200, 'POST', '/v1/chat/completions'],
      ['env-2', 200, 'POST', '/v1/chat/completions'],
      [undefined, 401, 'POST', '/v1/chat/completions'],
    ],
  );
  for (const secret of [KEY_A, KEY_B, 'sk-attempted-guess-0123456789']) t.notMatch(gw.logText(), secret, 'no key in the log');
});

t.test('401 comes before the body is read: a huge declared body is never waited for', async (t) => {
  const gw = await startGateway(t);
  // Send only the head of a 100 MB request. If the gateway read bodies before auth, it would
  // wait for the body (or answer 413); it answers 401 at once and closes the connection.
  const answer = await within(
    new Promise<string>((resolve, reject) => {
      const socket = net.connect(gw.port, '127.0.0.1');
      let got = '';
      socket.on('data', (d: Buffer) => (got += d.toString('utf8')));
      socket.on('close', () => resolve(got));
      socket.on('error', reject);
      socket.write(
        'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n{"model":',
      );
    }),
    3000,
    'a 401 and a closed connection',
  );
  t.match(answer, /^HTTP\/1\.1 401 Unauthorized\r\n/);
  t.match(answer, /\r\nconnection: close\r\n/i, 'the connection is closed instead of draining the body');
  t.match(answer, /"Incorrect API key provided\."/);
  t.equal(gw.fake.requests.length, 0);
});

t.test('KeyIndex: digests only, constant-time comparison, replaceable', async (t) => {
  const index = KeyIndex.fromEnvKeys([KEY_A, KEY_B]);
  t.equal(index.size, 2);
  t.match(index.verify(KEY_A), { id: 'env-1', name: 'env-1', fromDb: false, enabled: true, expiresAt: null, models: null, origins: null });
  t.match(index.verify(KEY_B), { id: 'env-2' });
  t.equal(index.verify('sk-nope-0123456789abcdef'), undefined);
  t.equal(index.verify(''), undefined);
  t.notMatch(JSON.stringify(Object.values(index) as unknown[]), KEY_A);
  index.replace([]);
  t.equal(index.verify(KEY_A), undefined, 'a replaced index forgets old keys');
});
