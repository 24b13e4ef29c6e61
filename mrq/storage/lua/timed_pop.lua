-- timed_pop: take the due members of a `_timed_set` raw queue (score = unix time when due).
--
-- KEYS[1]  {p:q:<queue>}:raw  ZSET  raw param -> due unix time
-- ARGV[1]  now (unix seconds)
-- ARGV[2]  N, the most members to take
--
-- Returns {members, next_due}: the due members taken (lowest score first) and, when fewer than N
-- were due, the score of the earliest remaining member as a string ("" if none).

local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[2]))
if #due > 0 then
    redis.call("ZREM", KEYS[1], unpack(due))
end
local next_due = ""
if #due < tonumber(ARGV[2]) then
    local first = redis.call("ZRANGE", KEYS[1], 0, 0, "WITHSCORES")
    if #first > 0 then next_due = first[2] end
end
return {due, next_due}
