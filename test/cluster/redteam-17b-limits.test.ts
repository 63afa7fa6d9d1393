// Red team, issue 17 (part b): per-key limits counted in Redis and the shared failed-auth brake,
// attacked as a client, an operator and a flaky network would: what a request holds in Redis after
// its client leaves at each stage, what a Redis restart or a stalled gateway does to the entries of
// requests still running, and whether every key written expires.
import t from 'tap';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { Redis } from 'ioredis';
import { SharedLimits } from '../../src/cluster/shared-limits.js';
import type { KeyLimits } from '../../src/admission/limits.js';
import { AUTH_A, chatBody, freePort, sleep, startGateway, until, within, type Teardown } from '../helpers.js';
import { REDIS_URL, redisPrefix, startRedis } from './harness.js';

const NONE: KeyLimits = { rpm: null, tpm: null, tpd: null, concurrency: null };

function client(t: Teardown, url = REDIS_URL): Redis {
  const c = new Redis(url, { maxRetriesPerRequest: 0, retryStrategy: () => 50 });
  c.on('error', () => {});
  t.teardown(() => c.disconnect());
  return c;
}

function sharedLimits(t: Teardown, prefix: string, gatewayId: string, leaseMs: number, c: Redis): SharedLimits {
  const s = new SharedLimits({ client: c, prefix, gatewayId, leaseMs });
  t.teardown(() => s.close());
  return s;
}

t.test('Redis restarted (its data lost) while a request runs: the running request still counts for concurrency', async (t) => {
  const redis = await startRedis(t);
  const prefix = redisPrefix();
  const lease = 600;
  const ca = client(t, redis.url);
  const cb = client(t, redis.url);
  const a = sharedLimits(t, prefix, 'gwA', lease, ca);
  const b = sharedLimits(t, prefix, 'gwB', lease, cb);
  a.start();
  const conc = { ...NONE, concurrency: 1 };
  const tokens = { ...NONE, tpm: 1000 };
  t.equal((await a.admit('k', conc, 'r1', 0)).refusal, undefined, 'a long stream runs on gateway A');
  t.equal((await a.admit('t', tokens, 'r2', 1000)).refusal, undefined, 'a generation holding all 1000 tokens runs on A');
  await redis.stop();
  await redis.start(); // empty: a restart without persistence, a failover to an empty replica
  await until('both clients are back', () => ca.status === 'ready' && cb.status === 'ready');
  await sleep(lease * 2); // A renews (every lease/3) meanwhile
  t.match(
    (await b.admit('k', conc, 'x', 0)).refusal,
    { limit: 'concurrent requests' },
    "B refuses a 2nd request of a concurrency-1 key: A's request still runs",
  );
  t.match((await b.admit('t', tokens, 'y', 200)).refusal, { limit: 'tokens per minute' }, "A's hold of 1000 still counts");
});

t.test('a gateway that stalled past its lease: its running requests count again at its next renewal', async (t) => {
  const prefix = redisPrefix();
  const lease = 400;
  const a = sharedLimits(t, prefix, 'gwA', lease, client(t));
  const b = sharedLimits(t, prefix, 'gwB', lease, client(t));
  const conc = { ...NONE, concurrency: 1 };
  t.equal((await a.admit('k', conc, 'r1', 0)).refusal, undefined);
  await sleep(lease * 2); // A's event loop stalled: no renewal
  const x = await b.admit('k', conc, 'x', 0);
  t.equal(x.refusal, undefined, 'meanwhile B cannot know it runs');
  x.end(); // (its ZREM goes before the next call on B's connection)
  await a.renew(); // A is back and renews its live entries
  t.match((await b.admit('k', conc, 'y', 0)).refusal, { limit: 'concurrent requests' }, 'counted again: the excess drains');
});

