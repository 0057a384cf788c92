#!lua
--[[
gate.lua (layout version 1, contract version 3) - one EVALSHA per proxied request: decides the
minute / hour / day sliding windows of one organization, and optionally those of one of its API
keys, and, if admitted, returns the cached response in the same round trip. Parsed by
cognitude/gate.py (Gate.check); contract in DESIGN section 6.
Contract version 2 added ARGV[7..10] (key-level windows), version 3 ARGV[11] (the org's Redis
epoch); every earlier call is still valid and means the same. The hash layout is unchanged
(layout version 1).

KEYS  nwin = ARGV[7] window keys, then the optional cache key
  [1] [2] [3]  limiter hashes of the org's minute / hour / day windows (keys.limiter_keys(org_id))
  [4] [5] [6]  only when nwin = 6: the API key's minute / hour / day windows
               (keys.key_limiter_keys(org_id, key_id))
  [nwin + 1]   optional cache key (keys.cache_key(...)); absent = no cache lookup
  [last]       only when ARGV[11] = "1": the org's epoch key (keys.epoch_key(org_id)); the
               cache key is then present only when #KEYS = nwin + 2
  Keys are always passed in, never built here, so the script is Redis Cluster safe (they share
  the org's hash tag, hence one slot).

ARGV
  [1] [2] [3]  limits of the minute / hour / day window (integers >= 0)
  [4]          cost: how many requests this call counts as (integer >= 1; default 1)
  [5]          count_hits: "1" (default) a cache hit counts like any request and a rejected
               request never reads the cache; "0" a hit is served without checking or counting
               the limits (it costs the upstream nothing), a miss is limited normally
  [6]          now in ms since the epoch, TESTS ONLY; "" or "0" = the server's TIME
  [7]          nwin: number of window keys, "3" (default, also when absent or "") or "6"
  [8] [9] [10] only when nwin = 6: limits of the key's minute / hour / day window (windows 4..6)
  [11]         "1": also return the org's epoch - the server time (ms) at which this Redis
               dataset first admitted a request of the org - creating it (no TTL) on
               admission when absent. The proxy reads the cold cache tier only for orgs whose
               Postgres entries predate their epoch (i.e. Redis lost them).
  Windows 4..6 have the lengths and granules of windows 1..3. An org's windows are shared by all
  its keys; a key's windows only by its own requests. Every window must hold.

REPLY  a flat array
  [1] allowed         1 | 0
  [2] limit           limit of the tightest window
  [3] remaining       remaining in the tightest window after this call (>= 0)
  [4] reset_ms        ms until the tightest window's remaining next increases (its oldest counted
                      bucket drops out); 0 if it holds nothing
  [5] retry_after_ms  on rejection: ms until a retry is admitted if nothing else consumes quota
                      (max over the rejecting windows; a cost above a limit can never fit, that
                      window then reports its own length); 0 when allowed
  [6] window          index of the tightest window: 1 minute, 2 hour, 3 day (the org's);
                      4 minute, 5 hour, 6 day (the key's, nwin = 6 only)
  [7] cached          the cache value, bytes exactly as stored, when admitted (or served as an
                      uncounted hit) and present; otherwise nil
  [8] epoch           only with ARGV[11] = "1": the epoch as a string, or nil when it is absent
                      and this call wrote nothing (a rejection, an uncounted hit)
  The tightest window is the one with the lowest remaining; ties go to the later reset, so that
  the reported reset is when the reported remaining really increases.
  On a count_hits="0" hit, [2]..[4] describe the windows read-only (nothing is counted).

ALGORITHM  conservative sub-bucket sliding window
  Window i has length W and granule g (1 s / 60 s / 900 s); bucket b holds the requests with
  timestamp in [b*g, (b+1)*g). At time t the window counts every bucket b >= lo = floor((t-W)/g):
  the oldest, partly overlapping bucket counts in full, so no trailing interval [t-W, t] ever
  holds more than the limit. Bucket b drops out at t' = (b+1)*g + W, which makes Retry-After
  exact: it is the first such t' at which one more request (of this cost) fits.
  Atomic across windows: if any window would exceed its limit nothing is written; otherwise all
  of them (three, or six with the key's) count the request.

HASH LAYOUT  one small listpack-encoded hash per window
  "t"  running total of all bucket fields still in the hash
  "p"  lower bound of the bucket indexes present (all present buckets are >= p)
  "n"  highest bucket index present
  b % 128 -> count, one field per non-empty bucket. Fields are indexes modulo 128 because small
  integers encode in one listpack byte instead of five; that is unambiguous because
  n - p <= W/g (<= 96) < 128 always holds: stale buckets (< lo) are deleted before a new
  bucket is written. Measured with every bucket of all three windows in use at the default
  limits (MEMORY USAGE, tests/test_gate.py): 1496 B per org on Redis 7.0, 1200 B on Valkey 9.1
  (absolute indexes as field names: 2392 B and 1968 B).
  Cost, measured the same way (commandstats): ~18 us server CPU per admitted call, ~14 us per
  rejection, with three windows. Six windows (org + key) cost ~1.5-1.6x three in the same run
  (commandstats over 5000 calls, Valkey 9.1: admitted 29-34 us vs 19-20 us; rejected by a full
  minute window 41-46 us vs 29-37 us).
  Changing this layout needs new key names in keys.py, so that two script versions never share
  a hash during a rolling deploy.

CLOCK  the server's TIME (one clock for every proxy replica), in ms. Writes after TIME are safe
  because Redis >= 5 and Valkey replicate script effects, not the script. If the clock steps
  back, the request is counted in the newest bucket already present: it then drops out later
  than it should, which can only reject more, never admit more.

TTL  limiter keys never get one: under the recommended maxmemory-policy volatile-lfu only keys
  with a TTL are eviction candidates, and an evicted limiter hash would silently reset the org's
  quota. Their memory is bounded (<= ~2 KB per org, and as much per API key with its own
  limits; stale buckets are pruned on the next admitted call). A deleted key's three hashes stay
  until their owner DELs them (keys.key_limiter_keys). Cache keys always carry a TTL (set by their
  writer, not here).

SHEBANG  "#!lua" without flags: the script may write, and under OOM the server rejects it before
  it runs (no allow-oom), so it can never stop halfway through its writes. Redis 6.2 cannot
  parse the line; gate.py then loads the script without it, and there a legacy script under
  OOM fails at its first write, which comes after all reads, so it still writes nothing.
]]

-- window length and granule in ms, and buckets per window (W / g); 4..6 (the key's) = 1..3
local W = { 60000, 3600000, 86400000, 60000, 3600000, 86400000 }
local G = { 1000, 60000, 900000, 1000, 60000, 900000 }
local NB = { 60, 60, 96, 60, 60, 96 }
local M = 128 -- bucket field modulus, > max(NB)
local SCAN = 16 -- fields per HMGET while looking for a window's oldest bucket

local cost = tonumber(ARGV[4]) or 1
if cost < 1 then
  return redis.error_reply('gate.lua: cost must be >= 1')
end
local nwin = 3
if ARGV[7] and ARGV[7] ~= '' then
  nwin = tonumber(ARGV[7])
  if nwin ~= 3 and nwin ~= 6 then
    return redis.error_reply('gate.lua: window count must be 3 or 6')
  end
end
if #KEYS < nwin then
  return redis.error_reply('gate.lua: ' .. nwin .. ' window keys expected')
end
local now = tonumber(ARGV[6])
if not now or now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local epoch_key = ARGV[11] == '1' and KEYS[#KEYS] or nil
local nkeys = epoch_key and #KEYS - 1 or #KEYS

-- An uncounted hit (count_hits "0") is served before the limits are even read; a miss then
-- goes through the limits without a second GET.
local cache_key = nkeys > nwin and KEYS[nwin + 1] or nil
local hit = false
if cache_key and ARGV[5] == '0' then
  hit = redis.call('GET', cache_key)
  cache_key = nil
end

-- Per-window state, read once. lim: limit; cnt: requests counted (buckets >= lo); lo / cur:
-- first counted and current bucket; lop / hin: bounds of the buckets present once the stale
-- ones are gone (nil: the hash is empty or holds only stale buckets); into: the bucket this
-- call counts in and its count so far; dead: stale fields to delete on admission.
local lim, cnt, lo, cur, lop, hin, into, into_n, dead = {}, {}, {}, {}, {}, {}, {}, {}, {}
for i = 1, nwin do
  local key = KEYS[i]
  lim[i] = tonumber(ARGV[i <= 3 and i or i + 4])
  if not lim[i] then
    return redis.error_reply('gate.lua: limit ' .. i .. ' is not a number')
  end
  local c = math.floor(now / G[i])
  local l = c - NB[i]
  cur[i], lo[i] = c, l
  into[i], into_n[i], cnt[i] = c, 0, 0
  -- the current bucket's field rides along: it is the one an admission increments
  local h = redis.call('HMGET', key, 't', 'p', 'n', c % M)
  local t = tonumber(h[1])
  local n = tonumber(h[3])
  if t and n >= l then
    local p = tonumber(h[2])
    if n > c then
      -- the clock stepped back: count in the newest bucket (drops out later, never earlier)
      into[i] = n
      into_n[i] = tonumber(redis.call('HGET', key, n % M))
    elseif n == c then
      into_n[i] = tonumber(h[4])
    end -- n < c: bucket c is absent and its field, if any, is a stale alias deleted below
    if p < l then
      -- buckets p .. lo-1 left the window since the last admission (fewer than W/g fields)
      local f = {}
      for b = p, l - 1 do
        f[#f + 1] = b % M
      end
      local v = redis.call('HMGET', key, unpack(f))
      local d = {}
      for j = 1, #f do
        if v[j] then
          t = t - tonumber(v[j])
          d[#d + 1] = f[j]
        end
      end
      if #d > 0 then
        dead[i] = d
      end
      p = l
    end
    lop[i], hin[i], cnt[i] = p, n, t
  elseif t then
    dead[i] = true -- only stale buckets: the admission replaces the whole hash
  end
end

local allowed = 1
for i = 1, nwin do
  if cnt[i] + cost > lim[i] then
    allowed = 0
  end
end
local counted = allowed == 1 and not hit
if hit then
  allowed = 1
end

local function drop_ms(i, b)
  return (b + 1) * G[i] + W[i] - now
end

-- First present bucket in [lop, last], a few fields per HMGET (the first probe usually hits).
local function oldest(i, last)
  local b = lop[i]
  while b and b <= last do
    local e = math.min(b + SCAN - 1, last)
    local f = {}
    for x = b, e do
      f[#f + 1] = x % M
    end
    local v = redis.call('HMGET', KEYS[i], unpack(f))
    for j = 1, #f do
      if v[j] then
        return b + j - 1
      end
    end
    b = e + 1
  end
  return nil
end

local retry = 0
local reset = {}
if allowed == 0 then
  -- Walk each rejecting window's buckets oldest first: the request fits once enough of them
  -- dropped out. The first present bucket also gives that window's reset.
  for i = 1, nwin do
    if cnt[i] + cost > lim[i] then
      local r = W[i] -- cost > limit never fits: report the window length
      local first = nil
      if hin[i] then
        local f = {}
        for b = lop[i], hin[i] do
          f[#f + 1] = b % M
        end
        local v = redis.call('HMGET', KEYS[i], unpack(f))
        local left = cnt[i]
        for j = 1, #f do
          if v[j] then
            local b = lop[i] + j - 1
            first = first or b
            left = left - tonumber(v[j])
            if left + cost <= lim[i] then
              r = drop_ms(i, b)
              break
            end
          end
        end
      end
      reset[i] = first and drop_ms(i, first) or 0
      if r > retry then
        retry = r
      end
    end
  end
end

-- Tightest window: lowest remaining after this call, ties to the later reset.
local used = counted and cost or 0
local rem = {}
local best, best_rem, best_reset = 0, nil, 0
for i = 1, nwin do
  local r = lim[i] - cnt[i] - used
  rem[i] = r > 0 and r or 0
  if not best_rem or rem[i] < best_rem then
    best_rem = rem[i]
  end
end
for i = 1, nwin do
  if rem[i] == best_rem then
    local r = reset[i]
    if not r then
      local b
      if counted then
        b = oldest(i, into[i] - 1) or into[i]
        lop[i] = b -- now exact: the next scan of this window starts at a present bucket
      else
        b = hin[i] and oldest(i, hin[i])
      end
      r = b and drop_ms(i, b) or 0
    end
    if best == 0 or r >= best_reset then
      best, best_reset = i, r
    end
  end
end

if counted then
  for i = 1, nwin do
    local key = KEYS[i]
    if hin[i] then
      if dead[i] then
        redis.call('HDEL', key, unpack(dead[i]))
      end
      local b = into[i]
      redis.call('HSET', key, b % M, (into_n[i] or 0) + cost, 't', cnt[i] + cost,
        'p', lop[i], 'n', b)
    else
      if dead[i] then
        redis.call('DEL', key)
      end
      local c = cur[i]
      redis.call('HSET', key, c % M, cost, 't', cost, 'p', c, 'n', c)
    end
  end
  if cache_key then
    hit = redis.call('GET', cache_key)
  end
end

if epoch_key then
  local epoch = redis.call('GET', epoch_key)
  if not epoch and counted then
    -- No TTL: it must live exactly as long as this dataset (a restart or flush resets it).
    epoch = tostring(now)
    redis.call('SET', epoch_key, epoch)
  end
  return { allowed, lim[best], best_rem, best_reset, retry, best, hit, epoch }
end
return { allowed, lim[best], best_rem, best_reset, retry, best, hit }
