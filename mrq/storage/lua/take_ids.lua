-- take_ids: atomically move chosen job ids from a regular queue into a worker's running set (a
-- worker with --task_whitelist / --task_blacklist takes only the jobs of some task paths; the
-- others stay where they are, in their order, for other workers).
--
-- KEYS[1]  {p:q:<queue>}:ids              LIST  queued job ids
-- KEYS[2]  {p:q:<queue>}:running:<worker> SET   ids taken by this worker, not yet finished
-- KEYS[3]  {p:q:<queue>}:delayed          ZSET  id -> unix time when it goes back to the queue
-- KEYS[4]  {p:q:<queue>}:cancelled        ZSET  id -> unix time it was cancelled (still in the list)
-- ARGV[1]  now (unix seconds, float)
-- ARGV[2]  "L": remove each id's oldest copy (FIFO queues), "R": its newest (`_reverse` queues)
-- ARGV[3...] the ids to take (read from the list a moment ago)
--
-- First moves the due delayed ids to the end of the queue, as dequeue.lua does. An id no longer in
-- the list (another worker took it meanwhile) is skipped; the id of a cancelled job is removed and
-- dropped with its mark. Returns {ids taken, due time of the earliest delayed id or ""}.

local now = tonumber(ARGV[1])
local due = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", now, "LIMIT", 0, 1000)
if #due > 0 then
    redis.call("ZREM", KEYS[3], unpack(due))
    redis.call("RPUSH", KEYS[1], unpack(due))
end

local direction = 1
if ARGV[2] == "R" then direction = -1 end
local taken = {}
for i = 3, #ARGV do
    local id = ARGV[i]
    if redis.call("LREM", KEYS[1], direction, id) == 1 and redis.call("ZREM", KEYS[4], id) == 0 then
        taken[#taken + 1] = id
    end
end
if #taken > 0 then
    redis.call("SADD", KEYS[2], unpack(taken))
end

local next_due = ""
local first = redis.call("ZRANGE", KEYS[3], 0, 0, "WITHSCORES")
if #first > 0 then next_due = first[2] end
return {taken, next_due}
