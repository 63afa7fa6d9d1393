// The key events of the alerts webhook: key.disabled and key.expiring.
//
// Every way to disable a key (admin API, console, CLI in another process) ends in the key
// registry's reload (the admin API reloads after its own writes; the poll reloads after another
// process's commit), so the watch compares the stored keys' enabled flags before and after each
// reload: one key.disabled per enabled → disabled transition, whoever made it.
//
// key.expiring: a key that is enabled, not yet expired, and expires within 7 days; checked at
// start, after each reload (a key given a near expiry is told at once) and hourly. Once per key per
// expiry value: a key whose expiry is moved gets told again about the new one. What was told is
// held in memory only, so a restart tells again about the keys still in their last week (one
// alert per key per start; receivers can group by data.key.id and data.expires_at).
import type { KeyRegistry } from '../keys/key-registry.js';
import type { Alerts } from './events.js';

export const EXPIRING_WITHIN_MS = 7 * 86_400_000;
const DEFAULT_CHECK_MS = 3_600_000;

export class KeyWatch {
  readonly #registry: KeyRegistry;
  readonly #alerts: Alerts;
  readonly #now: () => number;
  readonly #checkMs: number;
  /** Stored keys' enabled flags as of the last reload, by id. */
  #enabled = new Map<string, boolean>();
  /** `${id} ${expiresAt}` of the keys already told to be expiring. */
  #told = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #unsubscribe: (() => void) | undefined;

  constructor(registry: KeyRegistry, alerts: Alerts, opts: { now?: () => number; checkMs?: number } = {}) {
    this.#registry = registry;
    this.#alerts = alerts;
    this.#now = opts.now ?? Date.now;
    this.#checkMs = opts.checkMs ?? DEFAULT_CHECK_MS;
  }

  start(): void {
    if (this.#unsubscribe !== undefined) return;
    this.#enabled = this.#snapshot();
    this.checkExpiring();
    this.#unsubscribe = this.#registry.onReload(() => this.#reloaded());
    this.#timer = setInterval(() => this.checkExpiring(), this.#checkMs);
    this.#timer.unref();
  }

  stop(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #snapshot(): Map<string, boolean> {
    const out = new Map<string, boolean>();
    for (const k of this.#registry.index.identities()) if (k.fromDb) out.set(k.id, k.enabled);
    return out;
  }

  #reloaded(): void {
    const before = this.#enabled;
    this.#enabled = this.#snapshot();
    for (const k of this.#registry.index.identities()) {
      if (k.fromDb && !k.enabled && before.get(k.id) === true) this.#alerts.emit({ type: 'key.disabled', key: { id: k.id, name: k.name } });
    }
    this.checkExpiring();
  }

  /** Tells each key newly within its last week (public for the hourly timer's tests). */
  checkExpiring(): void {
    const now = this.#now();
    const current = new Set<string>();
    for (const k of this.#registry.index.identities()) {
      if (!k.fromDb || !k.enabled || k.expiresAt === null || k.expiresAt <= now || k.expiresAt - now > EXPIRING_WITHIN_MS) continue;
      const mark = `${k.id} ${k.expiresAt}`;
      current.add(mark);
      if (this.#told.has(mark)) continue;
      this.#alerts.emit({ type: 'key.expiring', key: { id: k.id, name: k.name }, expires_at: new Date(k.expiresAt).toISOString() });
    }
    // Only what is still in its last week is remembered: the set never outgrows the keys.
    this.#told = current;
  }
}
