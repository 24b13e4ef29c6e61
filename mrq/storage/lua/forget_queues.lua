-- forget_queues: drop subqueues from the queue registry, unless a producer noted one since the
-- caller found it empty.
--
-- KEYS[1]      {<p>:queues}:names     ZSET  every known queue name (score 0)
-- KEYS[2]      {<p>:queues}:seen      ZSET  subqueue name -> unix time a producer last noted it
-- KEYS[2 + i]  {<p>:queues}:sub:<root>  SET  the subqueues of the root of ARGV[1 + i]
-- ARGV[1]      cutoff: a subqueue noted after this unix time is kept
-- ARGV[1 + i]  a subqueue name the caller found empty (no ids, no delayed retries, no raw params)
--
-- A producer notes a queue (ZADD seen now) in the pipeline that pushes its job, at most once a
-- minute per process; the caller's cutoff is at least five minutes old, so a queue pushed to
-- after the caller looked at it has a newer score, or is added back by that push's own ZADD.
--
-- Returns the names removed.

local cutoff = tonumber(ARGV[1])
local removed = {}
for i = 2, #ARGV do
  local name = ARGV[i]
  local seen = redis.call("ZSCORE", KEYS[2], name)
  if not seen or tonumber(seen) <= cutoff then
    redis.call("ZREM", KEYS[1], name)
    redis.call("ZREM", KEYS[2], name)
    redis.call("SREM", KEYS[1 + i], name)
    removed[#removed + 1] = name
  end
end
return removed
