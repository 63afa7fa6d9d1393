// Token budgets through the gateway (issue #15), real sockets against the fake llama-server: the
// 429 a client sees once a hard budget is spent (whole body, Retry-After to the reset, x-budget-*
// headers), 20 requests at once at a budget's edge, a month's usage kept across a restart, records
// not yet written counted once, a per-user budget, a reset at New York's midnight with a faked
// clock, and the budget state in the admin API and `keys show` / `keys list`.
import t from 'tap';
import { budgetColumn, budgetLines, budgetStates } from '../../src/cli/key-budgets-view.js';
import { reserveFor } from '../../src/admission/token-estimate.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import type { KeyBudgets } from '../../src/keys/key-budgets.js';
import type { KeyStore } from '../../src/keys/key-store.js';
import { Calendar, localIso } from '../../src/usage/calendar.js';
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
const BODY = chatBody(); // non-streamed: the recording's usage is 31 prompt + 8 completion tokens
const USED = 39;
const HOLD = reserveFor(Buffer.from(BODY), JSON.parse(BODY) as Record<string, unknown>, true, 1024);

interface Rig {
  gw: Gateway;
  store: KeyStore;
  registry: KeyRegistry;
  keyId: string;
  auth: Record<string, string>;
}

interface Options {
  overrides?: Parameters<typeof startGateway>[1];
  behavior?: Parameters<typeof startGateway>[2];
  flushMs?: number;
  /** the key database and key of an earlier gateway (a restart) */
  again?: Rig;
}

/** A gateway whose key database has key "alice" with `budgets`. */
async function rig(t: Teardown, budgets: KeyBudgets | null, o: Options = {}): Promise<Rig> {
  const store = o.again?.store ?? tempStore(t);
  let keyId = o.again?.keyId;
  let auth = o.again?.auth;
  if (keyId === undefined || auth === undefined) {
    const { record, key } = store.create({ name: 'alice', budgets });
    keyId = record.id;
    auth = bearer(key);
  }
  const registry = new KeyRegistry([KEY_A], store);
  const gw = await startGateway(t, { adminKey: ADMIN, ...o.overrides }, o.behavior ?? {}, { registry, usageFlushMs: o.flushMs ?? 20 });
  return { gw, store, registry, keyId, auth };
}

const chat = (r: Rig, headers: Record<string, string> = {}, body = BODY): Promise<RawResponse> =>
  request(r.gw.port, { path: '/v1/chat/completions', headers: { ...r.auth, 'content-type': 'application/json', ...headers }, body });

/** Waits until the gateway's count for the key's first period says `used`. */
const settled = (r: Rig, used: number): Promise<true> =>
  until(`${used} tokens settled`, () => {
    const k = r.store.get(r.keyId);
    return r.gw.app.budgets.state(r.keyId, k.budgets!, Date.now()).periods[0]!.used === used || undefined;
  });

const budgetHeaders = (r: RawResponse): Record<string, string | string[] | undefined> =>
  Object.fromEntries(Object.entries(r.headers).filter(([h]) => h.startsWith('x-budget-') || h === 'retry-after'));

t.test('a hard daily budget: headers on each answer, then a 429 naming the budget and its reset', async (t) => {
  const r = await rig(t, { day: 2 * USED });
  const end = new Calendar('UTC').bounds('day', Date.now()).end;
  const first = await chat(r);
  t.equal(first.status, 200);
  t.same(
    budgetHeaders(first),
    {
      'x-budget-period': 'day',
      'x-budget-scope': 'key',
      'x-budget-limit-tokens': String(2 * USED),
      'x-budget-remaining-tokens': String(2 * USED - HOLD),
      'x-budget-reset': new Date(end).toISOString(),
    },
    'what is left counts its own hold (its body / 4 + max_tokens)',
  );
  await settled(r, USED);
  const second = await chat(r);
  t.equal(second.status, 200, 'settled with the real 39 tokens: room for one more');
  await settled(r, 2 * USED);
  const third = await chat(r);
  t.equal(third.status, 429);
  t.same(JSON.parse(third.text), {
    error: {
      message: `This API key's token budget is spent: 78 tokens per day (UTC); 78 used. It resets at ${localIso(new Calendar('UTC'), end)}.`,
      type: 'insufficient_quota',
      param: null,
      code: 'budget_exceeded',
    },
  });
  t.ok(Math.abs(Number(third.headers['retry-after']) - Math.ceil((end - Date.now()) / 1000)) <= 2, 'Retry-After: until the reset');
  t.equal(third.headers['x-budget-remaining-tokens'], '0');
  t.equal(r.gw.fake.requests.length, 2, 'the refused request never reached llama-server');
  const models = await request(r.gw.port, { path: '/v1/models', headers: r.auth });
  t.equal(models.status, 200, 'the model list is not refused…');
  t.equal(models.headers['x-budget-remaining-tokens'], '0', '…and says what is left');
  const other = await request(r.gw.port, {
    path: '/v1/chat/completions',
    headers: { ...bearer(KEY_A), 'content-type': 'application/json' },
    body: BODY,
  });
  t.equal(other.status, 200, 'a key without budgets is untouched');
  t.equal(other.headers['x-budget-limit-tokens'], undefined, 'and gets no budget headers');
});

