-- requeue_running: give back ids a worker holds (a retry, a graceful interrupt, or recovery of a
-- dead worker's jobs), atomically, in one queue.
--
-- KEYS[1]  {p:q:<queue>}:ids              LIST  queued job ids
-- KEYS[2]  {p:q:<queue>}:running:<worker> SET   ids held by the worker
-- KEYS[3]  {p:q:<queue>}:delayed          ZSET  id -> due unix time
-- ARGV     triples: id, action, score. action "q" = push to the front of the queue (it was
--          taken first, it runs first), "d" = add to the delayed set with score, "x" = drop.
--          Lowercase: only if the id is still in the running set, so that running this twice
--          (two live workers recovering the same dead worker) never duplicates an id.
--          Uppercase ("Q", "D", "X"): whether or not it is (the worker moving its own job, whose
--          document it has just changed: the move must happen even if Redis lost the entry).
--
-- Returns how many ids were moved to the queue or the delayed set.

local moved = 0
for i = 1, #ARGV, 3 do
    local id, action, score = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local held = redis.call("SREM", KEYS[2], id) == 1
    local lower = string.lower(action)
    if held or lower ~= action then
        if lower == "q" then
            redis.call("LPUSH", KEYS[1], id)
            moved = moved + 1
        elseif lower == "d" then
            redis.call("ZADD", KEYS[3], score, id)
            moved = moved + 1
        end
    end
end
return moved
