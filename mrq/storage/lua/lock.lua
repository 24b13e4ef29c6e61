-- lock: a lock whose value is the id of the worker holding it (reconciliation).
--
-- KEYS[1]  the lock key (STRING)
-- ARGV[1]  "acquire" or "release"
-- ARGV[2]  the caller's worker id
-- ARGV[3]  (acquire) seconds the lock lasts
-- ARGV[4]  (acquire) the id of a holder the caller knows to be dead (its lease is gone), or ""
--
-- acquire: take the lock when it is free, already ours (extended), or held by that dead worker;
--          returns 1, or 0 when a live worker holds it.
-- release: delete the lock only if it is ours; returns 1 if it was.

local holder = redis.call("GET", KEYS[1])
if ARGV[1] == "release" then
    if holder == ARGV[2] then
        redis.call("DEL", KEYS[1])
        return 1
    end
    return 0
end
if (not holder) or holder == ARGV[2] or (ARGV[4] ~= "" and holder == ARGV[4]) then
    redis.call("SET", KEYS[1], ARGV[2], "EX", ARGV[3])
    return 1
end
return 0
