-- move_to_back: a queued job requeued (MRQ's `Job.requeue()` on a queued job): every copy of its
-- id leaves the list, and, with ARGV[2] = "push", one copy goes to the back of the same list.
--
-- KEYS[1]  {p:q:<queue>}:ids        LIST  queued job ids
-- KEYS[2]  {p:q:<queue>}:delayed    ZSET  id -> unix time when it goes back to the queue
-- KEYS[3]  {p:q:<queue>}:cancelled  ZSET  id -> unix time of a cancel (ids still in the list)
-- ARGV[1]  the job id (its document already says `queued`, with its new `datequeued`)
-- ARGV[2]  "push" to push it back here; "" when it moved to another queue (pushed there first)
--
-- The cancel mark of the id goes with the copies removed (it marked one of them): left in place
-- it would drop the new copy. An id in no list (a worker took it a moment ago) leaves its mark:
-- that worker starts the job or drops the copy, and a second copy never runs twice (a worker
-- starts a job only from a waiting status). LREM reads the whole list: this is a single job's
-- move, as in MRQ. Returns the number of copies removed.

local removed = redis.call("LREM", KEYS[1], 0, ARGV[1])
redis.call("ZREM", KEYS[2], ARGV[1])
if removed > 0 then
    redis.call("ZREM", KEYS[3], ARGV[1])
end
if ARGV[2] == "push" then
    redis.call("RPUSH", KEYS[1], ARGV[1])
end
return removed
