-- acquire_slot: take one of the `max_concurrency` slots of a task for a job.
--
-- KEYS[1]  <p>:concurrency:<task path>  ZSET  job id -> slot expiry (unix seconds)
-- ARGV[1]  job id
-- ARGV[2]  limit (max_concurrency)
-- ARGV[3]  now (unix seconds)
-- ARGV[4]  expiry of the slot (now + the job's timeout + a margin): a slot whose holder vanished
--          without releasing it (and was not cleaned by recovery) frees itself then.
--
-- Returns 1 when the job holds a slot (also if it already held one), 0 when all are taken.

redis.call("ZREMRANGEBYSCORE", KEYS[1], "-inf", ARGV[3])
if redis.call("ZSCORE", KEYS[1], ARGV[1]) then
    return 1
end
if redis.call("ZCARD", KEYS[1]) >= tonumber(ARGV[2]) then
    return 0
end
redis.call("ZADD", KEYS[1], ARGV[4], ARGV[1])
return 1
