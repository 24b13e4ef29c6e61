-- cancel: mark the ids of cancelled jobs so that the dequeue drops them without a scan of the list.
--
-- KEYS[1]  {p:q:<queue>}:delayed    ZSET  id -> unix time when it goes back to the queue
-- KEYS[2]  {p:q:<queue>}:cancelled  ZSET  id -> unix time of the cancel (ids still in the list)
-- ARGV[1]  now (unix seconds)
-- ARGV[2...] the job ids (their documents already say `cancel`)
--
-- An id found in the delayed set is removed from it: no copy is in the list, nothing to mark. Any
-- other id may sit in the list (or be on its way there, or in a worker's running set, whose
-- acknowledgement removes the mark): it is marked. A mark outlives a requeue of the job, so that
-- the old copy, not the new one, is the copy dropped. Returns the number of ids marked.

local marked = 0
for i = 2, #ARGV do
    if redis.call("ZREM", KEYS[1], ARGV[i]) == 0 then
        redis.call("ZADD", KEYS[2], ARGV[1], ARGV[i])
        marked = marked + 1
    end
end
return marked
