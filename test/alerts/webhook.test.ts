// The webhook sender on its own, against a local receiver: the signed body and headers, retries
// after failures then delivered, giving up after the last try, the backoff's steps, the bounded
// queue, emit() never blocking or throwing, and shutdown's last try. Backoffs are shortened
// through the tuning option (no fake clock: the waits are a few ms).
import t from 'tap';
import type { AlertEvent } from '../../src/alerts/events.js';
import { WebhookSender, type WebhookLog, type WebhookTuning } from '../../src/alerts/webhook.js';
import { until, type Teardown } from '../helpers.js';
import { SECRET, startReceiver, verify } from './receiver.js';

interface Line {
  level: 'debug' | 'warn' | 'error';
  obj: Record<string, unknown>;
  msg: string;
}

function capture(): { log: WebhookLog; lines: Line[] } {
  const lines: Line[] = [];
  const at =
    (level: Line['level']) =>
    (obj: object, msg: string): void => {
      lines.push({ level, obj: obj as Record<string, unknown>, msg });
    };
  return { log: { debug: at('debug'), warn: at('warn'), error: at('error') }, lines };
}

function sender(t: Teardown, url: string, tuning: Partial<WebhookTuning> = {}, random = () => 0.5) {
  const { log, lines } = capture();
  const s = new WebhookSender(url, SECRET, log, { firstDelayMs: 1, maxDelayMs: 20, ...tuning }, random);
  t.teardown(() => s.close());
  return { s, lines };
}

const DISABLED: AlertEvent = { type: 'key.disabled', key: { id: 'key_0123456789ab', name: 'alice' } };
const EXPIRING: AlertEvent = {
  type: 'key.expiring',
  key: { id: 'key_0123456789ab', name: 'alice' },
  expires_at: '2031-01-08T00:00:00.000Z',
};

t.test('a delivery: whole body, headers, a signature the README check accepts', async (t) => {
  const rx = await startReceiver(t);
  const { s, lines } = sender(t, rx.url);
  const before = Date.now();
  s.emit(DISABLED);
  await until('delivered', () => s.counts.delivered === 1);
  t.equal(rx.received.length, 1);
  const got = rx.received[0]!;
  const { id, created_at } = got.json;
  t.match(id, /^evt_[0-9a-f-]{36}$/);
  t.ok(Date.parse(created_at) >= before - 1000 && Date.parse(created_at) <= Date.now(), 'created_at is now');
  t.same(got.json, { id, type: 'key.disabled', created_at, data: DISABLED }, 'the whole body');
  t.equal(got.body, JSON.stringify({ id, type: 'key.disabled', created_at, data: DISABLED }), 'exactly these bytes');
  t.same(
    {
      'content-type': got.headers['content-type'],
      'user-agent': got.headers['user-agent'],
      'x-gateway-event': got.headers['x-gateway-event'],
      'x-gateway-delivery': got.headers['x-gateway-delivery'],
      'content-length': got.headers['content-length'],
    },
    {
      'content-type': 'application/json',
      'user-agent': 'llm-gateway',
      'x-gateway-event': 'key.disabled',
      'x-gateway-delivery': id,
      'content-length': String(Buffer.byteLength(got.body)),
    },
  );
  const sig = got.headers['x-gateway-signature'] as string;
  t.match(sig, /^t=\d+,v1=[0-9a-f]{64}$/);
  t.ok(verify(sig, got.body), 'verifies with the secret');
  t.notOk(verify(sig, got.body, 'whsec-another-secret-0123456789abcdef'), 'not with another secret');
  t.notOk(verify(sig, got.body.replace('alice', 'mallory')), 'not for a changed body');
  t.notOk(verify(sig, got.body, SECRET, 300, Date.now() / 1000 + 301), 'not once older than the tolerance (a replay)');
  t.same(s.counts, { delivered: 1, failed: 0, dropped: 0 });
  t.equal(s.pending, 0);
  t.same(
    lines.map((l) => [l.level, l.msg]),
    [['debug', 'webhook: alert delivered']],
  );
});