/** A streaming chat request left by its client after `afterMs` (or once the first byte arrives). */
function leaveAfter(port: number, afterMs: number, onFirstByte = false): Promise<void> {
  return new Promise((resolve) => {
    const req = http.request({
      host: '127.0.0.1',
      port,
      method: 'POST',
      path: '/v1/chat/completions',
      headers: { ...AUTH_A, 'content-type': 'application/json' },
      agent: false,
    });
    const leave = (): void => {
      req.destroy();
      resolve();
    };
    req.on('error', () => resolve());
    req.on('response', (res) => {
      res.on('error', () => {});
      if (onFirstByte) res.once('data', leave);
    });
    if (!onFirstByte) setTimeout(leave, afterMs);
    req.end(chatBody({ stream: true, max_tokens: 50 }));
  });
}

t.test('a client that leaves while queued or mid-stream leaves no hold and no concurrency entry in Redis', async (t) => {
  const prefix = redisPrefix();
  const gw = await startGateway(
    t,
    { redisUrl: REDIS_URL, redisPrefix: prefix, defaultTpm: 1_000_000, defaultConcurrency: 10, maxInflight: 1 },
    { chunkDelayMs: 100, slots: 1 },
  );
  const shared = gw.app.sharedCounting!;
  await until('Redis up', () => shared.link.up);
  const first = leaveAfter(gw.port, 0, true); // takes the one slot, leaves mid-stream
  await until('the first holds the slot', () => gw.fake.busySlots() === 1);
  const queued = leaveAfter(gw.port, 300); // waits for the slot, leaves while queued
  await Promise.all([first, queued]);
  t.ok(gw.fake.maxBusySeen >= 1, 'the first reached llama-server');
  await until('nothing held in this process', () => shared.limits.live === 0, 10_000);
  const c = client(t);
  await until(
    'nothing held in Redis',
    async () => {
      const keys = await c.keys(`${prefix}lim:*`);
      let n = 0;
      for (const k of keys)
        n += k.endsWith('heldtok') ? await c.hlen(k) : k.endsWith(':active') || k.endsWith(':held') ? await c.zcard(k) : 0;
      return n === 0;
    },
    10_000,
  );
});

t.test('every key written under the prefix by a gateway run (limits and brake) expires', async (t) => {
  const prefix = redisPrefix();
  const gw = await startGateway(t, {
    redisUrl: REDIS_URL,
    redisPrefix: prefix,
    defaultRpm: 100,
    defaultTpm: 1_000_000,
    defaultTpd: 10_000_000,
    defaultConcurrency: 10,
    trustProxy: true,
    authFailLimit: 2,
  });
  await until('Redis up', () => gw.app.sharedCounting!.link.up);
  const post = (headers: Record<string, string>): Promise<Response> =>
    fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: chatBody(),
    });
  t.equal((await post(AUTH_A)).status, 200);
  for (let i = 0; i < 3; i++) await post({ authorization: 'Bearer sk-wrong', 'cf-connecting-ip': '198.51.100.9' });
  const c = client(t);
  await until('the brake wrote its keys', async () => (await c.keys(`${prefix}brake:*`)).length > 0);
  const keys = await c.keys(`${prefix}*`);
  t.ok(keys.length > 0);
  for (const k of keys) {
    const ttl = await c.pttl(k);
    t.ok(ttl > 0, `${k.slice(prefix.length)} expires (${ttl} ms)`);
  }
});

t.test('the public /health says why Redis is down without saying where it is (as it names llama-servers, never their URLs)', async (t) => {
  const port = await freePort();
  const gw = await startGateway(t, { redisUrl: `redis://:sekret-pw@127.0.0.1:${port}`, redisPrefix: redisPrefix() });
  const health = await until('the error is told', async () => {
    const body = (await (await fetch(`${gw.url}/health`)).json()) as { redis: { state: string; error?: string } };
    return body.redis.error === undefined ? undefined : body;
  });
  t.equal(health.redis.state, 'down');
  t.comment(health.redis.error);
  t.notMatch(health.redis.error, new RegExp(`127\\.0\\.0\\.1|${port}|sekret`), 'neither its host, its port nor its password');
  t.match(health.redis.error, /ECONNREFUSED|refused/i, 'but why');
});

