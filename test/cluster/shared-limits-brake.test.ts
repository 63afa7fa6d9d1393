// The failed-auth brake shared through Redis (cluster/shared-brake.ts): failures from one address
// at two gateways add up, and the block the last one starts reaches both brakes.
import t from 'tap';
import { AuthBrake } from '../../src/admission/auth-brake.js';
import { RedisLink } from '../../src/cluster/redis-link.js';
import { SharedBrake } from '../../src/cluster/shared-brake.js';
import { until, type Teardown } from '../helpers.js';
import { REDIS_URL, redisPrefix } from './harness.js';

const quiet = { info: () => {}, error: () => {}, warn: () => {} };

async function gateway(t: Teardown, prefix: string): Promise<AuthBrake> {
  const link = new RedisLink(REDIS_URL, quiet);
  await link.ready(5000);
  const brake = new AuthBrake(3, 60_000);
  const shared = new SharedBrake({ link, prefix, brake, limit: 3, blockMs: 60_000, log: quiet });
  t.teardown(async () => {
    shared.close();
    await link.close();
  });
  // the subscription is up once a block published now arrives (its 'ready' comes after the link's)
  await new Promise((r) => setTimeout(r, 200));
  return brake;
}

t.test('failures at two gateways add up to one limit; the block reaches both', async (t) => {
  const prefix = redisPrefix();
  const a = await gateway(t, prefix);
  const b = await gateway(t, prefix);
  const ip = '203.0.113.7';
  const now = Date.now();
  t.equal(a.fail(ip, now), false);
  t.equal(b.fail(ip, now), false);
  await new Promise((r) => setTimeout(r, 100)); // the counts reach Redis in order
  t.equal(a.fail(ip, now), false, "a's own count is 2 of 3: not blocked by itself");
  await until('a is blocked (the shared count reached 3)', () => a.blockedFor(ip, Date.now()) > 0);
  await until('b is blocked too (told through Redis)', () => b.blockedFor(ip, Date.now()) > 0);
  t.ok(b.blockedFor(ip, Date.now()) <= 60_000);
  t.equal(a.blockedFor('203.0.113.8', Date.now()), 0, 'another address is not');
});

t.test('a brake without Redis counts alone, as before', async (t) => {
  const brake = new AuthBrake(2, 1000);
  const now = Date.now();
  t.equal(brake.fail('198.51.100.1', now), false);
  t.equal(brake.fail('198.51.100.1', now), true);
  t.ok(brake.blockedFor('198.51.100.1', now) > 0);
  brake.block('198.51.100.2', now + 500, now);
  t.equal(brake.blockedFor('198.51.100.2', now), 500, 'a block from elsewhere');
  brake.block('198.51.100.2', now + 100, now);
  t.equal(brake.blockedFor('198.51.100.2', now), 500, 'a shorter one does not cut it');
});
