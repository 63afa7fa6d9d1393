// The Lua script behind the llama-server slots several gateways share (cluster/shared-slots.ts).
// One script with an operation name: every operation first drops expired leases and waiters,
// then does its part, then DISPATCHes: while some server has a free slot, the fairest waiter
// gets a lease there and its gateway hears of it (PUBLISH on its channel). It runs atomically in
// Redis, so N gateways deciding at once decide as one scheduler would.
//
// The rules are the local scheduler's (admission/scheduler.ts), over every gateway's requests:
// per model (group), a free slot goes to the waiting key with the fewest slots running in that
// group across all gateways (ties: the one waiting longest), within the key's share of the slots
// usable now (GATEWAY_KEY_SLOTS); the preferred server (affinity) first, else the least loaded;
// a waiter that needs more slots than are free has one server's free slots kept for it (in the
// pass; the next pass keeps them again while it stays the fairest). Across groups, the fairest
// waiter that has waited longest goes first. Not kept here: the local scheduler's extra share per
// server on a server several models share (router mode).
//
// Servers are the caller's view (its discovery: slots, state, weight), passed on every call; a
// server is named by its URL, so every gateway must name a llama-server by the same URL.
// Time is Redis's (TIME), never a gateway's: leases are compared across hosts whose clocks differ.
//
// Keys (one hash tag: one Redis Cluster slot):
//   lease  ZSET  id → expiry ms             (a running request's slots; id = gatewayId|n)
//   linfo  HASH  id → url \t group \t key \t weight
//   run    HASH  's\t'url → slots taken; 'g\t'group\tkey → slots a key holds in a group;
//                'w\t'key → its waiting requests (the per-key queue bound counts them)
//   wait   ZSET  id → order (a sequence; negative: a failover retry, before everyone)
//   winfo  HASH  id → group \t key \t weight \t candidate urls (space) \t prefer url \t prefer-until ms
//   wexp   ZSET  id → expiry ms             (a dead gateway's waiters go too)
//   seq    STRING the order sequence
// ARGV: op, caller id ('' or the id whose grant the reply itself tells: not published), lease ms,
// channel prefix (+ gatewayId), key share ('auto' | 'all' | n), servers (url\tslots\tstate\tweight
// lines), then the operation's own.
//   enter   id, group, key, weight, candidate urls, prefer url, prefer ms, front (0|1), max waiting per key
//           → {'granted', url} | {'waiting'} | {'full'}
//   release id → {'released'} (a lease given back) | {'left'} (a waiter removed) | {'none'}
//   renew   running (id\turl\tgroup\tkey\tweight lines), waiting ids (lines)
//           → lines 'id\tgranted\turl' (a grant its gateway missed) or 'id\tlost' (expired)
//           A running request whose lease expired (a gateway cut off from Redis for longer than
//           the lease) is leased again even above the slots: it runs, and counting it lets the
//           excess drain instead of growing.
//   dispatch → {}

import type { Redis, Result } from 'ioredis';

declare module 'ioredis' {
  interface RedisCommander<Context> {
    gatewaySlots(...args: (string | number)[]): Result<string[], Context>;
  }
}

const SLOT_KEYS = ['lease', 'linfo', 'run', 'wait', 'winfo', 'wexp', 'seq'] as const;

/** The Redis keys of the shared slots under `prefix` (one hash tag: one Redis Cluster slot). */
export function slotKeys(prefix: string): string[] {
  return SLOT_KEYS.map((k) => `${prefix}{slots}:${k}`);
}

/** Registers the script on `client` as client.gatewaySlots (EVALSHA, EVAL the first time). */
export function defineSlotsScript(client: Redis): void {
  client.defineCommand('gatewaySlots', { numberOfKeys: SLOT_KEYS.length, lua: SLOTS_LUA });
}

