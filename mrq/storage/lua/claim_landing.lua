-- claim_landing: move the ids an idle worker's blocking pickup left in its landing list into its
-- running set, dropping the ids of cancelled jobs (as dequeue.lua does).
--
-- KEYS[1]  {p:q:<queue>}:landing:<worker> LIST  ids moved here by `BLMOVE <ids> <landing>`
-- KEYS[2]  {p:q:<queue>}:running:<worker> SET   ids taken by this worker, not yet finished
-- KEYS[3]  {p:q:<queue>}:cancelled        ZSET  id -> unix time it was cancelled (still listed)
--
-- The worker sends it right behind its BLMOVE on the same connection: Redis runs it as soon as
-- the BLMOVE returns, without a round trip in between. Run again (after a connection failure, or
-- by whoever recovers a dead worker) it moves whatever is left; run on an empty list it does
-- nothing. Returns the ids now in the running set.

local ids = redis.call("LRANGE", KEYS[1], 0, -1)
if #ids == 0 then
    return {}
end
redis.call("DEL", KEYS[1])
local cancelled = redis.call("ZCARD", KEYS[3]) > 0
local taken = {}
for _, id in ipairs(ids) do
    if not (cancelled and redis.call("ZREM", KEYS[3], id) == 1) then
        taken[#taken + 1] = id
    end
end
if #taken > 0 then
    redis.call("SADD", KEYS[2], unpack(taken))
end
return taken
