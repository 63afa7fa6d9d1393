// PostgreSQL out of reach after a gateway started (a proxy of the test's own in front of it, cut:
// the machine's PostgreSQL keeps running): the keys keep working from memory as last loaded, a
// disabled key stays refused (auth never fails open), the loss and the return are each logged
// once, the admin API says the key database cannot be used; once the proxy is back, the gateway
// reloads (what changed meanwhile is seen) and later changes reach it again.
import t from 'tap';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { PgKeyStore } from '../../src/keys/pg-key-store.js';
import { startFakeLlama } from '../fixtures/fake-llama.js';
import { KEY_A, sleep, tempDir, until } from '../helpers.js';
import { pgSchema, startGatewayProcess } from './harness.js';
import { ADMIN_KEY, admin, keyAnswer, tcpProxy } from './pg-keys-helpers.js';

const BOUND_MS = 10_000;
const LOST = 'key database (PostgreSQL) unreachable';
const BACK = 'key database (PostgreSQL) reachable again';

const count = (text: string, what: string): number => text.split(what).length - 1;

t.test('PostgreSQL cut after start: keys work from memory, a disabled key stays refused, changes flow again when it returns', async (t) => {
  const fake = await startFakeLlama();
  t.teardown(() => fake.close());
  const url = await pgSchema(t);
  const direct = await PgKeyStore.open(url); // another gateway or the CLI, which still reaches PostgreSQL
  t.teardown(() => direct.close());
  const alice = await direct.create({ name: 'alice' });
  const bob = await direct.create({ name: 'bob', enabled: false });

  const dir = tempDir(t);
  const proxy = await tcpProxy(t, { host: '127.0.0.1', port: Number(new URL(url).port || 5432) });
  const gw = await startGatewayProcess(
    t,
    0,
    {
      LLM_UPSTREAM: fake.url,
      LLM_API_KEYS: KEY_A,
      GATEWAY_DATABASE_URL: proxy.via(url),
      GATEWAY_ADMIN_KEY: ADMIN_KEY,
      GATEWAY_DB: join(dir, 'never', 'gateway.db'),
      GATEWAY_USAGE_SPOOL: join(dir, 'spool'),
    },
    40_000,
  );
  t.same(await keyAnswer(gw.url, alice.key), { status: 200, code: null });
  t.same(await keyAnswer(gw.url, bob.key), { status: 401, code: 'key_disabled' });

  await proxy.cut();
  // The gateway notices at once (its LISTEN connection is gone) or at its next heartbeat.
  await until('the loss is logged', () => gw.output().includes(LOST), BOUND_MS, 20);
  t.same(await keyAnswer(gw.url, alice.key), { status: 200, code: null }, 'alice still works, from memory');
  t.same(await keyAnswer(gw.url, bob.key), { status: 401, code: 'key_disabled' }, 'bob is still refused: never fails open');
  t.same(await keyAnswer(gw.url, 'sk-unknown-0123456789abcdefghijkl'), { status: 401, code: 'invalid_api_key' });
  const refused = await admin(gw.url, 'POST', '/keys', { name: 'carol' });
  t.match(refused, { status: 500, body: { error: { code: 'db_unusable' } } }, 'the admin API cannot write: it says so');
  t.notMatch(JSON.stringify(refused.body), /postgres|127\.0\.0\.1/, 'without saying where');

  // Changed elsewhere while this gateway cannot see it: bob enabled.
  await direct.update('bob', { enabled: true });
  await sleep(1500); // a few of its retries and heartbeats
  t.same(await keyAnswer(gw.url, bob.key), { status: 401, code: 'key_disabled' }, 'unseen while cut: the last known state holds');
  t.equal(count(gw.output(), LOST), 1, 'the loss is logged once, not at every retry');

  await proxy.restore();
  const backMs = Date.now();
  await until(
    'bob enabled meanwhile is seen once PostgreSQL is back',
    async () => (await keyAnswer(gw.url, bob.key)).status === 200,
    BOUND_MS,
    20,
  );
  t.comment(`reloaded ${Date.now() - backMs} ms after the proxy came back`);
  await until('the return is logged', () => gw.output().includes(BACK), BOUND_MS, 20);
  t.equal(count(gw.output(), BACK), 1, 'and the return once');

  // Changes flow again: a key created elsewhere works here, one disabled elsewhere is refused here.
  const dave = await direct.create({ name: 'dave' });
  await until('a new key reaches the gateway', async () => (await keyAnswer(gw.url, dave.key)).status === 200, BOUND_MS, 20);
  await direct.update('alice', { enabled: false });
  await until('a disable reaches the gateway', async () => (await keyAnswer(gw.url, alice.key)).code === 'key_disabled', BOUND_MS, 20);
  const made = await admin(gw.url, 'POST', '/keys', { name: 'erin' });
  t.equal(made.status, 201, 'the admin API writes again');
  t.ok((await direct.get('erin')).enabled);
  // The last-used times gathered while cut were kept and written once it returned.
  await until('last-used times written', async () => (await direct.get('alice')).lastUsedAt !== null, BOUND_MS, 100);
  t.notMatch(gw.output(), /postgres:\/\//, 'the URL is never logged');
  t.notOk(existsSync(join(dir, 'never')), 'the SQLite file is not used (not even made) on PostgreSQL');
});
