// The key watch on its own, with a clock the test moves: the 7-day edge of key.expiring, the hourly
// check (its period shortened), stop() ending both the timer and the registry listener, and
// key.disabled only for stored keys turning from enabled to disabled.
import t from 'tap';
import type { AlertEvent } from '../../src/alerts/events.js';
import { EXPIRING_WITHIN_MS, KeyWatch } from '../../src/alerts/key-watch.js';
import { KeyRegistry } from '../../src/keys/key-registry.js';
import { KEY_A, tempStore, until, type Teardown } from '../helpers.js';

const DAY_MS = 86_400_000;
const T0 = Date.parse('2031-01-01T00:00:00Z');

function watched(t: Teardown, checkMs = 3_600_000) {
  const store = tempStore(t);
  const registry = new KeyRegistry([KEY_A], store);
  const got: AlertEvent[] = [];
  let now = T0;
  const watch = new KeyWatch(registry, { emit: (e) => got.push(e) }, { now: () => now, checkMs });
  t.teardown(() => watch.stop());
  return {
    store,
    registry,
    got,
    watch,
    setNow: (ms: number) => {
      now = ms;
    },
  };
}

t.test('key.expiring at the 7-day edge: not a ms before, once at it, never for an expired or disabled key', async (t) => {
  const { store, registry, got, watch, setNow } = watched(t);
  const expiresAt = T0 + 10 * DAY_MS;
  const k = store.create({ name: 'edge', expiresAt }, T0).record;
  store.create({ name: 'off', enabled: false, expiresAt: T0 + DAY_MS }, T0);
  store.create({ name: 'past', expiresAt: T0 + 1000 }, T0);
  registry.reload();
  setNow(T0 + 2000);
  watch.start();
  t.same(got, [], 'nothing at start: edge is 10 days away, off is disabled, past has expired');
  setNow(expiresAt - EXPIRING_WITHIN_MS - 1);
  watch.checkExpiring();
  t.same(got, [], '7 days and 1 ms before: not yet');
  setNow(expiresAt - EXPIRING_WITHIN_MS);
  watch.checkExpiring();
  watch.checkExpiring();
  setNow(expiresAt - 1);
  watch.checkExpiring();
  t.same(
    got,
    [{ type: 'key.expiring', key: { id: k.id, name: 'edge' }, expires_at: '2031-01-11T00:00:00.000Z' }],
    'exactly 7 days before: once',
  );
  setNow(expiresAt);
  watch.checkExpiring();
  t.equal(got.length, 1, 'expired: nothing more');
});

t.test('the hourly check runs on its own (period shortened); stop() ends it and the reload listener', async (t) => {
  const { store, registry, got, watch, setNow } = watched(t, 5);
  const k = store.create({ name: 'timer', expiresAt: T0 + 8 * DAY_MS }, T0).record;
  registry.reload();
  watch.start();
  t.same(got, []);
  setNow(T0 + 2 * DAY_MS);
  await until('the timer told it', () => got.length === 1);
  t.same(got, [{ type: 'key.expiring', key: { id: k.id, name: 'timer' }, expires_at: '2031-01-09T00:00:00.000Z' }]);
  watch.stop();
  store.update('timer', { enabled: false }, T0);
  registry.reload();
  t.equal(got.length, 1, 'stopped: a reload tells nothing');
});

t.test('key.disabled: stored keys only, enabled → disabled only, deleted keys are not disabled', async (t) => {
  const { store, registry, got, watch } = watched(t);
  const a = store.create({ name: 'a' }, T0).record;
  store.create({ name: 'b', enabled: false }, T0);
  store.create({ name: 'c' }, T0);
  registry.reload();
  watch.start();
  store.update('a', { enabled: false }, T0);
  store.update('b', { enabled: false }, T0);
  store.revoke('c');
  registry.reload();
  t.same(got, [{ type: 'key.disabled', key: { id: a.id, name: 'a' } }]);
  registry.reload();
  t.equal(got.length, 1, 'the same state again: nothing');
});