t.test('20 requests at once at the edge of a budget: only what it can hold gets through', async (t) => {
  const body = chatBody({ stream: true, max_tokens: 100 });
  const hold = reserveFor(Buffer.from(body), JSON.parse(body) as Record<string, unknown>, true, 1024);
  const limit = 3 * hold - 1;
  const r = await rig(t, { day: limit }, { overrides: { maxInflight: 20 }, behavior: { chunkDelayMs: 30, extraContentChunks: 10 } });
  const all = await Promise.all(Array.from({ length: 20 }, () => chat(r, {}, body)));
  const admitted = all.filter((a) => a.status === 200).length;
  t.equal(admitted, 3, `admitted while used + held < ${limit}: 3 holds of ${hold}`);
  t.equal(all.filter((a) => a.status === 429).length, 17);
  t.equal(r.gw.fake.requests.length, 3, 'the refused ones never reached llama-server');
  await settled(r, 3 * 37); // the stream recording: 31 + 6
  t.ok(3 * 37 <= limit, 'used stays under the budget: holds are upper bounds');
});

t.test("a restart keeps the month's usage; records not yet written are counted once", async (t) => {
  const one = await rig(t, { month: 3 * USED });
  t.equal((await chat(one)).status, 200);
  t.equal((await chat(one)).status, 200);
  await settled(one, 2 * USED);
  await one.gw.app.close(); // the recorder's last flush: the usage table has both
  const two = await rig(t, null, { again: one });
  const after = await chat(two);
  t.equal(after.status, 200, '78 of 117 used before the restart: admitted');
  t.equal(after.headers['x-budget-remaining-tokens'], String(Math.max(0, 3 * USED - 2 * USED - HOLD)));
  await settled(two, 3 * USED);
  const refused = await chat(two);
  t.equal(refused.status, 429, 'the month is spent across the restart');

  // A key whose first records are still in the recorder (flushed every minute here) when its
  // budget is set: the count starts from the table plus those, and the records are not added again.
  const three = await rig(t, null, { flushMs: 60_000 });
  three.store.update(three.keyId, { budgets: null });
  three.registry.reload();
  t.equal((await chat(three)).status, 200);
  t.equal((await chat(three)).status, 200);
  await until('two records pending', () => three.gw.app.usage!.pendingTokens(three.keyId, 0) === 2 * USED || undefined);
  three.store.update(three.keyId, { budgets: { week: 10 * USED } });
  three.registry.reload();
  const seeded = await chat(three);
  t.equal(seeded.headers['x-budget-remaining-tokens'], String(10 * USED - 2 * USED - HOLD), 'the pending records count');
  await settled(three, 3 * USED);
});

t.test('a per-user budget refuses user A but not user B', async (t) => {
  const r = await rig(t, { month: 100_000, per_user: { day: USED } });
  const alice = { 'x-openwebui-user-id': 'alice' };
  t.equal((await chat(r, alice)).status, 200);
  await until('alice settled', () => r.gw.app.budgets.admit(r.store.get(r.keyId), 'alice', 'probe', 0, Date.now()).refusal);
  const refused = await chat(r, alice);
  t.equal(refused.status, 429);
  t.match(JSON.parse(refused.text), {
    error: {
      code: 'budget_exceeded',
      message: /^End user "alice"'s \(under this API key\) token budget is spent: 39 tokens per day \(UTC\); 39 used\./,
    },
  });
  t.equal(refused.headers['x-budget-scope'], 'user');
  const bob = await chat(r, { 'x-openwebui-user-id': 'bob' });
  t.equal(bob.status, 200, 'bob has his own count');
  t.equal(bob.headers['x-budget-scope'], 'user');
  t.equal((await chat(r)).status, 200, 'a request that names no user: the key budget only');
});

