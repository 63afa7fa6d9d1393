// The failed-auth brake (issue 12, item 5): every credential check counts — client keys, the admin
// key on /admin and on /metrics — and a blocked address gets 429 everywhere; the brake's memory is
// its own and bounded (entries expire with their window, a hard cap with eviction, blocked
// addresses evicted last); a refusal that names no known key writes no usage row, only a counter.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { AUTH_WINDOW_MS, AuthBrake, DEFAULT_AUTH_MAX_ADDRESSES } from '../../src/admission/auth-brake.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { KeyStore } from '../../src/keys/key-store.js';
import {
  AUTH_A,
  KEY_A,
  KEY_B,
  chatBody,
  metricValue,
  request,
  sleep,
  startGateway,
  tempStore,
  type Gateway,
  type RawResponse,
} from '../helpers.js';

const ADMIN = 'admin-secret-0123456789abcdef0123456789';
const BRAKE_429 = (seconds: number): unknown => ({
  error: {
    message: `Too many requests with a wrong API key from your address; try again in ${seconds} s.`,
    type: 'rate_limit_exceeded',
    param: null,
    code: 'too_many_failed_attempts',
  },
});

function from(ip: string | undefined, key: string | undefined): Record<string, string> {
  return { ...(ip === undefined ? {} : { 'cf-connecting-ip': ip }), ...(key === undefined ? {} : { authorization: `Bearer ${key}` }) };
}

/** A gateway with a key database (so /admin exists) and an admin key. */
async function gateway(
  t: Parameters<typeof startGateway>[0],
  overrides: Parameters<typeof startGateway>[1] = {},
): Promise<{ gw: Gateway; store: KeyStore; registry: KeyRegistry }> {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A, KEY_B], store);
  const gw = await startGateway(t, { adminKey: ADMIN, ...overrides }, {}, { registry, usageFlushMs: 20 });
  return { gw, store, registry };
}

t.test('the brake: the max-th failure in a minute blocks for the block time', async (t) => {
  const brake = new AuthBrake(2, 1000);
  t.equal(brake.fail('192.0.2.1', 0), false);
  t.equal(brake.fail('192.0.2.1', 10), true, 'the second failure in the minute blocks');
  t.equal(brake.blockedFor('192.0.2.1', 500), 510);
  t.equal(brake.fail('192.0.2.1', 600), false, 'a failure while blocked does not extend the block');
  t.equal(brake.blockedFor('192.0.2.1', 1010), 0);
  t.equal(brake.size, 0, 'an ended block is forgotten');
  t.equal(brake.fail('192.0.2.2', AUTH_WINDOW_MS - 1), false);
  t.equal(brake.fail('192.0.2.2', AUTH_WINDOW_MS), false, 'a new minute counts from zero');
  t.equal(brake.size, 1, 'the last minute’s counts are gone');
  t.equal(brake.fail(`192.0.2.3${'9'.repeat(10_000)}`, AUTH_WINDOW_MS), false);
  t.equal(brake.fail(`192.0.2.3${'9'.repeat(20_000)}`, AUTH_WINDOW_MS), true, 'an absurdly long address is cut: the two share a counter');
});

t.test('the brake expires entries with their window: a minute of counting, the block time', async (t) => {
  const brake = new AuthBrake(3, 5 * 60_000);
  for (let i = 0; i < 1000; i++) brake.fail(`198.51.100.${i % 250}.${i}`, 1000);
  for (let i = 0; i < 3; i++) brake.fail('203.0.113.5', 1000);
  t.equal(brake.size, 1001);
  t.equal(brake.blocked, 1);
  brake.sweep(AUTH_WINDOW_MS - 1);
  t.equal(brake.size, 1001, 'nothing expired within the minute');
  brake.sweep(AUTH_WINDOW_MS);
  t.equal(brake.size, 1, 'the minute ended: only the blocked address is left');
  t.ok(brake.blockedFor('203.0.113.5', AUTH_WINDOW_MS) > 0);
  brake.sweep(1000 + 5 * 60_000);
  t.equal(brake.size, 0, 'the block ended: nothing left');
});

