// The Lua scripts behind token budgets counted in Redis (cluster/shared-budgets.ts), run by ioredis
// (defineCommand). Each runs atomically, so N gateways admitting and settling at once count as one.
//
// A budget's count is one counter per key (or end user under it), period and period start:
// `<prefix>bud:{keyId}:<period>:<start>[:u:<user>]`, expiring one margin after the period's end.
// Which period it is comes from the gateway's calendar (GATEWAY_BUDGET_TZ), as the usage table's
// timestamps (the seeds) do; only the leases use Redis's TIME.
//
// Holds are leased members gatewayId|requestId of one sorted set per key, scored by expiry (Redis
// time), with `tokens:user` in a hash beside it: a key's budgets count every hold of the key, an end
// user's only theirs. The holding gateway renews them every lease/3 (BUDGET_RENEW).

/** Redis's time in ms. */
const NOW = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`;

/** Redis's time and the purge of expired holds (and their tokens). */
const PRELUDE = `${NOW}
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then redis.call('HDEL', KEYS[2], unpack(gone)) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
`;

/**
 * BUDGET_ADMIT: reads every budget's count and what is held; refused when a hard budget's used +
 * held ≥ its limit; else holds `hold` tokens (0: none). A counter that does not exist yet and whose
 * seed the caller did not pass (-1) makes the script answer {-1, line…}: the caller reads those
 * seeds (the usage table) and calls again with them; a key's counter is then created from its seed
 * (a user's only when tokens settle for them: a made-up user id leaves nothing in Redis).
 * KEYS: held zset, held hash, one counter per line.
 * ARGV: lease ms, member, hold, enforce (1/0), user ('' none), lines, then per line: limit, is a
 * user's (1/0), expire-at ms, seed (-1: unknown).
 * Returns {refused line (0 none), held by the key, held by the user, used per line…}.
 */
export const BUDGET_ADMIT = `${PRELUDE}
local lease, member, hold, enforce, user, n = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), ARGV[4] == '1', ARGV[5], tonumber(ARGV[6])
local keyHeld, userHeld = 0, 0
local v = redis.call('HVALS', KEYS[2])
for i = 1, #v do
  local c = string.find(v[i], ':', 1, true)
  local tokens = tonumber(string.sub(v[i], 1, c - 1))
  keyHeld = keyHeld + tokens
  if user ~= '' and string.sub(v[i], c + 1) == user then userHeld = userHeld + tokens end
end
local used, missing = {}, {}
for i = 1, n do
  local a = 6 + (i - 1) * 4
  local seed = tonumber(ARGV[a + 4])
  local c = redis.call('GET', KEYS[2 + i])
  if c then used[i] = tonumber(c)
  elseif seed < 0 then missing[#missing + 1] = i
  else
    used[i] = seed
    if ARGV[a + 2] == '0' then
      redis.call('SET', KEYS[2 + i], seed)
      redis.call('PEXPIREAT', KEYS[2 + i], ARGV[a + 3])
    end
  end
end
if #missing > 0 then return {-1, unpack(missing)} end
local spent, spentEnd = 0, 0
if enforce then
  for i = 1, n do
    local a = 6 + (i - 1) * 4
    local held = keyHeld
    if ARGV[a + 2] == '1' then held = userHeld end
    local ends = tonumber(ARGV[a + 3])
    if used[i] + held >= tonumber(ARGV[a + 1]) and (spent == 0 or ends > spentEnd) then spent, spentEnd = i, ends end
  end
end
if spent == 0 and hold > 0 then
  redis.call('ZADD', KEYS[1], now + lease, member)
  redis.call('HSET', KEYS[2], member, hold .. ':' .. user)
  redis.call('PEXPIRE', KEYS[1], lease * 2)
  redis.call('PEXPIRE', KEYS[2], lease * 2)
  keyHeld = keyHeld + hold
  if user ~= '' then userHeld = userHeld + hold end
end
local out = {spent, keyHeld, userHeld}
for i = 1, n do out[#out + 1] = used[i] end
return out
`;

/**
 * BUDGET_SETTLE: a request's hold (if any) is dropped and the tokens it used are added to each of
 * its budgets' counters; a level crossed by this addition (and not yet marked: SET NX, so one
 * gateway alerts) is reported. A missing counter is created from `create` (a user's first settled
 * tokens) or, at -1, left alone (its seed will count these tokens).
 * KEYS: held zset, held hash, one counter per line.
 * ARGV: member ('' none), tokens, hard (1/0), lines, levels, the levels (percent, ascending), then
 * per line: limit, expire-at ms, create (-1: only an existing counter).
 * Returns per line: used after (-1: not counted), warning levels crossed (bit i: level i), exhausted (1/0).
 */
export const BUDGET_SETTLE = `
local member, tokens, hard, n, nl = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1', tonumber(ARGV[4]), tonumber(ARGV[5])
if member ~= '' then
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], member)
end
local out = {}
for i = 1, n do
  local a = 5 + nl + (i - 1) * 3
  local k, limit, expireAt, create = KEYS[2 + i], tonumber(ARGV[a + 1]), ARGV[a + 2], tonumber(ARGV[a + 3])
  local used, warned, exhausted = -1, 0, 0
  if tokens > 0 then
    if redis.call('EXISTS', k) == 1 then used = redis.call('INCRBY', k, tokens)
    elseif create >= 0 then
      used = create + tokens
      redis.call('SET', k, used)
      redis.call('PEXPIREAT', k, expireAt)
    end
  end
  if used >= 0 then
    local before = used - tokens
    local function first(name)
      if redis.call('SET', k .. ':alert:' .. name, 1, 'NX') then
        redis.call('PEXPIREAT', k .. ':alert:' .. name, expireAt)
        return true
      end
      return false
    end
    for j = 1, nl do
      local percent = tonumber(ARGV[5 + j])
      if hard and percent >= 100 then break end
      local level = limit * percent / 100
      if used >= level and before < level and first('warn:' .. percent) then warned = warned + 2 ^ (j - 1) end
    end
    if hard and used >= limit and before < limit and first('exhausted') then exhausted = 1 end
  end
  out[#out + 1] = used
  out[#out + 1] = warned
  out[#out + 1] = exhausted
end
return out
`;

/**
 * BUDGET_RENEW: this gateway's holds get a new expiry (now + lease). A hold already dropped (the
 * gateway stalled past its lease, Redis restarted empty) is added again with its tokens: the
 * request still runs, so every gateway must count it again (as limits-scripts.ts RENEW does).
 * KEYS: per hold its key's sorted set and hash; ARGV: lease ms, then per hold its member and value.
 */
export const BUDGET_RENEW = `${NOW}
local lease = tonumber(ARGV[1])
for i = 1, #KEYS / 2 do
  local z, h, m = KEYS[2 * i - 1], KEYS[2 * i], ARGV[2 * i]
  redis.call('ZADD', z, now + lease, m)
  redis.call('HSETNX', h, m, ARGV[2 * i + 1])
  redis.call('PEXPIRE', z, lease * 2)
  redis.call('PEXPIRE', h, lease * 2)
end
return #KEYS / 2
`;