t.test("a reset at New York's midnight, with a faked clock", async (t) => {
  const realNow = Date.now;
  let shift = Date.parse('2026-11-02T04:59:00Z') - realNow(); // 23:59 on Nov 1 (EST), a 25-hour day
  Date.now = () => realNow() + shift;
  t.teardown(() => {
    Date.now = realNow;
  });
  const r = await rig(t, { day: USED }, { overrides: { budgetTz: 'America/New_York' } });
  t.equal((await chat(r)).status, 200);
  await settled(r, USED);
  const refused = await chat(r);
  t.equal(refused.status, 429);
  t.match(JSON.parse(refused.text), {
    error: { message: /per day \(America\/New_York\); 39 used\. It resets at 2026-11-02T00:00:00-05:00\.$/ },
  });
  t.ok(Number(refused.headers['retry-after']) <= 60 && Number(refused.headers['retry-after']) >= 55);
  t.equal(refused.headers['x-budget-reset'], '2026-11-02T05:00:00.000Z');
  shift += 60_000; // 00:00:xx on Nov 2
  const next = await chat(r);
  t.equal(next.status, 200, 'a new day in New York: admitted again');
  t.equal(next.headers['x-budget-reset'], '2026-11-03T05:00:00.000Z');
});

t.test('the admin API: budgets set and merged by PATCH, budget_state beside the record', async (t) => {
  const r = await rig(t, { month: 1000 });
  const admin = (method: string, path: string, body?: unknown): Promise<RawResponse> =>
    request(r.gw.port, {
      method,
      path,
      headers: { ...bearer(ADMIN), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  const patched = await admin('PATCH', `/admin/keys/${r.keyId}`, { budgets: { day: 500, mode: 'soft', per_user: { day: 50 } } });
  t.equal(patched.status, 200);
  t.same((JSON.parse(patched.text) as { budgets: unknown }).budgets, { month: 1000, day: 500, mode: 'soft', per_user: { day: 50 } });
  t.equal((await chat(r)).status, 200);
  await settled(r, USED);
  const got = JSON.parse((await admin('GET', `/admin/keys/${r.keyId}`)).text) as Record<string, unknown>;
  const cal = new Calendar('UTC');
  t.same(got.budget_state, {
    tz: 'UTC',
    mode: 'soft',
    periods: [
      {
        period: 'day',
        limit: 500,
        used: USED,
        held: 0,
        remaining: 500 - USED,
        resets_at: new Date(cal.bounds('day', Date.now()).end).toISOString(),
      },
      {
        period: 'month',
        limit: 1000,
        used: USED,
        held: 0,
        remaining: 1000 - USED,
        resets_at: new Date(cal.bounds('month', Date.now()).end).toISOString(),
      },
    ],
    per_user: { day: 50 },
  });
  const list = JSON.parse((await admin('GET', '/admin/keys')).text) as { data: Record<string, unknown>[] };
  t.same(list.data.find((k) => k.id === r.keyId)?.budget_state, got.budget_state);
  const bad = await admin('PATCH', `/admin/keys/${r.keyId}`, { budgets: { month: 0 } });
  t.equal(bad.status, 400);
  const unknown = await admin('PATCH', `/admin/keys/${r.keyId}`, { budgets: { year: 5 } });
  t.equal(unknown.status, 400);
  const cleared = await admin('PATCH', `/admin/keys/${r.keyId}`, { budgets: null });
  t.equal((JSON.parse(cleared.text) as { budgets: unknown }).budgets, null);
  const after = JSON.parse((await admin('GET', `/admin/keys/${r.keyId}`)).text) as Record<string, unknown>;
  t.notOk('budget_state' in after, 'no budgets: no budget_state');

  // `keys show` and `keys list` count from the usage table (the CLI is another process).
  const k = r.store.update(r.keyId, { budgets: { month: 1000, day: 100 } });
  // The record reaches the usage table with the recorder's next flush (every 20 ms here, later on a
  // loaded machine): the count above was the gateway's own.
  await until('the record in the usage table', () => budgetStates(r.store.db, [k]).get(k.id)?.periods[0]?.used === USED || undefined);
  const state = budgetStates(r.store.db, [k]).get(k.id);
  t.match(
    budgetLines(state),
    /^\nbudgets: {4}hard \(UTC\)\n {2}day {3}39 of 100 tokens used \(39%\), 61 left; resets \d{4}-\d\d-\d\dT00:00:00\+00:00\n {2}month 39 of 1,000 tokens used \(3%\), 961 left; resets /,
  );
  t.equal(budgetColumn(state), '39% day');
  t.equal(budgetColumn(undefined), '-');
});
