-- dequeue: atomically move up to N job ids from a regular queue into a worker's running set.
--
-- KEYS[1]  {p:q:<queue>}:ids              LIST  queued job ids (RPUSH to queue)
-- KEYS[2]  {p:q:<queue>}:running:<worker> SET   ids taken by this worker, not yet finished
-- KEYS[3]  {p:q:<queue>}:delayed          ZSET  id -> unix time when it goes back to the queue
-- KEYS[4]  {p:q:<queue>}:cancelled        ZSET  id -> unix time it was cancelled (still in the list)
-- ARGV[1]  now (unix seconds, float)
-- ARGV[2]  N, the most ids to take (the worker's free greenlets)
-- ARGV[3]  "L" to take the oldest ids (FIFO), "R" for the newest (`_reverse` queues, LIFO)
--
-- First moves the delayed ids that are due (at most 1000 per call) to the end of the queue.
-- Ids of cancelled jobs are dropped as they come off the list (at most SKIP_LIMIT per call), and
-- their entries in KEYS[4] with them; entries older than a day are forgotten (the worker checks
-- every job's status anyway: a forgotten entry costs one look at MongoDB, never a run).
-- Returns {ids, next_due}: the ids taken (possibly none) and, when fewer than N were taken, the
-- due time of the earliest remaining delayed id as a string ("" if none), or `now` when the call
-- stopped at SKIP_LIMIT with ids left in the list, so that the worker looks again at once.

local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local SKIP_LIMIT = 5000

local due = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now, "LIMIT", 0, 1000)
if #due > 0 then
    redis.call("ZREM", KEYS[3], unpack(due))
    redis.call("RPUSH", KEYS[1], unpack(due))
end

local cancelled = redis.call("ZCARD", KEYS[4]) > 0
if cancelled then
    redis.call("ZREMRANGEBYSCORE", KEYS[4], "-inf", now - 86400)
end

local taken = {}
local skipped = 0
while #taken < n do
    local want = n - #taken
    local ids
    if ARGV[3] == "R" then
        local newest = redis.call("LRANGE", KEYS[1], -want, -1)
        if #newest > 0 then redis.call("LTRIM", KEYS[1], 0, -(#newest + 1)) end
        ids = {}
        for i = #newest, 1, -1 do ids[#ids + 1] = newest[i] end
    else
        ids = redis.call("LRANGE", KEYS[1], 0, want - 1)
        if #ids > 0 then redis.call("LTRIM", KEYS[1], #ids, -1) end
    end
    if #ids == 0 then break end
    for _, id in ipairs(ids) do
        if cancelled and redis.call("ZREM", KEYS[4], id) == 1 then
            skipped = skipped + 1
        else
            taken[#taken + 1] = id
        end
    end
    if not cancelled or #ids < want or skipped >= SKIP_LIMIT then break end
end
if #taken > 0 then
    redis.call("SADD", KEYS[2], unpack(taken))
end

local next_due = ""
if #taken < n then
    if skipped >= SKIP_LIMIT and redis.call("LLEN", KEYS[1]) > 0 then
        next_due = ARGV[1]
    else
        local first = redis.call("ZRANGE", KEYS[3], 0, 0, "WITHSCORES")
        if #first > 0 then next_due = first[2] end
    end
end
return {taken, next_due}
