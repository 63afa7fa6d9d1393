// Red team of issue #15's budgets and alerts (helper "redteam2"): a key holder and an unlucky
// operator against the fake llama-server. Each test names the problem it proves fixed, or what held.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import type { KeyBudgets } from '../../src/keys/key-budgets.js';
import type { KeyStore } from '../../src/keys/key-store.js';
import {
  KEY_A,
  bearer,
  chatBody,
  request,
  startGateway,
  tempStore,
  until,
  type Gateway,
  type RawResponse,
  type Teardown,
} from '../helpers.js';

const ADMIN = 'adm-0123456789abcdefghijklmnopqrstuvwxyz';

interface Rig {
  gw: Gateway;
  store: KeyStore;
  registry: KeyRegistry;
  keyId: string;
  auth: Record<string, string>;
}

async function rig(
  t: Teardown,
  budgets: KeyBudgets | null,
  overrides: Parameters<typeof startGateway>[1] = {},
  behavior: Parameters<typeof startGateway>[2] = {},
): Promise<Rig> {
  const store = tempStore(t);
  const { record, key } = store.create({ name: 'alice', budgets });
  const registry = new KeyRegistry([KEY_A], store);
  const gw = await startGateway(t, { adminKey: ADMIN, ...overrides }, behavior, { registry, usageFlushMs: 20 });
  return { gw, store, registry, keyId: record.id, auth: bearer(key) };
}

const chat = (r: Rig, headers: Record<string, string> = {}, body = chatBody()): Promise<RawResponse> =>
  request(r.gw.port, { path: '/v1/chat/completions', headers: { ...r.auth, 'content-type': 'application/json', ...headers }, body });

const held = (r: Rig): number => r.gw.app.budgets.state(r.keyId, r.store.get(r.keyId).budgets!, Date.now()).periods[0]!.held;

t.test('held: an upstream error gives its hold back', async (t) => {
  const r = await rig(t, { day: 1_000_000 }, {}, { failWith: { status: 500, body: '{"error":{"message":"boom"}}' } });
  const res = await chat(r);
  t.equal(res.status, 500);
  await until('hold released', () => held(r) === 0 || undefined);
  t.pass();
});

t.test('per-user budgets: no SQL scan and no memory per made-up end user id (seed once per key and period)', async (t) => {
  const r = await rig(t, { month: 1_000_000, per_user: { day: 39, week: 2000, month: 3000 } });
  const store = r.gw.app.usageStore!;
  const queries: string[] = [];
  const own = store.tokensSince.bind(store);
  const grouped = store.tokensByUserSince.bind(store);
  store.tokensSince = (keyId, since, user = null) => {
    queries.push(`key ${user ?? '-'}`);
    return own(keyId, since, user);
  };
  store.tokensByUserSince = (keyId, since) => {
    queries.push('users');
    return grouped(keyId, since);
  };
  for (let i = 0; i < 10; i++) {
    const models = await request(r.gw.port, { path: '/v1/models', headers: { ...r.auth, 'x-openwebui-user-id': `light-${i}` } });
    t.equal(models.status, 200);
  }
  for (let i = 0; i < 10; i++) t.equal((await chat(r, { 'x-openwebui-user-id': `user-${i}` })).status, 200);
  t.same(queries, ['key -', 'users', 'users', 'users'], 'the key month once, every user of each period in one query');
  // The grouped seed still counts: user-0 spent their day (39 tokens), others not.
  await until('user-0 settled', () => r.gw.app.budgets.admit(r.store.get(r.keyId), 'user-0', 'probe', 0, Date.now()).refusal);
  t.equal((await chat(r, { 'x-openwebui-user-id': 'user-0' })).status, 429, 'user-0 spent their day');
  t.equal((await chat(r, { 'x-openwebui-user-id': 'user-new' })).status, 200, 'a new user has their own day');
});

t.test('per-user counts survive a restart through the grouped seed, written and pending records once', async (t) => {
  const store = tempStore(t);
  const { record, key } = store.create({ name: 'alice', budgets: { per_user: { day: 3 * 39 } } });
  const registry = new KeyRegistry([KEY_A], store);
  const one = await startGateway(t, { adminKey: ADMIN }, {}, { registry, usageFlushMs: 20 });
  const send = (gw: Gateway, user: string): Promise<RawResponse> =>
    request(gw.port, {
      path: '/v1/chat/completions',
      headers: { ...bearer(key), 'content-type': 'application/json', 'x-openwebui-user-id': user },
      body: chatBody(),
    });
  t.equal((await send(one, 'ann')).status, 200);
  t.equal((await send(one, 'ann')).status, 200);
  t.equal((await send(one, 'ben')).status, 200);
  await one.app.close();
  const two = await startGateway(t, { adminKey: ADMIN }, {}, { registry, usageFlushMs: 60_000 });
  const third = await send(two, 'ann');
  t.equal(third.status, 200, 'ann: 78 of 117 before the restart');
  await until('ann pending', () => two.app.usage!.pendingTokens(record.id, 0, 'ann') === 39 || undefined);
  t.equal((await send(two, 'ann')).status, 429, 'ann spent her day across the restart');
  t.equal((await send(two, 'ben')).status, 200, 'ben: 39 of 117');
  t.equal((await send(two, 'cat')).status, 200, 'cat: new');
});

