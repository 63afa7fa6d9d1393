// Alerts through a running gateway and a local receiver: off without GATEWAY_WEBHOOK_URL;
// key.disabled once per transition whether the admin API or another process (the CLI) disabled the
// key; key.expiring at start and after a change, once per expiry value; a receiver that hangs
// never holds up a request; the deliveries in /metrics.
import { join } from 'node:path';
import t from 'tap';
import { NO_ALERTS } from '../../src/alerts/events.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { KeyStore } from '../../src/keys/key-store.js';
import {
  AUTH_A,
  KEY_A,
  KEY_B,
  bearer,
  chatBody,
  metricValue,
  request,
  startGateway,
  tempDir,
  until,
  type Gateway,
  type Teardown,
} from '../helpers.js';
import { SECRET, startReceiver, verify, type Receiver } from './receiver.js';

const ADMIN = 'adm-0123456789abcdefghijklmnopqrstuvwxyz';
const DAY_MS = 86_400_000;

/** A key database at a path a second connection (the CLI, another process) can open too. */
function keyDb(t: Teardown): { path: string; store: KeyStore } {
  const path = join(tempDir(t, 'gw-alerts-'), 'gateway.db');
  const store = KeyStore.open(path, 'gateway');
  t.teardown(() => store.close());
  return { path, store };
}

async function alertGateway(t: Teardown, rx: Receiver, store: KeyStore, shutdownMs = 2000): Promise<Gateway> {
  const registry = new KeyRegistry([KEY_A, KEY_B], store);
  return startGateway(
    t,
    { adminKey: ADMIN, webhookUrl: rx.url, webhookSecret: SECRET },
    {},
    { registry, webhook: { firstDelayMs: 5, maxDelayMs: 20, shutdownMs } },
  );
}

function patch(gw: Gateway, name: string, body: Record<string, unknown>) {
  return request(gw.port, {
    method: 'PATCH',
    path: `/admin/keys/${name}`,
    headers: { 'content-type': 'application/json', ...bearer(ADMIN) },
    body: JSON.stringify(body),
  });
}

/** Alerts emitted so far (delivered or still on their way): emit() happens inside the reload, before the answer. */
function emitted(gw: Gateway): number {
  const w = gw.app.webhook!;
  return w.counts.delivered + w.counts.failed + w.counts.dropped + w.pending;
}

/** What the receiver got, as {type, data}, after checking each signature and the body's envelope. */
function events(t: Tap, rx: Receiver): unknown[] {
  return rx.received.map((r) => {
    t.ok(verify(r.headers['x-gateway-signature'] as string, r.body), 'signed');
    t.equal(r.headers['x-gateway-delivery'], r.json.id);
    t.equal(r.headers['x-gateway-event'], r.json.type);
    t.same(Object.keys(r.json), ['id', 'type', 'created_at', 'data']);
    return r.json.data;
  });
}

type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

t.test('without GATEWAY_WEBHOOK_URL: NO_ALERTS, nothing built, no webhook metrics', async (t) => {
  const gw = await startGateway(t);
  t.equal(gw.app.alerts, NO_ALERTS);
  t.equal(gw.app.webhook, null);
  const metrics = await request(gw.port, { path: '/metrics' });
  t.equal(metrics.status, 200);
  t.notMatch(metrics.text, 'llm_gateway_webhook');
});

t.test('a key disabled through the admin API: one key.disabled per transition; metrics count it', async (t) => {
  const rx = await startReceiver(t);
  const { store } = keyDb(t);
  const alice = store.create({ name: 'alice' }).record;
  const gw = await alertGateway(t, rx, store);
  const log = gw.logs.find((l) => l.msg === 'alerts: webhook on');
  t.same(
    log && { component: log.component, host: log.host },
    { component: 'alerts', host: new URL(rx.url).host },
    'the host only is logged',
  );

  t.equal((await patch(gw, 'alice', { enabled: false })).status, 200);
  t.equal(emitted(gw), 1, 'told at once');
  t.equal((await patch(gw, 'alice', { enabled: false })).status, 200);
  t.equal((await patch(gw, 'alice', { note: 'on holiday' })).status, 200);
  t.equal(emitted(gw), 1, 'no transition, no alert');
  t.equal((await patch(gw, 'alice', { enabled: true })).status, 200);
  t.equal(emitted(gw), 1, 'enabling tells nothing');
  t.equal((await patch(gw, 'alice', { enabled: false })).status, 200);
  t.equal(emitted(gw), 2, 'disabled again: a second transition');

  await until('both delivered', () => gw.app.webhook!.counts.delivered === 2);
  const disabled = { type: 'key.disabled', key: { id: alice.id, name: 'alice' } };
  t.same(events(t, rx), [disabled, disabled]);

  const metrics = (await request(gw.port, { path: '/metrics' })).text;
  t.same(
    ['delivered', 'failed', 'dropped'].map((result) => metricValue(metrics, 'llm_gateway_webhook_deliveries_total', { result })),
    [2, 0, 0],
  );
  t.equal(metricValue(metrics, 'llm_gateway_webhook_pending'), 0);
  t.notMatch(gw.logText(), SECRET, 'the secret is never logged');
  t.notMatch(gw.logText(), 'token=abc', "the URL's query is never logged");
});