t.test('500s are retried with the same id and body, each attempt signed afresh, then delivered', async (t) => {
  const rx = await startReceiver(t, [500, 502, 204]);
  const { s, lines } = sender(t, rx.url);
  s.emit(EXPIRING);
  await until('delivered', () => s.counts.delivered === 1);
  t.equal(rx.received.length, 3);
  const [first] = rx.received;
  for (const r of rx.received) {
    t.equal(r.body, first!.body, 'same body');
    t.equal(r.headers['x-gateway-delivery'], first!.json.id, 'same delivery id');
    t.ok(verify(r.headers['x-gateway-signature'] as string, r.body), 'signature verifies');
  }
  t.same(s.counts, { delivered: 1, failed: 0, dropped: 0 });
  const id = first!.json.id;
  t.same(lines, [
    {
      level: 'warn',
      obj: { delivery: id, event: 'key.expiring', attempt: 1, reason: 'HTTP 500', retry_in_ms: 1 },
      msg: 'webhook: alert not delivered, will retry',
    },
    {
      level: 'debug',
      obj: { delivery: id, event: 'key.expiring', attempt: 2, reason: 'HTTP 502', retry_in_ms: 3 },
      msg: 'webhook: alert not delivered, will retry',
    },
    { level: 'debug', obj: { delivery: id, event: 'key.expiring', attempt: 3 }, msg: 'webhook: alert delivered' },
  ]);
});

t.test('given up after the last try: one error line, counted failed; neither secret nor URL token logged', async (t) => {
  const rx = await startReceiver(t, [503]);
  const { s, lines } = sender(t, rx.url, { tries: 4 });
  s.emit(DISABLED);
  await until('given up', () => s.counts.failed === 1);
  t.equal(rx.received.length, 4, 'four tries');
  t.same(s.counts, { delivered: 0, failed: 1, dropped: 0 });
  t.equal(s.pending, 0);
  const last = lines.at(-1)!;
  t.same(last, {
    level: 'error',
    obj: { delivery: rx.received[0]!.json.id, event: 'key.disabled', attempt: 4, reason: 'HTTP 503' },
    msg: 'webhook: alert not delivered after 4 tries, given up',
  });
  const text = JSON.stringify(lines);
  t.notMatch(text, SECRET);
  t.notMatch(text, 'token=abc');
  t.notMatch(text, 'receiver says no', "the receiver's answer is not logged");
});

t.test('backoff: ×3 from firstDelayMs, capped at maxDelayMs, ±25 % jitter', async (t) => {
  const rx = await startReceiver(t, [500]);
  const steps = async (random: () => number): Promise<unknown[]> => {
    const { s, lines } = sender(t, rx.url, { tries: 6, firstDelayMs: 4, maxDelayMs: 100 }, random);
    s.emit(DISABLED);
    await until('given up', () => s.counts.failed === 1);
    return lines.filter((l) => l.obj.retry_in_ms !== undefined).map((l) => l.obj.retry_in_ms);
  };
  t.same(await steps(() => 0.5), [4, 12, 36, 100, 100], 'no jitter: 4, 12, 36, then the cap');
  t.same(await steps(() => 0), [3, 9, 27, 75, 75], 'jitter low end: ×0.75 (of the capped step too)');
  t.same(await steps(() => 0.999999), [5, 15, 45, 100, 100], 'jitter high end: ×1.25, never over the cap');
});

t.test('a receiver that never answers: timeout counts as a failed attempt', async (t) => {
  const rx = await startReceiver(t, ['hang']);
  const { s, lines } = sender(t, rx.url, { tries: 2, timeoutMs: 50 });
  s.emit(DISABLED);
  await until('given up', () => s.counts.failed === 1);
  t.same(
    lines.map((l) => l.obj.reason),
    ['timeout', 'timeout'],
  );
});

