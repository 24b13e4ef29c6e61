-- dequeue: atomically move up to N job ids from a regular queue into a worker's running set.
--
-- KEYS[1]  {p:q:<queue>}:ids              LIST  queued job ids (RPUSH to queue)
-- KEYS[2]  {p:q:<queue>}:running:<worker> SET   ids taken by this worker, not yet finished
-- KEYS[3]  {p:q:<queue>}:delayed          ZSET  id -> unix time when it goes back to the queue
-- ARGV[1]  now (unix seconds, float)
-- ARGV[2]  N, the most ids to take (the worker's free greenlets)
-- ARGV[3]  "L" to take the oldest ids (FIFO), "R" for the newest (`_reverse` queues, LIFO)
--
-- First moves the delayed ids that are due (at most 1000 per call) to the end of the queue.
-- Returns {ids, next_due}: the ids taken (possibly none) and, when fewer than N were taken, the
-- due time of the earliest remaining delayed id as a string ("" if none), so that an idle worker
-- knows when to look again without polling.

local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])

local due = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now, "LIMIT", 0, 1000)
if #due > 0 then
    redis.call("ZREM", KEYS[3], unpack(due))
    redis.call("RPUSH", KEYS[1], unpack(due))
end

local ids
if ARGV[3] == "R" then
    ids = redis.call("LRANGE", KEYS[1], -n, -1)
    if #ids > 0 then
        redis.call("LTRIM", KEYS[1], 0, -(#ids + 1))
        -- newest first
        local reversed = {}
        for i = #ids, 1, -1 do reversed[#reversed + 1] = ids[i] end
        ids = reversed
    end
else
    ids = redis.call("LRANGE", KEYS[1], 0, n - 1)
    if #ids > 0 then
        redis.call("LTRIM", KEYS[1], #ids, -1)
    end
end
if #ids > 0 then
    redis.call("SADD", KEYS[2], unpack(ids))
end

local next_due = ""
if #ids < n then
    local first = redis.call("ZRANGE", KEYS[3], 0, 0, "WITHSCORES")
    if #first > 0 then next_due = first[2] end
end
return {ids, next_due}