t.test('held: a client that leaves while queued, and a request refused for its tasks, give their holds back', async (t) => {
  const r = await rig(t, { day: 1_000_000 }, { maxInflight: 1 }, { chunkDelayMs: 100, extraContentChunks: 20 });
  const first = chat(r, {}, chatBody({ stream: true }));
  await until('first running', () => r.gw.fake.requests.length === 1 || undefined);
  const h1 = held(r);
  const http = await import('node:http');
  const req = http.request({
    host: '127.0.0.1',
    port: r.gw.port,
    path: '/v1/chat/completions',
    method: 'POST',
    headers: { ...r.auth, 'content-type': 'application/json' },
  });
  req.on('error', () => {});
  req.end(chatBody());
  await until(
    'two holds',
    () => r.gw.app.budgets.state(r.keyId, r.store.get(r.keyId).budgets!, Date.now()).periods[0]!.held > h1 || undefined,
  );
  req.destroy();
  await first;
  await until('holds released', () => held(r) === 0 || undefined);
  const many = await chat(r, {}, chatBody({ n: 5 }));
  t.equal(many.status, 400);
  await until('holds released after too_many_tasks', () => held(r) === 0 || undefined);
  t.comment(`used ${r.gw.app.budgets.state(r.keyId, r.store.get(r.keyId).budgets!, Date.now()).periods[0]!.used}`);
});

t.test('held: with GATEWAY_USAGE off a hold ends with its response', async (t) => {
  const r = await rig(t, { day: 1_000_000 }, { usage: false });
  t.equal((await chat(r)).status, 200);
  await until('released', () => held(r) === 0 || undefined);
  t.pass();
});

