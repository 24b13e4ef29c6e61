-- lease_deadlines: every worker's lease deadline and the Redis server's time, in one call.
--
-- KEYS[1]  <p>:workers  ZSET  worker id -> lease deadline (unix seconds)
--
-- Returns {entries, now}: entries is the flat list id, deadline, id, deadline... (deadlines as
-- strings), now is the server time used to judge them.

local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return {redis.call("ZRANGE", KEYS[1], 0, -1, "WITHSCORES"), tostring(now)}
