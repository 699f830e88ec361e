"""The Lua scripts of a RedisTaskPool: each step on the pool is one atomic script.

Keys of one bucket's queue (see ``docs/pool.md``), all with the bucket's hash tag:

* ``due``    ZSET id -> due time (ms): the unclaimed tasks (ready and delayed);
* ``sched``  ZSET id -> due time (ms): every task in the pool (to put one back);
* ``tasks``  HASH id -> the task's msgpack record;
* ``claims`` ZSET id -> claim expiry (ms): the claimed tasks;
* ``owner``  HASH id -> the token of the claim that holds it.

Times come from the caller's wall clock (``time.time()``), except the write fence,
which is checked against the server's clock (``TIME``).
"""

from __future__ import annotations

__all__ = ["ACK", "ADD", "CLAIM", "PUT", "REAP", "RELEASE", "RENEW", "STATS"]

# A write carries a fence (unix seconds): run after it (a frozen or overloaded server
# answering long after the caller gave up), it stores nothing and returns -1.
_FENCE = """
local fence = tonumber(ARGV[1])
if fence > 0 then
    local now = redis.call('TIME')
    if tonumber(now[1]) + tonumber(now[2]) / 1000000 >= fence then
        return -1
    end
end
"""

# KEYS: due, sched, tasks. ARGV: fence, max_pending, then (id, due_ms, record) triples.
# Returns one code per task: 0 stored, 1 duplicate id, 2 over max_pending.
ADD = (
    _FENCE
    + """
local limit = tonumber(ARGV[2])
local count = redis.call('HLEN', KEYS[3])
local out = {}
for i = 3, #ARGV, 3 do
    local id = ARGV[i]
    if redis.call('HEXISTS', KEYS[3], id) == 1 then
        out[#out + 1] = 1
    elseif limit > 0 and count >= limit then
        out[#out + 1] = 2
    else
        redis.call('HSET', KEYS[3], id, ARGV[i + 2])
        redis.call('ZADD', KEYS[1], ARGV[i + 1], id)
        redis.call('ZADD', KEYS[2], ARGV[i + 1], id)
        count = count + 1
        out[#out + 1] = 0
    end
end
return out
"""
)

# KEYS: due, sched, tasks, claims, owner. ARGV: fence, then (id, due_ms, record) triples.
# Stores every task, replacing a task of the same id and dropping its claim (a rescue
# putting a task back). Returns how many were stored.
PUT = (
    _FENCE
    + """
for i = 2, #ARGV, 3 do
    local id = ARGV[i]
    redis.call('HDEL', KEYS[5], id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('HSET', KEYS[3], id, ARGV[i + 2])
    redis.call('ZADD', KEYS[1], ARGV[i + 1], id)
    redis.call('ZADD', KEYS[2], ARGV[i + 1], id)
end
return (#ARGV - 1) / 3
"""
)

# KEYS: due, tasks, claims, owner. ARGV: horizon_ms, limit, token, expiry_ms.
# Claims up to limit unclaimed tasks due by horizon_ms (earliest first) for token.
# Returns one msgpack string (a reply of many bulk strings costs the client far more
# to parse): the array id, record, due_ms, id, record, due_ms, ...
CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES',
                       'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for i = 1, #ids, 2 do
    local id = ids[i]
    redis.call('ZREM', KEYS[1], id)
    local record = redis.call('HGET', KEYS[2], id)
    if record then
        redis.call('ZADD', KEYS[3], ARGV[4], id)
        redis.call('HSET', KEYS[4], id, ARGV[3])
        out[#out + 1] = id
        out[#out + 1] = record
        out[#out + 1] = ids[i + 1]
    end
end
return cmsgpack.pack(out)
"""

# KEYS: tasks, sched, claims, owner. ARGV[1]: msgpack array id, token, id, token, ...
# Deletes each task still held by that token. Returns how many were deleted.
ACK = """
local n = 0
local held = cmsgpack.unpack(ARGV[1])
for i = 1, #held, 2 do
    local id = held[i]
    if redis.call('HGET', KEYS[4], id) == held[i + 1] then
        redis.call('HDEL', KEYS[4], id)
        redis.call('ZREM', KEYS[3], id)
        redis.call('HDEL', KEYS[1], id)
        redis.call('ZREM', KEYS[2], id)
        n = n + 1
    end
end
return n
"""

# KEYS: due, sched, claims, owner. ARGV: (id, token) pairs.
# Puts each task still held by that token back, unclaimed, at its original due time.
RELEASE = """
local n = 0
for i = 1, #ARGV, 2 do
    local id = ARGV[i]
    if redis.call('HGET', KEYS[4], id) == ARGV[i + 1] then
        redis.call('HDEL', KEYS[4], id)
        redis.call('ZREM', KEYS[3], id)
        local due = redis.call('ZSCORE', KEYS[2], id)
        if due then
            redis.call('ZADD', KEYS[1], due, id)
        end
        n = n + 1
    end
end
return n
"""

# KEYS: claims, owner. ARGV: expiry_ms, then (id, token) pairs.
# Extends each claim still held by that token. Returns the ids no longer held.
RENEW = """
local lost = {}
for i = 2, #ARGV, 2 do
    local id = ARGV[i]
    if redis.call('HGET', KEYS[2], id) == ARGV[i + 1] then
        redis.call('ZADD', KEYS[1], 'XX', ARGV[1], id)
    else
        lost[#lost + 1] = id
    end
end
return lost
"""

# KEYS: due, sched, claims, owner. ARGV: now_ms, limit.
# Claims that expired (their node died or stalled) go back, unclaimed, at their
# original due time. Returns how many.
REAP = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    local due = redis.call('ZSCORE', KEYS[2], id)
    if due then
        redis.call('ZADD', KEYS[1], due, id)
    end
end
return #ids
"""

# KEYS: due, claims. ARGV: now_ms. Returns ready, delayed, claimed.
STATS = """
local ready = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1])
local unclaimed = redis.call('ZCARD', KEYS[1])
return {ready, unclaimed - ready, redis.call('ZCARD', KEYS[2])}
"""