t.test('the brake keeps at most maxAddresses: 200k distinct addresses → the cap; blocked ones evicted last', async (t) => {
  const brake = new AuthBrake(3, 60_000);
  for (let i = 0; i < 3; i++) brake.fail('203.0.113.5', 0); // blocked before the flood
  const ip = (i: number): string => `10.${(i >>> 16) & 255}.${(i >>> 8) & 255}.${i & 255}`;
  for (let i = 0; i < 200_000; i++) brake.fail(ip(i), 1 + (i >> 10));
  t.equal(DEFAULT_AUTH_MAX_ADDRESSES, 100_000);
  t.equal(brake.size, DEFAULT_AUTH_MAX_ADDRESSES, 'held at the cap');
  t.equal(brake.blocked, 1);
  t.ok(brake.blockedFor('203.0.113.5', 1000) > 0, 'the blocked address outlived 200k newer ones');
  const now = 1 + (200_000 >> 10);
  // Exactly the newest 99,999 are still counting (two more failures block them; the blocked address
  // holds the last place); every older one was forgotten, oldest first.
  for (const i of [199_999, 150_000, 100_001]) {
    brake.fail(ip(i), now);
    t.equal(brake.fail(ip(i), now), true, `address #${i} kept its count`);
  }
  brake.fail(ip(100_000), now);
  t.equal(brake.fail(ip(100_000), now), false, 'address #100000 was the newest one forgotten: it starts again from zero');
  brake.fail(ip(0), now);
  t.equal(brake.fail(ip(0), now), false, 'so does the oldest');

  // Only when nothing is left counting does a blocked address make room, the oldest first.
  const small = new AuthBrake(1, 60_000, { maxAddresses: 3 });
  for (const a of ['a', 'b', 'c', 'd']) t.equal(small.fail(a, 0), true);
  t.equal(small.size, 3);
  t.same(
    ['a', 'b', 'c', 'd'].map((a) => small.blockedFor(a, 1) > 0),
    [false, true, true, true],
    'the oldest block went',
  );
});

t.test('heap: 800k wrong keys from distinct addresses stay at the cap (node --expose-gc, measured)', async (t) => {
  // A child process with tap's TypeScript loader and gc(): heap after minus heap before, after a full
  // collection each time. Issue 12 measured ~100 MB retained by the old shared counters here.
  const loader = process.execArgv.filter((a) => a.startsWith('--import=') && a.includes('typescript'));
  const script = fileURLToPath(new URL('../fixtures/auth-brake-heap.ts', import.meta.url));
  const out = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, ['--expose-gc', ...loader, script, '800000'], { timeout: 120_000 }, (err, stdout) =>
      err === null ? resolve(stdout) : reject(new Error(err.message, { cause: err })),
    ),
  );
  const m = JSON.parse(out) as { addresses: number; tracked: number; heapBeforeMB: number; heapAfterMB: number; growthMB: number };
  t.comment(`heap for 800k distinct addresses: ${JSON.stringify(m)}`);
  t.equal(m.tracked, DEFAULT_AUTH_MAX_ADDRESSES);
  t.ok(m.growthMB < 40, `heap growth ${m.growthMB} MB is bounded by the cap (measured ~11 MB)`);
});