t.test("README's receiver check verifies a real alert (non-ASCII end user); the secret is never in logs or /metrics", async (t) => {
  const { startReceiver, SECRET } = await import('../alerts/receiver.js');
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const alerts = readme.slice(readme.indexOf('### Alerts'));
  const snippet = /```js\n([\s\S]*?)```/.exec(alerts)![1]!;
  const dir = mkdtempSync(join(tmpdir(), 'rt2-readme-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'verify.mjs'), `${snippet}\nexport { verified };\n`);
  const { verified } = (await import(join(dir, 'verify.mjs'))) as { verified: (h: unknown, raw: string, s: string) => boolean };

  const receiver = await startReceiver(t, [500, 200]);
  const r = await rig(
    t,
    { day: 40, mode: 'soft', per_user: { day: 40 } },
    { webhookUrl: receiver.url, webhookSecret: SECRET, budgetWarnAt: [80, 100] },
  );
  const body = chatBody({ user: 'Zoë 🙂' });
  for (let i = 0; i < 4; i++) t.equal((await chat(r, {}, body)).status, 200, 'soft: never refused');
  await until('4 alerts delivered', () => (r.gw.app.webhook!.counts.delivered === 4 ? true : undefined));
  const got = receiver.received;
  const kinds = got.map((g) => `${g.json.type} ${(g.json.data.user as string | undefined) ?? '-'} ${g.json.data.percent as number}`);
  t.same(
    [...new Set(kinds)].sort(),
    ['budget.warning - 100', 'budget.warning - 80', 'budget.warning Zoë 🙂 100', 'budget.warning Zoë 🙂 80'],
    'once per key/user, level and period, however often the key hammers at the edge',
  );
  for (const g of got) t.ok(verified(g.headers['x-gateway-signature'], g.body, SECRET), `README check verifies ${g.json.id}`);
  t.notOk(verified(got[0]!.headers['x-gateway-signature'], got[0]!.body.replace('"used":', '"used": '), SECRET), 'a changed body does not');
  const metrics = await request(r.gw.port, { path: '/metrics', headers: { authorization: `Bearer ${ADMIN}` } });
  t.notOk(metrics.text.includes(SECRET), '/metrics');
  t.notOk(r.gw.logText().includes(SECRET), 'logs');
});

t.test(
  "GATEWAY_BUDGET_TZ keeps the operator's zone name (Asia/Kolkata, not ICU's Asia/Calcutta); admin API refuses odd budgets",
  async (t) => {
    const r = await rig(t, { month: 1000 }, { budgetTz: 'Asia/Kolkata' });
    const patch = (budgets: unknown): Promise<RawResponse> =>
      request(r.gw.port, {
        method: 'PATCH',
        path: `/admin/keys/${r.keyId}`,
        headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
        body: JSON.stringify({ budgets }),
      });
    for (const bad of [
      { day: -1 },
      { day: 0 },
      { day: 1.5 },
      { day: '100' },
      { day: 1e300 },
      { per_user: { per_user: {} } },
      { per_user: { mode: 'soft' } },
      { mode: 'HARD' },
      [],
    ])
      t.equal((await patch(bad)).status, 400, JSON.stringify(bad));
    t.match(JSON.parse((await patch({ day: 1e300 })).text), { error: { param: 'budgets.day', message: /whole number of tokens/ } });
    t.same(r.store.get(r.keyId).budgets, { month: 1000 }, 'nothing stored');
    const shown = await request(r.gw.port, { path: `/admin/keys/${r.keyId}`, headers: { authorization: `Bearer ${ADMIN}` } });
    const state = (JSON.parse(shown.text) as { budget_state: { tz: string; periods: { resets_at: string }[] } }).budget_state;
    t.equal(state.tz, 'Asia/Kolkata');
    t.match(state.periods[0]!.resets_at, /T18:30:00\.000Z$/, 'the month resets at midnight in Kolkata (18:30 UTC)');

    const { SETTINGS, readSetting } = await import('../../src/config.js');
    t.throws(() => readSetting(SETTINGS.budgetTz, { GATEWAY_BUDGET_TZ: 'Etc/GMT+14' }), { message: /IANA time zone.*"Etc\/GMT\+14"/ });
    t.equal(readSetting(SETTINGS.budgetTz, { GATEWAY_BUDGET_TZ: 'Etc/GMT-14' }), 'Etc/GMT-14');
    const { budgetLines, budgetStates } = await import('../../src/cli/key-budgets-view.js');
    const before = process.env.GATEWAY_BUDGET_TZ;
    process.env.GATEWAY_BUDGET_TZ = 'Asia/Kolkata';
    t.teardown(() => {
      if (before === undefined) delete process.env.GATEWAY_BUDGET_TZ;
      else process.env.GATEWAY_BUDGET_TZ = before;
    });
    const lines = budgetLines(budgetStates(r.store.db, [r.store.get(r.keyId)]).get(r.keyId));
    t.match(
      lines,
      /budgets: {4}hard \(Asia\/Kolkata\)\n {2}month 0 of 1,000 tokens used \(0%\), 1,000 left; resets \d{4}-\d\d-01T00:00:00\+05:30/,
    );
  },
);

t.test('held: a stream abandoned mid-way is billed and its hold released; per-user budgets never exceed the key budget', async (t) => {
  const r = await rig(t, { day: 1_000_000, per_user: { day: 1_000_000 } }, {}, { chunkDelayMs: 50, extraContentChunks: 40 });
  const http = await import('node:http');
  await new Promise<void>((resolve) => {
    const req = http.request(
      {
        host: '127.0.0.1',
        port: r.gw.port,
        path: '/v1/chat/completions',
        method: 'POST',
        headers: { ...r.auth, 'content-type': 'application/json' },
      },
      (res) => {
        let n = 0;
        res.on('data', () => {
          if (++n === 3) {
            req.destroy();
            resolve();
          }
        });
      },
    );
    req.on('error', () => {});
    req.end(chatBody({ stream: true, user: 'dan' }));
  });
  await until(
    'released and billed',
    () => (held(r) === 0 && r.gw.app.budgets.state(r.keyId, r.store.get(r.keyId).budgets!, Date.now()).periods[0]!.used > 0) || undefined,
  );
  t.pass('an abandoned stream is billed (estimated) and holds nothing');

  const k = await rig(t, { day: 39, per_user: { day: 1000 } });
  t.equal((await chat(k, { 'x-openwebui-user-id': 'a' })).status, 200);
  await until('settled', () => k.gw.app.budgets.admit(k.store.get(k.keyId), 'b', 'probe', 0, Date.now()).refusal);
  const b = await chat(k, { 'x-openwebui-user-id': 'b' });
  t.equal(b.status, 429, 'user b has a fresh day, but the key is spent');
  t.equal(b.headers['x-budget-scope'], 'key');
});
