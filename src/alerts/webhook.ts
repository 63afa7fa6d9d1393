// Delivers alert events (events.ts) to the operator's webhook (GATEWAY_WEBHOOK_URL), off the
// request path: emit() only queues and returns; a small pump POSTs in the background.
//
// Each delivery is one JSON body {id, type, created_at, data} signed Stripe-style:
//   X-Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
// The timestamp is signed with the body, so a receiver that refuses old timestamps (README
// "Alerts": 5 minutes) cannot be replayed an old alert; each attempt is signed afresh, so a retry
// an hour later still verifies. The same id rides every attempt (X-Gateway-Delivery): a receiver
// that saw it already can answer 2xx and ignore it.
//
// A 2xx answer is delivered; anything else (another status, a refused connection, no answer within
// the timeout) is tried again after an exponential backoff with jitter (1 s, ~3 s, ~9 s … capped at
// 10 min; 8 tries ≈ 17 minutes), then given up with an error log line. Redirects are not followed
// (a 3xx is a failure): the URL is the operator's, and it should name the receiver itself.
//
// The queue is bounded (oldest waiting delivery dropped first, counted): a receiver down for a day
// must not grow the gateway's memory. At shutdown what is pending gets one more try for at most
// 2 s, then the rest is given up with one log line: alerts are a notice, not a ledger (the usage
// table and the key database hold the truth).
import { createHmac, randomUUID } from 'node:crypto';
import { Agent, request } from 'undici';
import type { AlertEvent, Alerts } from './events.js';

export interface WebhookTuning {
  /** attempts per delivery, the first included */
  readonly tries: number;
  /** wait before the second attempt; each next one waits 3× longer */
  readonly firstDelayMs: number;
  readonly maxDelayMs: number;
  /** deliveries held at once (waiting, retrying or being sent) */
  readonly queueSize: number;
  /** one attempt's limit, connection to the end of the answer */
  readonly timeoutMs: number;
  /** how long a shutdown keeps trying what is pending */
  readonly shutdownMs: number;
  /** attempts in flight at once */
  readonly concurrency: number;
}

const DEFAULT_WEBHOOK_TUNING: WebhookTuning = {
  tries: 8,
  firstDelayMs: 1000,
  maxDelayMs: 600_000,
  queueSize: 1000,
  timeoutMs: 10_000,
  shutdownMs: 2000,
  concurrency: 4,
};

const BACKOFF_FACTOR = 3;

export interface WebhookLog {
  debug(obj: object, msg: string): void;
  warn(obj: object, msg: string): void;
  error(obj: object, msg: string): void;
}

type DeliveryResult = 'delivered' | 'failed' | 'dropped';

interface Delivery {
  readonly id: string;
  readonly type: AlertEvent['type'];
  readonly body: string;
  tries: number;
  state: 'ready' | 'sending' | 'waiting' | 'gone';
  timer: NodeJS.Timeout | undefined;
  abort: AbortController | undefined;
}

/** The X-Gateway-Signature value for `body` sent at unix second `t`. */
function signature(secret: string, t: number, body: string): string {
  return `t=${t},v1=${createHmac('sha256', secret).update(`${t}.${body}`).digest('hex')}`;
}

/** Why an attempt failed, for the log: a status, a timeout, or the socket error's code. Never the answer's body. */
function failure(err: unknown, timedOut: boolean): string {
  if (timedOut) return 'timeout';
  const e = err as { code?: string; cause?: { code?: string }; message?: string };
  return e.code ?? e.cause?.code ?? e.message ?? 'error';
}

export class WebhookSender implements Alerts {
  /** What became of each delivery so far (/metrics: llm_gateway_webhook_deliveries_total). */
  readonly counts: Record<DeliveryResult, number> = { delivered: 0, failed: 0, dropped: 0 };
  readonly #url: string;
  readonly #secret: string;
  readonly #log: WebhookLog;
  readonly #tuning: WebhookTuning;
  readonly #random: () => number;
  readonly #agent: Agent;
  /** Oldest first. At most tuning.queueSize, so the linear scans below stay small. */
  #pending: Delivery[] = [];
  #sending = 0;
  #closing = false;
  #closed = false;
  /** Set while close() waits for the queue to empty. */
  #drained: (() => void) | undefined;

  constructor(url: string, secret: string, log: WebhookLog, tuning: Partial<WebhookTuning> = {}, random: () => number = Math.random) {
    this.#url = url;
    this.#secret = secret;
    this.#log = log;
    this.#tuning = { ...DEFAULT_WEBHOOK_TUNING, ...tuning };
    this.#random = random;
    this.#agent = new Agent({ connections: this.#tuning.concurrency, keepAliveTimeout: 10_000 });
  }

  /** Deliveries not yet delivered, failed or dropped. */
  get pending(): number {
    return this.#pending.length;
  }

