// Red team, issue 17 (shared slots): requests that leave at every stage (while entering, waiting,
// right at their grant, while running), on three gateways at once, leave nothing behind in Redis:
// no lease, no waiter, no count; every key under the prefix expires; never more than the slots.
import { once } from 'node:events';
import net from 'node:net';
import t, { type Test } from 'tap';
import { QueueLeft } from '../../src/admission/fair-queue.js';
import type { SlotState } from '../../src/admission/scheduler.js';
import { RedisLink } from '../../src/cluster/redis-link.js';
import { SharedScheduler, type SharedServer } from '../../src/cluster/shared-slots.js';
import { slotKeys } from '../../src/cluster/slots-script.js';
import { sleep, until, within } from '../helpers.js';
import { REDIS_URL, redisPrefix } from './harness.js';

const quiet = { info: () => {}, error: () => {}, warn: () => {} };

interface Server extends SharedServer {
  slots: number;
  state: SlotState;
}

async function gateways(
  t: Test,
  n: number,
  prefix: string,
  server: Server,
  o: { leaseMs?: number; url?: string; whenDown?: 'local' | 'refuse'; timeoutMs?: number } = {},
): Promise<SharedScheduler[]> {
  const out: SharedScheduler[] = [];
  for (let i = 0; i < n; i++) {
    const link = new RedisLink(o.url ?? REDIS_URL, quiet);
    await link.ready();
    const gw = new SharedScheduler({
      maxQueue: 1000,
      maxQueuePerKey: 1000,
      timeoutMs: o.timeoutMs ?? 30_000,
      keySlots: 'all',
      link,
      prefix,
      gatewayId: `gw${i}`,
      leaseMs: o.leaseMs ?? 3000,
      whenDown: o.whenDown ?? 'local',
      servers: () => [server],
      refusal: () => REFUSED,
      log: quiet,
    });
    t.teardown(async () => {
      gw.close();
      await link.close();
    });
    out.push(gw);
  }
  return out;
}

const REFUSED = new Error('refused: shared state unavailable');

/** A TCP proxy to the machine's Redis that can freeze: connections stay open, nothing passes (a partition without reset, a hung Redis). */
async function freezingProxy(t: Test): Promise<{ url: string; freeze(): void }> {
  const target = new URL(REDIS_URL);
  let frozen = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(target.port || 6379), target.hostname);
    for (const so of [client, upstream]) {
      sockets.add(so);
      so.on('error', () => {});
      so.on('close', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('data', (d) => frozen || upstream.write(d));
    upstream.on('data', (d) => frozen || client.write(d));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => {
    for (const so of sockets) so.destroy();
    server.close();
  });
  return { url: `redis://127.0.0.1:${(server.address() as net.AddressInfo).port}`, freeze: () => (frozen = true) };
}

t.test('leaving at every stage on three gateways leaves no lease, waiter or count behind, and every key expires', async (t) => {
  const prefix = redisPrefix();
  const server: Server = { index: 0, url: 'http://127.0.0.1:9199', slots: 2, state: 'ready', weight: 1 };
  const gws = await gateways(t, 3, prefix, server);
  const probe = new RedisLink(REDIS_URL, quiet);
  await probe.ready();
  t.teardown(async () => {
    await probe.client.del(...slotKeys(prefix));
    await probe.close();
  });
  let inFlight = 0;
  let most = 0;
  let done = 0;
  const N = 90;
  const all: Promise<void>[] = [];
  for (let i = 0; i < N; i++) {
    const gw = gws[i % 3]!;
    const ticket = gw.enter(`k${i % 4}`, 'm', [server]);
    const how = i % 5;
    // Counted in flight from its grant to its release (a cancel is a release): what llama-server would see.
    let counted = false;
    let cancelled = false;
    const end = (): void => {
      if (counted) inFlight--;
      counted = false;
    };
    all.push(
      (async () => {
        if (how === 0)
          ticket.cancel(); // left while its ENTER is in flight
        else if (how === 1)
          setTimeout(
            () => {
              cancelled = true;
              end();
              ticket.cancel(); // left while waiting (or just after its grant)
            },
            5 + (i % 7) * 3,
          );
        try {
          const a = await ticket.admitted;
          if (!cancelled) {
            counted = true;
            inFlight++;
            most = Math.max(most, inFlight);
          }
          if (how !== 2) await sleep(3 + (i % 5) * 2); // else: right at its grant
          end();
          a.release();
        } catch (err) {
          if (!(err instanceof QueueLeft)) throw err;
        }
        done++;
      })(),
    );
  }
  await Promise.all(all);
  t.equal(done, N);
  t.ok(most <= 2, `never more than the 2 slots in flight (${most})`);
  const keys = slotKeys(prefix);
  await until(
    'nothing left in Redis',
    async () => {
      const [lease, wait, run] = await Promise.all([
        probe.client.zcard(keys[0]!),
        probe.client.zcard(keys[3]!),
        probe.client.hgetall(keys[2]!),
      ]);
      return lease === 0 && wait === 0 && Object.keys(run).length === 0 ? true : undefined;
    },
    5000,
    20,
  );
  for (const gw of gws) t.equal(gw.running + gw.waiting, 0);
  const found = await probe.client.keys(`${prefix}*`);
  for (const k of found) t.ok((await probe.client.pttl(k)) > 0, `${k} expires`);
});

for (const whenDown of ['local', 'refuse'] as const)
  t.test(
    `Redis stops answering but the connection stays open (partition, hung Redis): waiters are not left to the queue deadline (${whenDown})`,
    async (t) => {
      const prefix = redisPrefix();
      const server: Server = { index: 0, url: 'http://127.0.0.1:9198', slots: 1, state: 'ready', weight: 1 };
      const proxy = await freezingProxy(t);
      const [g] = (await gateways(t, 1, prefix, server, { url: proxy.url, leaseMs: 900, whenDown, timeoutMs: 20_000 })) as [
        SharedScheduler,
      ];
      t.teardown(async () => {
        const c = new RedisLink(REDIS_URL, quiet);
        await c.ready();
        await c.client.del(...slotKeys(prefix));
        await c.close();
      });
      await g.enter('A', 'm', [server]).admitted;
      const waiter = g.enter('B', 'm', [server]);
      await until('B waiting', () => g.waitingFor('B') === 1);
      await sleep(300); // its ENTER answered: it waits in Redis (not in flight)
      proxy.freeze();
      if (whenDown === 'local') {
        const a = await within(waiter.admitted, 8000, 'the waiter goes on in this process');
        t.equal(a.server, server);
      } else await t.rejects(within(waiter.admitted, 8000, 'the waiter refused'), REFUSED);
    },
  );
