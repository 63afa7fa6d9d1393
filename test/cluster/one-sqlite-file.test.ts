// Four gateway processes on one box sharing one SQLite GATEWAY_DB (as PM2 cluster mode runs them:
// the same .env, so the same file), without PostgreSQL. The file is in WAL mode with a busy
// timeout, so their writers take turns: a key made in the file (as `llm-gateway keys create` does)
// reaches every gateway, a key disabled there is refused by every gateway, and each request sent
// through any of them is one usage row, none lost and none doubled. Redis is left out on purpose:
// what is tested here is the file, not the shared counters.
import { join } from 'node:path';
import Database from 'better-sqlite3';
import t from 'tap';
import { KeyStore } from '../../src/keys/key-store.js';
import { startFakeLlama } from '../fixtures/fake-llama.js';
import { bearer, chatBody, request, tempDir, until } from '../helpers.js';
import { startGateways } from './harness.js';

const GATEWAYS = 4;
const PER_GATEWAY = 12;

/** The chat requests' usage rows (the key checks on /v1/models are rows too), by key. */
function usageRows(file: string): { total: number; byKey: Record<string, number> } {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const rows = db
      .prepare("SELECT key_name AS name, count(*) AS n FROM usage WHERE route = '/v1/chat/completions' GROUP BY key_name")
      .all() as { name: string; n: number }[];
    return { total: rows.reduce((sum, r) => sum + r.n, 0), byKey: Object.fromEntries(rows.map((r) => [r.name, r.n])) };
  } finally {
    db.close();
  }
}

t.test('4 gateway processes on one SQLite file: keys reach all, every request is one usage row', async (t) => {
  const fake = await startFakeLlama({ slots: 8 });
  t.teardown(() => fake.close());
  const file = join(tempDir(t, 'gw-one-file-'), 'gateway.db');
  const store = KeyStore.open(file);
  t.teardown(() => store.close());
  const alice = store.create({ name: 'alice' }).key;

  const gws = await startGateways(t, GATEWAYS, { env: { LLM_UPSTREAM: fake.url }, each: () => ({ GATEWAY_DB: file }), readyMs: 60_000 });

  // A key made while they run (what `llm-gateway keys create` does): every gateway takes it.
  const bob = store.create({ name: 'bob' }).key;
  for (const gw of gws) {
    await until(
      `gateway ${gw.index} knows bob`,
      async () => (await request(gw.port, { path: '/v1/models', headers: bearer(bob) })).status === 200,
      10_000,
      50,
    );
  }

  // Requests through each gateway at once, both keys, each on its own connection.
  const sends = gws.flatMap((gw) =>
    Array.from({ length: PER_GATEWAY }, (_, i) =>
      request(gw.port, {
        method: 'POST',
        path: '/v1/chat/completions',
        headers: { ...bearer(i % 2 === 0 ? alice : bob), 'content-type': 'application/json' },
        body: chatBody(),
      }),
    ),
  );
  const answers = await Promise.all(sends);
  t.same(
    answers.filter((a) => a.status !== 200).map((a) => `${a.status} ${a.text}`),
    [],
    'every request answered 200',
  );

  const sent = GATEWAYS * PER_GATEWAY;
  const rows = await until(
    'a usage row per request',
    () => {
      const r = usageRows(file);
      return r.total >= sent ? r : false;
    },
    15_000,
    100,
  );
  t.same(rows, { total: sent, byKey: { alice: sent / 2, bob: sent / 2 } }, 'one row per request, none lost, none doubled');

  // A key disabled in the file is refused by every gateway.
  store.update('bob', { enabled: false });
  for (const gw of gws) {
    await until(
      `gateway ${gw.index} refuses bob`,
      async () => (await request(gw.port, { path: '/v1/models', headers: bearer(bob) })).status === 401,
      10_000,
      50,
    );
  }

  // Stopped gracefully, none of them hit a locked database.
  for (const gw of gws) gw.child.kill('SIGTERM');
  const codes = await Promise.all(gws.map((gw) => gw.exit));
  t.same(codes, [0, 0, 0, 0], 'each stopped cleanly');
  for (const gw of gws) t.notMatch(gw.output(), /SQLITE_BUSY|database is locked/i, `gateway ${gw.index} never found the file locked`);
  t.equal(usageRows(file).total, sent, 'still one row per request after they stopped');
});