  emit(event: AlertEvent): void {
    try {
      if (this.#closed) {
        this.counts.dropped++;
        this.#log.warn({ event: event.type }, 'webhook: alert after shutdown, not sent');
        return;
      }
      const id = `evt_${randomUUID()}`;
      const body = JSON.stringify({ id, type: event.type, created_at: new Date().toISOString(), data: event });
      if (this.#pending.length >= this.#tuning.queueSize) this.#dropOldest();
      this.#pending.push({ id, type: event.type, body, tries: 0, state: 'ready', timer: undefined, abort: undefined });
      this.#pump();
    } catch (err) {
      // emit() is called from request hooks: it never throws into them.
      this.#log.error({ err: { message: (err as Error).message } }, 'webhook: could not queue an alert');
    }
  }

  #dropOldest(): void {
    const i = this.#pending.findIndex((d) => d.state !== 'sending');
    // Every slot is being sent (a queue no larger than the concurrency): the oldest is in flight; let it finish.
    if (i < 0) return;
    const [d] = this.#pending.splice(i, 1);
    this.#forget(d!);
    this.counts.dropped++;
    this.#log.warn({ delivery: d!.id, event: d!.type, dropped: this.counts.dropped }, 'webhook: queue full, oldest alert dropped');
  }

  #forget(d: Delivery): void {
    if (d.timer !== undefined) clearTimeout(d.timer);
    d.timer = undefined;
    d.state = 'gone';
  }

  #pump(): void {
    for (const d of this.#pending) {
      if (this.#sending >= this.#tuning.concurrency) return;
      if (d.state === 'ready')
        this.#send(d).catch((err: unknown) => {
          // #send catches the request's failures itself; this is a bug's last stop, not a crash.
          this.#log.error({ err: { message: (err as Error).message } }, 'webhook: delivery failed unexpectedly');
        });
    }
  }

  async #send(d: Delivery): Promise<void> {
    d.state = 'sending';
    d.tries++;
    this.#sending++;
    const abort = new AbortController();
    d.abort = abort;
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, this.#tuning.timeoutMs);
    timer.unref();
    let problem: string | null;
    try {
      const res = await request(this.#url, {
        method: 'POST',
        dispatcher: this.#agent,
        signal: abort.signal,
        headers: {
          'content-type': 'application/json',
          'user-agent': 'llm-gateway',
          'x-gateway-event': d.type,
          'x-gateway-delivery': d.id,
          'x-gateway-signature': signature(this.#secret, Math.floor(Date.now() / 1000), d.body),
        },
        body: d.body,
      });
      // The answer's body is not read (a receiver owes us nothing but its status), only drained.
      await res.body.dump();
      problem = res.statusCode >= 200 && res.statusCode < 300 ? null : `HTTP ${res.statusCode}`;
    } catch (err) {
      problem = failure(err, timedOut);
    } finally {
      clearTimeout(timer);
      d.abort = undefined;
      this.#sending--;
    }
    this.#settle(d, problem);
    this.#pump();
    if (this.#pending.length === 0) this.#drained?.();
  }

  #settle(d: Delivery, problem: string | null): void {
    // Dropped or given up at shutdown while this attempt ran: already counted.
    if (d.state === 'gone') return;
    const ctx = { delivery: d.id, event: d.type, attempt: d.tries };
    if (problem === null) {
      this.#remove(d);
      this.counts.delivered++;
      this.#log.debug(ctx, 'webhook: alert delivered');
      return;
    }
    if (d.tries >= this.#tuning.tries) {
      this.#remove(d);
      this.counts.failed++;
      this.#log.error({ ...ctx, reason: problem }, `webhook: alert not delivered after ${d.tries} tries, given up`);
      return;
    }
    if (this.#closing) {
      // The one last try at shutdown failed: no time left for another.
      this.#remove(d);
      this.counts.dropped++;
      return;
    }
    const delay = this.#backoff(d.tries);
    d.state = 'waiting';
    d.timer = setTimeout(() => {
      d.timer = undefined;
      d.state = 'ready';
      this.#pump();
    }, delay);
    d.timer.unref();
    // The first failure is worth a line; the following ones until the last are details.
    const retry = { ...ctx, reason: problem, retry_in_ms: delay };
    if (d.tries === 1) this.#log.warn(retry, 'webhook: alert not delivered, will retry');
    else this.#log.debug(retry, 'webhook: alert not delivered, will retry');
  }

  /** After `tries` attempts: firstDelayMs × 3^(tries-1), ±25 % jitter (so alerts that failed together do not retry together), capped. */
  #backoff(tries: number): number {
    const base = Math.min(this.#tuning.maxDelayMs, this.#tuning.firstDelayMs * BACKOFF_FACTOR ** (tries - 1));
    return Math.min(this.#tuning.maxDelayMs, Math.round(base * (0.75 + this.#random() * 0.5)));
  }

  #remove(d: Delivery): void {
    const i = this.#pending.indexOf(d);
    if (i >= 0) this.#pending.splice(i, 1);
    this.#forget(d);
  }

  /** Shutdown: whatever waits gets a try now; after shutdownMs the rest is given up (counted dropped, one log line). */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    for (const d of this.#pending)
      if (d.state === 'waiting') {
        if (d.timer !== undefined) clearTimeout(d.timer);
        d.timer = undefined;
        d.state = 'ready';
      }
    this.#pump();
    if (this.#pending.length > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, this.#tuning.shutdownMs);
        this.#drained = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    this.#closed = true;
    const left = this.#pending;
    this.#pending = [];
    if (left.length > 0) {
      for (const d of left) {
        this.#forget(d);
        d.abort?.abort();
      }
      this.counts.dropped += left.length;
      this.#log.warn({ alerts: left.length }, `webhook: ${left.length} alert(s) not delivered before shutdown, given up`);
    }
    await this.#agent.destroy().catch(() => {});
  }
}
