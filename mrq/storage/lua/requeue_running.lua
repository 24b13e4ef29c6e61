-- requeue_running: give back ids a worker holds (graceful interrupt, or recovery of a dead
-- worker's jobs), atomically, in one queue.
--
-- KEYS[1]  {p:q:<queue>}:ids              LIST  queued job ids
-- KEYS[2]  {p:q:<queue>}:running:<worker> SET   ids held by the worker
-- KEYS[3]  {p:q:<queue>}:delayed          ZSET  id -> due unix time
-- ARGV     triples: id, action, score. action "q" = push to the front of the queue (it was
--          taken first, it runs first), "d" = add to the delayed set with score, "x" = drop.
--
-- Only ids still present in the running set are moved, so running this twice (two live workers
-- recovering the same dead worker) never duplicates an id. Returns how many ids were moved.

local moved = 0
for i = 1, #ARGV, 3 do
    local id, action, score = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    if redis.call("SREM", KEYS[2], id) == 1 then
        if action == "q" then
            redis.call("LPUSH", KEYS[1], id)
            moved = moved + 1
        elseif action == "d" then
            redis.call("ZADD", KEYS[3], score, id)
            moved = moved + 1
        end
    end
end
return moved
