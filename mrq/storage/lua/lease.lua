-- lease: register, renew or release a worker's lease, on the Redis server's clock.
--
-- KEYS[1]  <p>:workers  ZSET  worker id -> lease deadline (unix seconds, Redis server time)
-- ARGV[1]  worker id
-- ARGV[2]  "register" | "renew" | "release"
-- ARGV[3]  lease length in seconds (register, renew)
--
-- register: add or refresh the entry; returns 1.
-- renew:    refresh the entry only if it still exists; returns 1, or 0 when it is gone (another
--           worker declared this one dead and took its jobs back, or Redis lost its data).
-- release:  remove the entry; returns 1 if it existed.

local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local id, mode = ARGV[1], ARGV[2]

if mode == "release" then
    return redis.call("ZREM", KEYS[1], id)
end
local deadline = now + tonumber(ARGV[3])
if mode == "renew" then
    if redis.call("ZSCORE", KEYS[1], id) == false then
        return 0
    end
end
redis.call("ZADD", KEYS[1], deadline, id)
return 1
