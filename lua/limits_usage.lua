#!lua flags=no-writes
--[[
limits_usage.lua (reads gate.lua layout version 1) - READ-ONLY view of one organization's
minute / hour / day windows, for GET /rate-limits/usage. Parsed by
cognitude/management/limits.py (UsageReader). It writes nothing: stale buckets are only pruned
by the gate's next admission, so reading usage never changes what the gate decides.

KEYS
  [1] [2] [3]  limiter hashes of the minute / hour / day windows (keys.limiter_keys(org_id))

ARGV
  [1]          now in ms since the epoch, TESTS ONLY; "" or "0" = the server's TIME

REPLY  a flat array of 6 integers, per window (minute, hour, day):
  used_i, reset_ms_i
  used      requests the gate counts in the window right now: the running total "t" minus the
            buckets that already left the window (index < lo = floor(now/g) - W/g), exactly the
            conservative count gate.lua compares with the limit
  reset_ms  ms until used next decreases, i.e. until the oldest counted bucket b drops out at
            (b+1)*g + W; 0 when the window counts nothing

HASH LAYOUT  as gate.lua's header describes it: "t" total of the bucket fields present, "p" lower
  bound of the bucket indexes present, "n" highest index present, field b % 128 -> count. The
  present buckets all lie in [p, n] with n - p <= W/g < 128, so every field in that range
  names exactly one bucket. Must change together with gate.lua (new layout = new key names).

CLOCK  the server's TIME in ms, the same clock as the gate; the ARGV override is for tests.
  A clock that stepped back behind "n" is handled as the gate does: buckets above the current
  one still count.

SHEBANG  "flags=no-writes": runs under OOM and on replicas. Redis 6.2 cannot parse the line;
  limits.py then loads the script without it (it writes nothing either way).
]]

local W = { 60000, 3600000, 86400000 }
local G = { 1000, 60000, 900000 }
local NB = { 60, 60, 96 }
local M = 128

local now = tonumber(ARGV[1])
if not now or now <= 0 then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local out = {}
for i = 1, 3 do
  local key = KEYS[i]
  local l = math.floor(now / G[i]) - NB[i]
  local h = redis.call('HMGET', key, 't', 'p', 'n')
  local t = tonumber(h[1])
  local p = tonumber(h[2])
  local n = tonumber(h[3])
  local used, reset = 0, 0
  if t and p and n and n >= l then
    -- One HMGET over [p, n] (at most W/g + 1 <= 97 fields) gives both the stale buckets to
    -- discount and the oldest counted one.
    local f = {}
    for b = p, n do
      f[#f + 1] = b % M
    end
    local v = redis.call('HMGET', key, unpack(f))
    local oldest = nil
    for j = 1, #f do
      if v[j] then
        local b = p + j - 1
        if b < l then
          t = t - tonumber(v[j])
        elseif not oldest then
          oldest = b
        end
      end
    end
    used = t
    if oldest and used > 0 then
      reset = (oldest + 1) * G[i] + W[i] - now
    end
  end
  out[#out + 1] = used
  out[#out + 1] = reset
end
return out