t.test('wrong admin keys count: then even the right admin key gets 429 from that address (trusted proxy)', async (t) => {
  const { gw } = await gateway(t, { trustProxy: true, authFailLimit: 3, authBlockMs: 60_000 });
  for (let i = 0; i < 3; i++) {
    const res = await request(gw.port, { path: '/admin/keys', headers: from('203.0.113.5', `admin-guess-${i}-0123456789abcdef0123`) });
    t.equal(res.status, 401, `guess ${i + 1}`);
  }
  const blocked = await request(gw.port, { path: '/admin/keys', headers: from('203.0.113.5', ADMIN) });
  t.equal(blocked.status, 429, 'blocked, even with the right admin key now');
  t.equal(blocked.headers['retry-after'], '60');
  t.same(JSON.parse(blocked.text), BRAKE_429(60));
  t.equal(
    (await request(gw.port, { path: '/v1/models', headers: from('203.0.113.5', KEY_A) })).status,
    429,
    'and on the client API: one brake',
  );
  t.equal(
    (await request(gw.port, { path: '/admin/keys', headers: from('198.51.100.9', ADMIN) })).status,
    200,
    'another address is not affected',
  );
  t.ok(gw.logs.some((l) => l.msg === 'too many wrong API keys from this address: blocked for a while' && l.ip === '203.0.113.5'));
  t.notOk(gw.logText().includes(ADMIN), 'the admin key is never logged');
});

t.test('a blocked address gets 429 on /metrics (admin key or not); wrong admin keys on /metrics count', async (t) => {
  const { gw } = await gateway(t, { trustProxy: true, authFailLimit: 2, authBlockMs: 60_000 });
  // Blocked by wrong client keys on /v1 …
  for (let i = 0; i < 2; i++)
    t.equal((await request(gw.port, { path: '/v1/models', headers: from('203.0.113.5', `sk-guess-${i}-0123456789abcdef`) })).status, 401);
  const metrics = await request(gw.port, { path: '/metrics', headers: from('203.0.113.5', ADMIN) });
  t.equal(metrics.status, 429, '/metrics refuses a blocked address, even with the admin key');
  t.equal(metrics.headers['retry-after'], '60');
  t.same(JSON.parse(metrics.text), BRAKE_429(60));
  // … and blocked by wrong admin keys on /metrics.
  for (let i = 0; i < 2; i++)
    t.equal(
      (await request(gw.port, { path: '/metrics', headers: from('203.0.113.6', `admin-guess-${i}-0123456789abcdef0123`) })).status,
      401,
    );
  t.equal(
    (await request(gw.port, { path: '/v1/models', headers: from('203.0.113.6', KEY_A) })).status,
    429,
    'guessing the admin key on /metrics blocks the address',
  );
  // No key at all through the tunnel is a failed attempt too (it is not a local scraper).
  for (let i = 0; i < 2; i++) t.equal((await request(gw.port, { path: '/metrics', headers: from('203.0.113.7', undefined) })).status, 401);
  t.equal((await request(gw.port, { path: '/metrics', headers: from('203.0.113.7', ADMIN) })).status, 429);

  // A local scraper (loopback, no forwarding header) needs no key, so it is never a failed attempt
  // and never refused — even when loopback itself is blocked (trusted proxy: local clients count
  // as 127.0.0.1).
  for (let i = 0; i < 2; i++)
    t.equal((await request(gw.port, { path: '/v1/models', headers: from(undefined, `sk-guess-${i}-0123456789abcdef`) })).status, 401);
  t.equal((await request(gw.port, { path: '/v1/models', headers: AUTH_A })).status, 429, 'loopback is blocked for the client API');
  const local = await request(gw.port, { path: '/metrics' });
  t.equal(local.status, 200, 'a local scrape still works');
  t.equal(metricValue(local.text, 'llm_gateway_auth_failures_total', { reason: 'invalid_key' }), 4);
  t.equal(metricValue(local.text, 'llm_gateway_auth_failures_total', { reason: 'admin' }), 4);
  t.equal(metricValue(local.text, 'llm_gateway_auth_failures_total', { reason: 'blocked' }), 4);
});

