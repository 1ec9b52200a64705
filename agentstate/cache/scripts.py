"""The hot tier's Lua scripts: each runs atomically in Redis (agentstate/cache/tier.py says why).

Keys of one session (``H``, ``E``, ``L``) and of its tenant (``S``):

* ``H`` a hash: ``gen``, the session's generation, bumped by every writer before and after its durable
  commit; created at a random value so that a lost counter never comes back equal.
* ``E`` a string, the entry: ``<built> <n> <count>`` (the generation it was read at, the items in the
  window, the session's item count) and a newline, then the info and last items (JSON). It is valid only
  while ``built`` equals ``gen``; every bump also deletes it. A hit reads ``E`` and ``gen`` with plain
  commands in one round trip (tier._fetch).
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
local function bump(h, e, init)
  if redis.call('HEXISTS', h, 'gen') == 1 then
    redis.call('HINCRBY', h, 'gen', 1)
  else
    redis.call('HSET', h, 'gen', init)
  end
  redis.call('DEL', e)
end
"""

# KEYS H, L, S; ARGV init, hot_ttl_ms. After a miss (counted here): the generation a promotion must still
# see when it installs, or false while a write is in flight. (A hit is plain commands: tier._fetch.)
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

# KEYS H, L, S, E; ARGV gen, value, hot_ttl_ms. Installs only if no write began since BEGIN_PROMOTE (the
# generation is unchanged) and none is in flight: 1 if installed, else 0.
INSTALL = _LEASED + """
if leased(KEYS[2]) then return 0 end
if redis.call('HGET', KEYS[1], 'gen') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[4], ARGV[2], 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('HINCRBY', KEYS[3], 'promotions', 1)
return 1
"""

# KEYS H, L, E; ARGV token, lease_ms, init, hot_ttl_ms. Before the durable commit: a lease, a new
# generation (and so no entry).
FENCE_BEGIN = _LEASED + """
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
bump(KEYS[1], KEYS[3], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS H, L, E; ARGV token, init, hot_ttl_ms. After the commit (or the failed write): a new generation, so
# that a promotion that read the durable store before the commit cannot install; then the lease goes.
FENCE_END = _LEASED + """
bump(KEYS[1], KEYS[3], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS H1, E1, H2, E2...; ARGV init, hot_ttl_ms. Invalidate sessions (prune, or writes whose fence could not
# reach Redis).
INVALIDATE = _LEASED + """
for i = 1, #KEYS, 2 do
  bump(KEYS[i], KEYS[i + 1], ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return #KEYS / 2
"""