t.test('a key disabled by another process (the CLI): told after the registry poll sees it', async (t) => {
  const rx = await startReceiver(t);
  const { path, store } = keyDb(t);
  const bob = store.create({ name: 'bob' }).record;
  const gw = await alertGateway(t, rx, store);
  const cli = KeyStore.open(path);
  t.teardown(() => cli.close());
  cli.update('bob', { enabled: false });
  await until('delivered', () => rx.received.length === 1);
  t.same(events(t, rx), [{ type: 'key.disabled', key: { id: bob.id, name: 'bob' } }]);
  t.equal(emitted(gw), 1);
});

t.test('key.expiring: at start and after a change; once per key and expiry value; not for disabled or far keys', async (t) => {
  const rx = await startReceiver(t);
  const { store } = keyDb(t);
  const now = Date.now();
  const soon = store.create({ name: 'soon', expiresAt: now + 3 * DAY_MS }).record;
  store.create({ name: 'off', enabled: false, expiresAt: now + 2 * DAY_MS });
  const later = store.create({ name: 'later', expiresAt: now + 30 * DAY_MS }).record;
  store.create({ name: 'never' });
  const gw = await alertGateway(t, rx, store);
  t.equal(emitted(gw), 1, 'one key in its last week at start');

  t.equal((await patch(gw, 'soon', { note: 'reload' })).status, 200);
  t.equal(emitted(gw), 1, 'a reload does not tell it again');
  const res = await patch(gw, 'later', { expires: '2d' });
  t.equal(res.status, 200);
  const laterAt = (JSON.parse(res.text) as { expires_at: string }).expires_at;
  t.equal(emitted(gw), 2, 'a key given a near expiry is told at once');
  const moved = await patch(gw, 'soon', { expires: '5d' });
  const soonAt = (JSON.parse(moved.text) as { expires_at: string }).expires_at;
  t.equal(emitted(gw), 3, 'a moved expiry is a new value: told again');

  await until('delivered', () => gw.app.webhook!.counts.delivered === 3);
  const got = events(t, rx);
  const sort = (a: unknown[]): unknown[] => [...a].sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y)));
  t.same(
    sort(got),
    sort([
      { type: 'key.expiring', key: { id: soon.id, name: 'soon' }, expires_at: new Date(soon.expiresAt!).toISOString() },
      { type: 'key.expiring', key: { id: later.id, name: 'later' }, expires_at: laterAt },
      { type: 'key.expiring', key: { id: soon.id, name: 'soon' }, expires_at: soonAt },
    ]),
  );
});

t.test('a receiver that hangs never holds up a request; shutdown gives up after shutdownMs', async (t) => {
  const rx = await startReceiver(t, ['hang']);
  const { store } = keyDb(t);
  store.create({ name: 'carol' });
  const gw = await alertGateway(t, rx, store, 100);
  t.equal((await patch(gw, 'carol', { enabled: false })).status, 200, 'the admin call that emitted is answered');
  await until('the receiver holds the alert', () => rx.received.length === 1);
  const chat = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json', ...AUTH_A },
    body: chatBody(),
  });
  t.equal(chat.status, 200, 'a request is answered while the alert hangs');
  t.equal((await patch(gw, 'carol', { enabled: true })).status, 200);
  t.equal((await patch(gw, 'carol', { enabled: false })).status, 200, 'another admin call too');
  const metrics = (await request(gw.port, { path: '/metrics' })).text;
  t.equal(metricValue(metrics, 'llm_gateway_webhook_pending'), 2);
  t.equal(metricValue(metrics, 'llm_gateway_webhook_deliveries_total', { result: 'delivered' }), 0);

  await gw.app.close();
  t.same(gw.app.webhook!.counts, { delivered: 0, failed: 0, dropped: 2 });
  t.same(
    gw.logs.filter((l) => l.component === 'alerts' && l.level === 40).map((l) => l.msg),
    ['webhook: 2 alert(s) not delivered before shutdown, given up'],
  );
});

t.test('budget alerts from the budgets code reach the receiver (a soft day budget crossed by one request)', async (t) => {
  const rx = await startReceiver(t);
  const { store } = keyDb(t);
  const created = store.create({ name: 'dora', budgets: { day: 10, mode: 'soft' } });
  const gw = await alertGateway(t, rx, store);
  const res = await request(gw.port, {
    path: '/v1/chat/completions',
    headers: { 'content-type': 'application/json', ...bearer(created.key) },
    body: chatBody(),
  });
  t.equal(res.status, 200, 'soft: answered');
  // Both levels (GATEWAY_BUDGET_WARN_AT 80,100) are crossed by the one request: two alerts, in either order.
  await until('warnings delivered', () => gw.app.webhook!.counts.delivered === 2);
  const got = (events(t, rx) as { percent: number; used: number }[]).sort((a, b) => a.percent - b.percent);
  const resets_at = new Date((Math.floor(Date.now() / DAY_MS) + 1) * DAY_MS).toISOString();
  const key = { id: created.record.id, name: 'dora' };
  t.same(
    got.map(({ used: _used, ...rest }) => rest),
    [80, 100].map((percent) => ({ type: 'budget.warning', key, period: 'day', mode: 'soft', percent, limit: 10, resets_at })),
  );
  t.ok(
    got.every((e) => e.used >= 10),
    'used is past the limit',
  );
});