t.test('without GATEWAY_TRUST_PROXY loopback is exempt on /admin and /metrics too (a tunnel is all loopback)', async (t) => {
  const { gw } = await gateway(t, { authFailLimit: 2, authBlockMs: 60_000 });
  for (let i = 0; i < 4; i++) {
    t.equal(
      (await request(gw.port, { path: '/admin/keys', headers: from(`203.0.113.${i}`, `admin-guess-${i}-0123456789abcdef0123`) })).status,
      401,
    );
    t.equal(
      (await request(gw.port, { path: '/metrics', headers: from(`203.0.113.${i}`, `admin-guess-${i}-0123456789abcdef0123`) })).status,
      401,
    );
  }
  t.equal((await request(gw.port, { path: '/admin/keys', headers: from('203.0.113.9', ADMIN) })).status, 200, 'not locked out');
  t.equal((await request(gw.port, { path: '/metrics', headers: from('203.0.113.9', ADMIN) })).status, 200);
  const metrics = await request(gw.port, { path: '/metrics' });
  t.equal(metricValue(metrics.text, 'llm_gateway_auth_failures_total', { reason: 'admin' }), 8, 'counted in metrics all the same');
});

t.test('refusals without a known key write no usage row, only counters; a known key refused keeps its row', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'gw-brake-'));
  const store = KeyStore.open(join(dir, 'gateway.db'));
  t.teardown(() => {
    store.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const registry = new KeyRegistry([KEY_A], store);
  const disabled = store.create({ name: 'dora', enabled: false });
  const expired = store.create({ name: 'eve', expiresAt: Date.now() - 1000 }, Date.now() - 5000); // created before it expired
  const kept = store.create({ name: 'olga', origins: ['https://a.example'] });
  registry.reload();
  const gw = await startGateway(
    t,
    { trustProxy: true, authFailLimit: 3, authBlockMs: 60_000, adminKey: ADMIN },
    {},
    { registry, usageFlushMs: 20 },
  );
  const responses: RawResponse[] = [];
  const send = async (headers: Record<string, string>): Promise<void> => {
    responses.push(await request(gw.port, { path: '/v1/chat/completions', headers, body: chatBody() }));
  };
  for (let i = 0; i < 3; i++) await send(from('203.0.113.5', `sk-guess-${i}-0123456789abcdef`)); // 401 ×3, then blocked
  for (let i = 0; i < 5; i++) await send(from('203.0.113.5', KEY_A)); // 429 ×5
  await send(from('198.51.100.1', undefined)); // no key: 401
  await send(from('198.51.100.2', disabled.key)); // 401 key_disabled
  await send(from('198.51.100.2', expired.key)); // 401 key_expired
  await send({ ...from('198.51.100.2', kept.key), origin: 'https://b.example' }); // 403 origin_not_allowed
  await send(from('198.51.100.2', KEY_A)); // 200
  t.same(
    responses.map((r) => r.status),
    [401, 401, 401, 429, 429, 429, 429, 429, 401, 401, 401, 403, 200],
  );
  const metrics = await request(gw.port, { path: '/metrics' });
  const failures = Object.fromEntries(
    ['invalid_key', 'blocked', 'disabled', 'expired', 'origin', 'admin'].map((reason) => [
      reason,
      metricValue(metrics.text, 'llm_gateway_auth_failures_total', { reason }),
    ]),
  );
  t.same(failures, { invalid_key: 4, blocked: 5, disabled: 1, expired: 1, origin: 1, admin: 0 }, 'every refusal counted by reason');
  t.equal(
    metricValue(metrics.text, 'llm_gateway_requests_total', { status: '401', key: '' }),
    undefined,
    'no per-request series for unknown keys',
  );
  await gw.app.close();
  await sleep(0);
  const rows = store.db.prepare('SELECT status, outcome, key_name AS keyName, client_ip AS ip FROM usage ORDER BY id').all();
  t.same(
    rows,
    [
      { status: 401, outcome: 'rejected_auth', keyName: 'dora', ip: '198.51.100.2' },
      { status: 401, outcome: 'rejected_auth', keyName: 'eve', ip: '198.51.100.2' },
      { status: 403, outcome: 'rejected_policy', keyName: 'olga', ip: '198.51.100.2' },
      { status: 200, outcome: 'ok', keyName: 'env-1', ip: '198.51.100.2' },
    ],
    'rows only for requests that name a known key: the owner sees a disabled, expired or misused key',
  );
});
