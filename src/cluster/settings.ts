// The settings of several gateways sharing state (issue 17): the Redis and PostgreSQL URLs, the
// Redis key prefix and what to do while Redis is down. Parsers for the settings table (config.ts),
// beside the part they configure, like the other domains' own parsers.
import { ConfigError, quietUrl } from '../config-values.js';

/** A Redis server shared by several gateways (redis:// or rediss://), or empty for none. Never echoed: it may hold a password. */
export function redisUrl(text: string, env: string): string {
  const usage = 'must be a redis:// or rediss:// URL such as redis://127.0.0.1:6379 (or empty for none)';
  return quietUrl(text, env, ['redis:', 'rediss:'], 'a redis:// or rediss://', usage) === null ? '' : text.trim();
}

/** A PostgreSQL database for keys and usage (postgres:// or postgresql://), or empty for the SQLite file. Never echoed. */
export function postgresUrl(text: string, env: string): string {
  const usage = 'must be a postgres:// URL such as postgres://gateway@127.0.0.1:5432/gateway (or empty for the SQLite file)';
  return quietUrl(text, env, ['postgres:', 'postgresql:'], 'a postgres:// or postgresql://', usage) === null ? '' : text.trim();
}

/** What a gateway does while the shared Redis cannot be reached. */
export type RedisDownRule = 'local' | 'refuse';

export function redisDownRule(text: string, env: string): RedisDownRule {
  const value = text.trim().toLowerCase();
  if (value === 'local' || value === 'refuse') return value;
  throw new ConfigError(env, `must be local (count in this process until Redis is back) or refuse (answer 503), got "${text}"`);
}

/** The prefix of every Redis key the gateway writes, so several deployments (or tests) can share one Redis. */
export function redisPrefix(text: string, env: string): string {
  const value = text.trim();
  if (!/^[A-Za-z0-9_.:-]{1,64}$/.test(value))
    throw new ConfigError(env, `must be 1 to 64 letters, digits or _.:- such as llmgw: (got "${text}")`);
  return value;
}
