// The failed-auth brake shared by several gateways (GATEWAY_REDIS_URL; admission/auth-brake.ts):
// each wrong credential is also counted per address in Redis (INCR + PEXPIRE, in the minute of
// Redis's clock), and the failure that reaches GATEWAY_AUTH_FAIL_LIMIT blocks the address there
// (SET PX GATEWAY_AUTH_BLOCK_MS) and tells every gateway (PUBLISH), whose own brake then refuses
// it for the block's time. So an address guessing keys across N gateways is blocked after the
// limit, not N times the limit.
//
// Auth never fails open: keys are checked in memory as before; only the brake's counting is
// shared. A gateway that missed the message (Redis down then, or started later) learns of the
// block at the address's next failure there (the script answers the block's time left). While
// Redis is down each gateway's brake counts alone.
import type { Redis, Result } from 'ioredis';
import type { AuthBrake } from '../admission/auth-brake.js';
import type { RedisLink } from './redis-link.js';

declare module 'ioredis' {
  interface RedisCommander<Context> {
    gatewayBrakeFail(...args: (string | number)[]): Result<number, Context>;
  }
}

/**
 * KEYS: the address's count base, its block key. ARGV: limit, block ms, channel, address.
 * Returns the ms the address stays blocked (0: not blocked).
 */
const FAIL = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local left = redis.call('PTTL', KEYS[2])
if left > 0 then return left end
local start = now - now % 60000
local k = KEYS[1] .. string.format('%.0f', start)
local n = redis.call('INCR', k)
if n == 1 then redis.call('PEXPIRE', k, start + 61000 - now) end
if n < tonumber(ARGV[1]) then return 0 end
redis.call('DEL', k)
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[2] .. '|' .. ARGV[4])
return tonumber(ARGV[2])
`;

export interface SharedBrakeOptions {
  readonly link: RedisLink;
  /** GATEWAY_REDIS_PREFIX */
  readonly prefix: string;
  readonly brake: AuthBrake;
  /** GATEWAY_AUTH_FAIL_LIMIT */
  readonly limit: number;
  /** GATEWAY_AUTH_BLOCK_MS */
  readonly blockMs: number;
  readonly log: { warn(obj: object, msg: string): void };
}

export class SharedBrake {
  readonly #link: RedisLink;
  readonly #prefix: string;
  readonly #brake: AuthBrake;
  readonly #channel: string;
  readonly #sub: Redis;

  constructor(opts: SharedBrakeOptions) {
    this.#link = opts.link;
    this.#prefix = opts.prefix;
    this.#brake = opts.brake;
    this.#channel = `${opts.prefix}brake:blocked`;
    const client = opts.link.client;
    client.defineCommand('gatewayBrakeFail', { numberOfKeys: 2, lua: FAIL });
    // Blocks other gateways started: "ms|address" (ms from now: the hosts' clocks may differ).
    this.#sub = opts.link.duplicate();
    this.#sub.on('error', () => {}); // the main link says when Redis is down
    this.#sub.on('ready', () => void this.#sub.subscribe(this.#channel).catch(() => undefined));
    this.#sub.on('message', (_channel: string, message: string) => {
      const bar = message.indexOf('|');
      const ms = Number(message.slice(0, bar));
      if (bar > 0 && ms > 0) this.#brake.block(message.slice(bar + 1), Date.now() + ms, Date.now());
    });
    const { limit, blockMs } = opts;
    opts.brake.onFail = (address) => {
      if (!this.#link.up) return;
      client.gatewayBrakeFail(this.#key('n', address), this.#key('b', address), limit, blockMs, this.#channel, address).then(
        (ms) => {
          if (ms > 0) this.#brake.block(address, Date.now() + ms, Date.now());
        },
        (err: Error) => opts.log.warn({ redis: 'error', error: err.message }, 'the shared failed-auth count failed'),
      );
    };
  }

  #key(what: string, address: string): string {
    return `${this.#prefix}brake:${what}:{${address}}${what === 'n' ? ':' : ''}`;
  }

  close(): void {
    this.#brake.onFail = null;
    this.#sub.disconnect();
  }
}
