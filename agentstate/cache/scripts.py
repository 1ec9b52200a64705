"""The hot tier's Lua scripts: each runs atomically in Redis (agentstate/cache/__init__.py says why).

Keys of one session (``H``, ``L``) and of its tenant (``S``):

* ``H`` a hash: ``gen`` (the session's generation, bumped by every writer before and after its durable
  commit; created at a random value so that a lost counter never comes back equal), and, when an entry
  is installed, ``built`` (the generation it was read at), ``entry`` (info and last items, JSON), ``n``
  (items in the window) and ``count`` (the session's item count). The entry is valid only while
  ``built == gen``.
* ``L`` a sorted set of leases: writer tokens scored by the time (ms, Redis clock) their lease ends. A
  live lease means a write is in flight: readers go to the durable store and nothing is promoted.
* ``S`` the tenant's counters: ``reads`` (through the cache), ``misses``, ``promotions`` (hits = reads -
  misses).
"""

from __future__ import annotations

_LEASED = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function leased(l)
  return redis.call('ZCOUNT', l, '(' .. now_ms(), '+inf') > 0
end
local function bump(h, init)
  if redis.call('HEXISTS', h, 'gen') == 1 then
    redis.call('HINCRBY', h, 'gen', 1)
  else
    redis.call('HSET', h, 'gen', init)
  end
  redis.call('HDEL', h, 'built', 'entry', 'n', 'count')
end
"""

# KEYS H, L, S; ARGV init, hot_ttl_ms. After a miss (counted here): the generation a promotion must still
# see when it installs, or false while a write is in flight. (A hit is plain commands: __init__._fetch.)
BEGIN_PROMOTE = _LEASED + """
redis.call('HINCRBY', KEYS[3], 'misses', 1)
if leased(KEYS[2]) then return false end
local g = redis.call('HGET', KEYS[1], 'gen')
if not g then
  redis.call('HSET', KEYS[1], 'gen', ARGV[1])
  g = ARGV[1]
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return g
"""

# KEYS H, L, S; ARGV gen, entry, n, count, hot_ttl_ms. Installs only if no write began since BEGIN_PROMOTE
# (the generation is unchanged) and none is in flight: 1 if installed, else 0.
INSTALL = _LEASED + """
if leased(KEYS[2]) then return 0 end
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'built', ARGV[1], 'entry', ARGV[2], 'n', ARGV[3], 'count', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('HINCRBY', KEYS[3], 'promotions', 1)
return 1
"""

# KEYS H, L; ARGV token, lease_ms, init, hot_ttl_ms. Before the durable commit: a lease, a new generation.
FENCE_BEGIN = _LEASED + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
bump(KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS H, L; ARGV token, init, hot_ttl_ms. After the commit (or the failed write): a new generation, so
# that a promotion that read the durable store before the commit cannot install; then the lease goes.
FENCE_END = _LEASED + """
bump(KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS H...; ARGV init, hot_ttl_ms. Invalidate sessions (prune, or writes whose fence could not reach Redis).
INVALIDATE = _LEASED + """
for i, h in ipairs(KEYS) do
  bump(h, ARGV[1])
  redis.call('PEXPIRE', h, ARGV[2])
end
return #KEYS
"""