const SLOTS_LUA = `
local LEASE, LINFO, RUN, WAIT, WINFO, WEXP, SEQ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local op, caller, leaseMs, chan, keySlots = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function split(s, sep)
  local out, start = {}, 1
  while true do
    local i = string.find(s, sep, start, true)
    if not i then
      out[#out + 1] = string.sub(s, start)
      return out
    end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end

local servers, order = {}, {}
if ARGV[6] ~= '' then
  for _, line in ipairs(split(ARGV[6], '\\n')) do
    local f = split(line, '\\t')
    servers[f[1]] = { slots = tonumber(f[2]), state = f[3], weight = tonumber(f[4]) }
    order[#order + 1] = f[1]
  end
end

local function incr(field, by)
  local v = redis.call('HINCRBY', RUN, field, by)
  if v <= 0 then redis.call('HDEL', RUN, field) end
  return v
end
local srunCache, grunCache = {}, {}
local function srun(url)
  local v = srunCache[url]
  if v == nil then
    v = tonumber(redis.call('HGET', RUN, 's\\t' .. url)) or 0
    srunCache[url] = v
  end
  return v
end
local function grun(gk)
  local v = grunCache[gk]
  if v == nil then
    v = tonumber(redis.call('HGET', RUN, 'g\\t' .. gk)) or 0
    grunCache[gk] = v
  end
  return v
end

local function addLease(id, url, group, key, w)
  redis.call('ZADD', LEASE, now + leaseMs, id)
  redis.call('HSET', LINFO, id, url .. '\\t' .. group .. '\\t' .. key .. '\\t' .. w)
  srunCache[url] = incr('s\\t' .. url, w)
  grunCache[group .. '\\t' .. key] = incr('g\\t' .. group .. '\\t' .. key, w)
end
local function dropLease(id)
  local info = redis.call('HGET', LINFO, id)
  redis.call('ZREM', LEASE, id)
  if not info then return false end
  redis.call('HDEL', LINFO, id)
  local f = split(info, '\\t')
  local w = tonumber(f[4])
  srunCache[f[1]] = math.max(0, incr('s\\t' .. f[1], -w))
  grunCache[f[2] .. '\\t' .. f[3]] = math.max(0, incr('g\\t' .. f[2] .. '\\t' .. f[3], -w))
  return true
end
local function dropWaiter(id)
  local info = redis.call('HGET', WINFO, id)
  redis.call('ZREM', WAIT, id)
  redis.call('ZREM', WEXP, id)
  if not info then return false end
  redis.call('HDEL', WINFO, id)
  incr('w\\t' .. split(info, '\\t')[2], -1)
  return true
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', LEASE, '-inf', now)) do dropLease(id) end
for _, id in ipairs(redis.call('ZRANGEBYSCORE', WEXP, '-inf', now)) do dropWaiter(id) end

local function usable(s, allDown)
  if s.state == 'ready' or s.state == 'unknown' then return s.slots end
  if s.state == 'down' and allDown then return s.slots end
  return 0
end
local function everyDown(cands)
  for _, u in ipairs(cands) do
    if servers[u].state ~= 'down' then return false end
  end
  return true
end
local function share(cands, allDown)
  local total = 0
  for _, u in ipairs(cands) do total = total + usable(servers[u], allDown) end
  if keySlots == 'all' then return total end
  if keySlots == 'auto' then return math.max(1, total - 1) end
  return math.min(tonumber(keySlots), total)
end
local function open(url, id, kept)
  local k = kept[url]
  return k == nil or k == id
end
local function anyFree(kept)
  for _, u in ipairs(order) do
    local s = servers[u]
    if s.state ~= 'loading' and kept[u] == nil and s.slots > srun(u) then return true end
  end
  return false
end
local function place(wt, allDown, kept)
  local p = wt.prefer
  if p ~= '' and servers[p] then
    local cap = usable(servers[p], allDown)
    if cap - srun(p) >= wt.w and open(p, wt.id, kept) then return p end
    if wt.preferring and cap >= wt.w then return nil end
  end
  local best, bestLoad = nil, math.huge
  for _, u in ipairs(wt.cands) do
    local s, r = servers[u], srun(u)
    if usable(s, allDown) - r >= wt.w and open(u, wt.id, kept) then
      local size = s.slots * s.weight
      local load = math.huge
      if size > 0 then load = r / size end
      if best == nil or load < bestLoad then best, bestLoad = u, load end
    end
  end
  return best
end
local function keepTarget(wt, allDown, kept)
  local p = wt.prefer
  if wt.preferring and p ~= '' and servers[p] and usable(servers[p], allDown) >= wt.w then
    if usable(servers[p], allDown) - srun(p) > 0 and open(p, wt.id, kept) then return p end
    return nil
  end
  local best, bestFree = nil, 0
  for _, u in ipairs(wt.cands) do
    local cap = usable(servers[u], allDown)
    if cap >= wt.w and open(u, wt.id, kept) then
      local free = cap - srun(u)
      if free > bestFree then best, bestFree = u, free end
    end
  end
  return best
end

local function dispatch()
  local kept = {}
  if not anyFree(kept) then return end
  local ids = redis.call('ZRANGE', WAIT, 0, -1)
  if #ids == 0 then return end
  local waiters = {}
  for pos, id in ipairs(ids) do
    local info = redis.call('HGET', WINFO, id)
    if info then
      local f = split(info, '\\t')
      local cands = {}
      for _, u in ipairs(split(f[4], ' ')) do
        if servers[u] then cands[#cands + 1] = u end
      end
      local prefer = f[5]
      if not servers[prefer] then prefer = '' end
      waiters[#waiters + 1] = { id = id, pos = pos, group = f[1], key = f[2], gk = f[1] .. '\\t' .. f[2], w = tonumber(f[3]),
        cands = cands, prefer = prefer, preferring = tonumber(f[6]) > now }
    end
  end
  local skip, grants = {}, {}
  while anyFree(kept) do
    local groupBest, groups, seen = {}, {}, {}
    for _, wt in ipairs(waiters) do
      if not wt.gone and not seen[wt.gk] then
        seen[wt.gk] = true
        local running = grun(wt.gk)
        local gb = groupBest[wt.group]
        if not skip[wt.id] and #wt.cands > 0 and (gb == nil or running < gb.running) then
          local allDown = everyDown(wt.cands)
          if running + wt.w <= share(wt.cands, allDown) then
            local server = place(wt, allDown, kept)
            local fits = server ~= nil
            if not fits then server = keepTarget(wt, allDown, kept) end
            if server then
              if gb == nil then groups[#groups + 1] = wt.group end
              groupBest[wt.group] = { wt = wt, server = server, fits = fits, running = running }
            end
          end
        end
      end
    end
    local best = nil
    for _, g in ipairs(groups) do
      local gb = groupBest[g]
      if best == nil or gb.wt.pos < best.wt.pos then best = gb end
    end
    if best == nil then break end
    local wt = best.wt
    if best.fits then
      dropWaiter(wt.id)
      wt.gone = true
      addLease(wt.id, best.server, wt.group, wt.key, wt.w)
      if wt.id ~= caller then
        local gw = string.match(wt.id, '^([^|]*)|')
        grants[gw] = (grants[gw] or '') .. wt.id .. '\\t' .. best.server .. '\\n'
      end
    else
      kept[best.server] = wt.id
      skip[wt.id] = true
    end
  end
  for gw, msg in pairs(grants) do redis.call('PUBLISH', chan .. gw, msg) end
end

local result = {}
if op == 'enter' then
  local id, group, key = ARGV[7], ARGV[8], ARGV[9]
  if (tonumber(redis.call('HGET', RUN, 'w\\t' .. key)) or 0) >= tonumber(ARGV[15]) then
    result = { 'full' }
  else
    local seq = redis.call('INCR', SEQ)
    if ARGV[14] == '1' then seq = -seq end
    local preferUntil = 0
    if tonumber(ARGV[13]) > 0 then preferUntil = now + tonumber(ARGV[13]) end
    redis.call('ZADD', WAIT, seq, id)
    redis.call('ZADD', WEXP, now + leaseMs, id)
    redis.call('HSET', WINFO, id, group .. '\\t' .. key .. '\\t' .. ARGV[10] .. '\\t' .. ARGV[11] .. '\\t' .. ARGV[12] .. '\\t' .. preferUntil)
    incr('w\\t' .. key, 1)
    dispatch()
    local info = redis.call('HGET', LINFO, id)
    if info then result = { 'granted', split(info, '\\t')[1] } else result = { 'waiting' } end
  end
elseif op == 'release' then
  local id = ARGV[7]
  if dropLease(id) then result = { 'released' } elseif dropWaiter(id) then result = { 'left' } else result = { 'none' } end
  dispatch()
elseif op == 'renew' then
  if ARGV[7] ~= '' then
    for _, line in ipairs(split(ARGV[7], '\\n')) do
      local f = split(line, '\\t')
      if redis.call('HEXISTS', LINFO, f[1]) == 1 then redis.call('ZADD', LEASE, now + leaseMs, f[1])
      else addLease(f[1], f[2], f[3], f[4], tonumber(f[5])) end
    end
  end
  if ARGV[8] ~= '' then
    for _, id in ipairs(split(ARGV[8], '\\n')) do
      if redis.call('ZSCORE', WAIT, id) then
        redis.call('ZADD', WEXP, now + leaseMs, id)
      else
        local info = redis.call('HGET', LINFO, id)
        if info then result[#result + 1] = id .. '\\tgranted\\t' .. split(info, '\\t')[1]
        else result[#result + 1] = id .. '\\tlost' end
      end
    end
  end
  dispatch()
elseif op == 'dispatch' then
  dispatch()
else
  return redis.error_reply('slots: unknown op ' .. op)
end
-- Nothing outlives the gateways that use it: every call pushes the expiry of the keys on.
local keep = math.max(60000, leaseMs * 10)
for i = 1, 7 do redis.call('PEXPIRE', KEYS[i], keep) end
return result
`;