t.test('a refused connection is a failed attempt too', async (t) => {
  const rx = await startReceiver(t);
  await rx.close();
  const { s, lines } = sender(t, rx.url, { tries: 2 });
  s.emit(DISABLED);
  await until('given up', () => s.counts.failed === 1);
  t.same(
    lines.map((l) => l.obj.reason),
    ['ECONNREFUSED', 'ECONNREFUSED'],
  );
});

t.test('bounded queue: the oldest waiting alert is dropped and counted; the rest are delivered in order', async (t) => {
  const rx = await startReceiver(t, ['hang', 200]);
  const { s, lines } = sender(t, rx.url, { queueSize: 3, concurrency: 1 });
  const ev = (name: string): AlertEvent => ({ type: 'key.disabled', key: { id: `key_${name}`, name } });
  for (const name of ['a', 'b', 'c', 'd', 'e']) s.emit(ev(name));
  t.equal(s.pending, 3, 'held: a (being sent), d, e');
  t.same(s.counts, { delivered: 0, failed: 0, dropped: 2 });
  t.same(
    lines.filter((l) => l.level === 'warn').map((l) => l.msg),
    ['webhook: queue full, oldest alert dropped', 'webhook: queue full, oldest alert dropped'],
  );
  await until('a reached the receiver', () => rx.received.length === 1);
  rx.release();
  await until('delivered', () => s.counts.delivered === 3);
  t.same(
    rx.received.map((r) => (r.json.data.key as { name: string }).name),
    ['a', 'd', 'e'],
  );
  t.same(s.counts, { delivered: 3, failed: 0, dropped: 2 });
});

t.test('emit() returns at once and never throws, even for an event it cannot serialise', async (t) => {
  const rx = await startReceiver(t, ['hang']);
  const { s, lines } = sender(t, rx.url, { shutdownMs: 10 });
  s.emit(DISABLED);
  t.equal(rx.received.length, 0, 'nothing was sent synchronously');
  t.equal(s.pending, 1);
  const bad = { type: 'key.disabled', key: { id: 'key_x', name: 'x', n: 1n } } as unknown as AlertEvent;
  t.doesNotThrow(() => s.emit(bad));
  t.same(lines.at(-1), {
    level: 'error',
    obj: { err: { message: 'Do not know how to serialize a BigInt' } },
    msg: 'webhook: could not queue an alert',
  });
  t.equal(s.pending, 1);
});

t.test('shutdown: a waiting retry is tried at once; what is still unanswered after shutdownMs is given up with one line', async (t) => {
  await t.test('a retry scheduled an hour away is delivered at close', async (t) => {
    const rx = await startReceiver(t, [500, 200]);
    const { s, lines } = sender(t, rx.url, { firstDelayMs: 3_600_000, maxDelayMs: 3_600_000 });
    s.emit(DISABLED);
    await until('first attempt failed, retry waiting', () => lines.some((l) => l.obj.retry_in_ms !== undefined));
    await s.close();
    t.equal(rx.received.length, 2);
    t.same(s.counts, { delivered: 1, failed: 0, dropped: 0 });
  });
  await t.test('a hanging receiver: close() returns after shutdownMs', async (t) => {
    const rx = await startReceiver(t, ['hang']);
    const { s, lines } = sender(t, rx.url, { shutdownMs: 50 });
    s.emit(DISABLED);
    s.emit(EXPIRING);
    await until('both reached the receiver', () => rx.received.length === 2);
    await s.close();
    t.same(s.counts, { delivered: 0, failed: 0, dropped: 2 });
    t.equal(s.pending, 0);
    t.same(lines.at(-1), {
      level: 'warn',
      obj: { alerts: 2 },
      msg: 'webhook: 2 alert(s) not delivered before shutdown, given up',
    });
    s.emit(DISABLED);
    t.same(s.counts, { delivered: 0, failed: 0, dropped: 3 }, 'an alert after shutdown is dropped');
    t.equal(rx.received.length, 2);
  });
});
