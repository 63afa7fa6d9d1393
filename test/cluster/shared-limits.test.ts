// Per-key limits counted in Redis (cluster/shared-limits.ts) against the machine's Redis, each test
// under its own key prefix: the script counts as the local limits do, several gateways (clients)
// admitting at once count exactly, holds settle, a dead gateway's entries expire with its lease,
// and every key it writes expires.
import t from 'tap';
import { Redis } from 'ioredis';
import { SharedLimits } from '../../src/cluster/shared-limits.js';
import type { KeyLimits } from '../../src/admission/limits.js';
import { sleep, until, type Teardown } from '../helpers.js';
import { REDIS_URL, redisPrefix } from './harness.js';

const NONE: KeyLimits = { rpm: null, tpm: null, tpd: null, concurrency: null };

function client(t: Teardown): Redis {
  const c = new Redis(REDIS_URL, { maxRetriesPerRequest: 0 });
  t.teardown(() => c.disconnect());
  return c;
}

function sharedLimits(t: Teardown, prefix: string, gatewayId: string, leaseMs = 5000, c = client(t)): SharedLimits {
  const s = new SharedLimits({ client: c, prefix, gatewayId, leaseMs });
  t.teardown(() => s.close());
  return s;
}

t.test('the script counts requests per minute and says so in the x-ratelimit-* headers', async (t) => {
  const s = sharedLimits(t, redisPrefix(), 'gw1');
  const l = { ...NONE, rpm: 3 };
  for (let i = 1; i <= 3; i++) {
    const a = await s.admit('k1', l, `r${i}`, 0);
    t.equal(a.refusal, undefined, `request ${i} admitted`);
    t.equal(a.headers['x-ratelimit-limit-requests'], '3');
    t.equal(a.headers['x-ratelimit-remaining-requests'], String(3 - i));
    t.match(a.headers['x-ratelimit-reset-requests'], /^(\d+s|1m0s)$/);
  }
  const refused = await s.admit('k1', l, 'r4', 0);
  t.match(refused.refusal, { limit: 'requests per minute', max: 3 });
  t.ok(refused.refusal!.retryAfter >= 1 && refused.refusal!.retryAfter <= 60, `Retry-After ${refused.refusal!.retryAfter}`);
  t.equal(refused.headers['x-ratelimit-remaining-requests'], '0');
  t.equal((await s.admit('k2', l, 'r5', 0)).refusal, undefined, 'another key counts apart');
});

t.test('4 gateways (clients) admitting 100 requests at once with rpm 30: exactly 30 pass', async (t) => {
  const prefix = redisPrefix();
  const gateways = [1, 2, 3, 4].map((i) => sharedLimits(t, prefix, `gw${i}`));
  const l = { ...NONE, rpm: 30 };
  if (Date.now() % 60_000 > 55_000) await sleep(60_000 - (Date.now() % 60_000) + 100); // one minute's window
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) => gateways[i % 4]!.admit('shared', l, `req-${i}`, 0)));
  t.equal(results.filter((r) => r.refusal === undefined).length, 30, '30 admitted');
  t.equal(results.filter((r) => r.refusal?.limit === 'requests per minute').length, 70, '70 refused');
});

t.test('token holds count until settled with the real tokens, or released', async (t) => {
  const s = sharedLimits(t, redisPrefix(), 'gw1');
  const l = { ...NONE, tpm: 1000 };
  t.equal((await s.admit('k', l, 'a', 600)).refusal, undefined, '600 of 1000 held: admitted');
  const b = await s.admit('k', l, 'b', 600);
  t.equal(b.refusal, undefined, '600 held: the next one is still admitted (overshoot by one hold)');
  t.equal(b.headers['x-ratelimit-remaining-tokens'], '0');
  t.match((await s.admit('k', l, 'c', 10)).refusal, { limit: 'tokens per minute', max: 1000 }, '1200 held: refused');
  await s.settle('k', 'a', 100);
  await s.release('b');
  const d = await s.admit('k', l, 'd', 10);
  t.equal(d.refusal, undefined, 'a settled with 100, b released: admitted');
  t.equal(d.headers['x-ratelimit-remaining-tokens'], String(1000 - 100 - 10));
  await s.settle('k', 'light-call', 50);
  t.equal(
    (await s.admit('k', l, 'e', 0)).headers['x-ratelimit-remaining-tokens'],
    String(1000 - 150 - 10),
    'a record without a hold counts for a key with a token limit',
  );
  t.equal(s.live, 1, 'd still holds');
});

t.test('concurrent requests: an entry per running request, ended by its end()', async (t) => {
  const prefix = redisPrefix();
  const a = sharedLimits(t, prefix, 'gwA');
  const b = sharedLimits(t, prefix, 'gwB');
  const l = { ...NONE, concurrency: 2 };
  const first = await a.admit('k', l, 'r1', 0);
  t.equal((await b.admit('k', l, 'r1', 0)).refusal, undefined, 'the same request id on another gateway is another entry');
  t.match((await a.admit('k', l, 'r2', 0)).refusal, { limit: 'concurrent requests', max: 2, retryAfter: 1 });
  first.end();
  first.end();
  await until('the entry is gone', async () => (await a.admit('k', l, 'r3', 0)).refusal === undefined);
});

t.test("a dead gateway's concurrency entries and holds expire with its lease; a live one's are renewed", async (t) => {
  const prefix = redisPrefix();
  const lease = 600;
  const dyingClient = new Redis(REDIS_URL, { maxRetriesPerRequest: 0 });
  const dying = new SharedLimits({ client: dyingClient, prefix, gatewayId: 'dead', leaseMs: lease });
  const alive = sharedLimits(t, prefix, 'alive', lease);
  alive.start();
  const other = sharedLimits(t, prefix, 'other', lease);
  const conc = { ...NONE, concurrency: 1 };
  const tokens = { ...NONE, tpm: 100 };
  t.equal((await dying.admit('dead-key', conc, 'r', 0)).refusal, undefined);
  t.equal((await dying.admit('dead-tokens', tokens, 'r', 100)).refusal, undefined);
  t.equal((await alive.admit('live-key', conc, 'r', 0)).refusal, undefined);
  dyingClient.disconnect(); // dies: no renewal, nothing given back
  t.match((await other.admit('dead-key', conc, 'x', 0)).refusal, { limit: 'concurrent requests' }, 'still counted at first');
  await until('the dead entry expired', async () => (await other.admit('dead-key', conc, 'x', 0)).refusal === undefined);
  await until('the dead hold expired', async () => (await other.admit('dead-tokens', tokens, 'x', 0)).refusal === undefined);
  await sleep(lease * 3);
  t.match((await other.admit('live-key', conc, 'y', 0)).refusal, { limit: 'concurrent requests' }, 'renewed: still counted after 3 leases');
  await alive.close();
  t.equal((await other.admit('live-key', conc, 'z', 0)).refusal, undefined, 'given back at close');
});

t.test('every key the scripts write expires', async (t) => {
  const prefix = redisPrefix();
  const c = client(t);
  const s = sharedLimits(t, prefix, 'gw', 5000, c);
  await s.admit('k', { rpm: 5, tpm: 1000, tpd: 10_000, concurrency: 3 }, 'r', 200);
  await s.settle('k', 'other', 10);
  const keys = await c.keys(`${prefix}*`);
  t.ok(keys.length >= 6, keys.join(' '));
  for (const k of keys) {
    const ttl = await c.pttl(k);
    t.ok(ttl > 0 && ttl <= 86_401_000, `${k.slice(prefix.length)} expires (${ttl} ms)`);
  }
});