/** A TCP proxy to the machine's Redis that can freeze (connections stay open, nothing passes): a hung Redis. */
async function freezableProxy(t: Teardown): Promise<{ url: string; freeze(): void; thaw(): void }> {
  const target = new URL(REDIS_URL);
  const sockets = new Set<net.Socket>();
  let frozen = false;
  const server = net.createServer((c) => {
    const up = net.connect(Number(target.port || 6379), target.hostname);
    for (const s of [c, up]) {
      sockets.add(s);
      s.on('error', () => {}).on('close', () => {
        c.destroy();
        up.destroy();
        sockets.delete(s);
      });
      if (frozen) s.pause();
    }
    c.pipe(up).pipe(c);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  return {
    url: `redis://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    freeze: () => {
      frozen = true;
      for (const s of sockets) s.pause();
    },
    thaw: () => {
      frozen = false;
      for (const s of sockets) s.resume();
    },
  };
}

t.test('a hung Redis (connections open, no answer): requests are decided by the rule within a few seconds, never hang', async (t) => {
  const proxy = await freezableProxy(t);
  const prefix = redisPrefix();
  const local = await startGateway(t, { redisUrl: proxy.url, redisPrefix: prefix, defaultRpm: 100, defaultConcurrency: 5 });
  const refuse = await startGateway(t, { redisUrl: proxy.url, redisPrefix: prefix, defaultRpm: 100, redisDown: 'refuse' });
  await until('Redis up', () => local.app.sharedCounting!.link.up && refuse.app.sharedCounting!.link.up);
  const post = (gw: { url: string }, headers: Record<string, string> = AUTH_A): Promise<Response> =>
    fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...headers },
      body: chatBody(),
    });
  t.equal((await post(local)).status, 200);
  proxy.freeze();
  const answers = await within(Promise.all([post(local), post(local), post(refuse)]), 10_000, 'answers while Redis hangs');
  t.same(
    answers.map((r) => r.status),
    [200, 200, 503],
    'local: served on local counts; refuse: 503',
  );
  t.equal(answers[2].headers.get('retry-after'), '5');
  t.ok(local.app.sharedCounting!.decidedLocally >= 2, 'counted as decided locally');
  const wrong = await within(post(local, { authorization: 'Bearer sk-wrong-key-0123456789' }), 5000, 'a wrong key while Redis hangs');
  t.equal(wrong.status, 401, 'a wrong key: 401 at once (the brake counts in Redis on the side)');
  proxy.thaw();
  await until(
    'counted in Redis again',
    async () => (await post(local)).headers.get('x-ratelimit-remaining-requests') !== null,
    10_000,
    200,
  );
});

t.test(
  'a client that leaves while the admission script waits on Redis: its entry and hold are given back when Redis answers',
  async (t) => {
    const proxy = await freezableProxy(t);
    const prefix = redisPrefix();
    const gw = await startGateway(t, { redisUrl: proxy.url, redisPrefix: prefix, defaultTpm: 1_000_000, defaultConcurrency: 1 });
    const shared = gw.app.sharedCounting!;
    await until('Redis up', () => shared.link.up);
    proxy.freeze();
    const left = leaveAfter(gw.port, 150);
    await left;
    await sleep(100);
    proxy.thaw(); // within the command timeout (1 s): the script answers after the client left
    const c = client(t);
    await until('nothing held here', () => shared.limits.live === 0, 5000);
    await until(
      'nothing held in Redis',
      async () => {
        let n = 0;
        for (const k of await c.keys(`${prefix}lim:*`))
          n += k.endsWith('heldtok') ? await c.hlen(k) : k.endsWith(':active') || k.endsWith(':held') ? await c.zcard(k) : 0;
        return n === 0;
      },
      5000,
    );
    const ok = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { ...AUTH_A, 'content-type': 'application/json' },
      body: chatBody(),
    });
    t.equal(ok.status, 200, 'the concurrency-1 key is free again');
  },
);
