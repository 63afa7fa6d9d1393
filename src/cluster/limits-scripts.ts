// The Lua scripts behind the shared per-key limits (cluster/shared-limits.ts), run by ioredis
// (defineCommand: EVALSHA, EVAL when the server does not know the script yet). Each runs
// atomically in Redis, so N gateways counting at once count exactly as one would.
//
// Time is Redis's own (TIME inside the script), never the caller's: the windows are aligned to
// the clock (a minute, a UTC day) and every gateway must see the same window and the same expiry
// scores, while the clocks of several hosts differ. (Redis ≥ 5 replicates a script's effects, not
// the script, so TIME inside a script is allowed.)
//
// Keys of one API key share a hash tag ({keyId}) and the window keys are made inside the script
// from the bases it is given (base .. window start): one key slot per API key.
//
// Concurrency entries and token holds are sorted-set members (gatewayId|requestId) whose score is
// their expiry in ms; every script drops the expired ones first, and the holding gateway renews
// its live ones (RENEW) every lease/3, adding back any Redis dropped meanwhile. A dead gateway's
// entries are gone within one lease.

/** Redis's time in ms, the end of its minute and day, and the purge of expired members. */
const PRELUDE = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local minuteStart = now - now % 60000
local dayStart = now - now % 86400000
local function key(base, start) return base .. string.format('%.0f', start) end
local function purge(z, h)
  if h then
    local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
    if #gone > 0 then redis.call('HDEL', h, unpack(gone)) end
  end
  redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
end
local function add(k, amount, expireMs)
  redis.call('INCRBY', k, amount)
  redis.call('PEXPIRE', k, expireMs)
end
`;

/**
 * ADMIT: checks every limit of a key and, when none refuses, counts the request, adds its
 * concurrency entry and its token hold.
 * KEYS: rpm base, tpm base, tpd base, active zset, held zset, held-tokens hash.
 * ARGV: rpm, tpm, tpd, concurrency (-1: none), member, tokens to hold (0: none), lease ms.
 * Returns: refused (0 none, 1 rpm, 2 tpm, 3 tpd, 4 concurrency), ms until that window resets,
 * requests counted this minute, ms until the minute resets, tokens counted (used + held, per
 * minute when there is a tpm limit, else per day), ms until that window resets.
 */
export const ADMIT = `${PRELUDE}
local rpm, tpm, tpd, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local member, hold, lease = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local rpmKey, tpmKey, tpdKey = key(KEYS[1], minuteStart), key(KEYS[2], minuteStart), key(KEYS[3], dayStart)
local minuteLeft, dayLeft = minuteStart + 60000 - now, dayStart + 86400000 - now
local function num(k) return tonumber(redis.call('GET', k) or '0') end
local held = 0
if tpm >= 0 or tpd >= 0 then
  purge(KEYS[5], KEYS[6])
  local v = redis.call('HVALS', KEYS[6])
  for i = 1, #v do held = held + tonumber(v[i]) end
end
local requests = 0
if rpm >= 0 then requests = num(rpmKey) end
local tokens, tokensLeft = 0, minuteLeft
if tpm >= 0 then tokens = num(tpmKey) + held elseif tpd >= 0 then tokens, tokensLeft = num(tpdKey) + held, dayLeft end
local refused, retry = 0, 0
if rpm >= 0 and requests >= rpm then refused, retry = 1, minuteLeft
elseif tpm >= 0 and num(tpmKey) + held >= tpm then refused, retry = 2, minuteLeft
elseif tpd >= 0 and num(tpdKey) + held >= tpd then refused, retry = 3, dayLeft
elseif conc >= 0 then
  purge(KEYS[4], nil)
  if redis.call('ZCARD', KEYS[4]) >= conc then refused, retry = 4, 1000 end
end
if refused == 0 then
  if rpm >= 0 then
    add(rpmKey, 1, minuteLeft + 1000)
    requests = requests + 1
  end
  if conc >= 0 then
    redis.call('ZADD', KEYS[4], now + lease, member)
    redis.call('PEXPIRE', KEYS[4], lease * 2)
  end
  if hold > 0 then
    redis.call('ZADD', KEYS[5], now + lease, member)
    redis.call('HSET', KEYS[6], member, hold)
    redis.call('PEXPIRE', KEYS[5], lease * 2)
    redis.call('PEXPIRE', KEYS[6], lease * 2)
    tokens = tokens + hold
  end
end
return {refused, retry, requests, minuteLeft, tokens, tokensLeft}
`;

/**
 * SETTLE: a request's hold (if any) is replaced by the tokens it used, counted in the key's minute
 * and day. KEYS: tpm base, tpd base, held zset, held-tokens hash. ARGV: member ('' none), tokens.
 */
export const SETTLE = `${PRELUDE}
local member, used = ARGV[1], tonumber(ARGV[2])
if member ~= '' then
  redis.call('ZREM', KEYS[3], member)
  redis.call('HDEL', KEYS[4], member)
end
if used > 0 then
  add(key(KEYS[1], minuteStart), used, minuteStart + 61000 - now)
  add(key(KEYS[2], dayStart), used, dayStart + 86401000 - now)
end
return 1
`;

/**
 * RENEW: this gateway's live entries get a new expiry (now + lease). An entry already dropped (the
 * gateway stalled past its lease, Redis restarted empty or lost it in a failover) is added again,
 * with its tokens for a hold: the request still runs, so every gateway must count it again (the
 * excess over a limit then drains instead of growing).
 * KEYS: sorted sets and hashes; ARGV: lease ms, then per key its member and '' (a sorted set) or
 * the tokens held (a hash: set only if missing).
 */
export const RENEW = `${PRELUDE}
local lease = tonumber(ARGV[1])
for i = 1, #KEYS do
  local m, v = ARGV[2 * i], ARGV[2 * i + 1]
  if v == '' then redis.call('ZADD', KEYS[i], now + lease, m) else redis.call('HSETNX', KEYS[i], m, v) end
  redis.call('PEXPIRE', KEYS[i], lease * 2)
end
return #KEYS
`;
