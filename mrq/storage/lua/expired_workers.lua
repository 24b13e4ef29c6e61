-- expired_workers: the workers whose lease deadline has passed, on the Redis server's clock.
--
-- KEYS[1]  <p>:workers  ZSET  worker id -> lease deadline (unix seconds)
-- ARGV[1]  grace in seconds added to every deadline before it counts as expired
-- ARGV[2]  the most ids to return
--
-- Returns {ids, now}: the expired worker ids, and the server time used.

local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ids = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now - tonumber(ARGV[1]), "LIMIT", 0, tonumber(ARGV[2]))
return {ids, tostring(now)}
