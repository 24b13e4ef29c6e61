"""MRQ 0.9 task code written for pymongo 3 (MRQ pinned it): insert, update, remove, count,
find_and_modify, save, ensure_index on the collections `mrq.context.connections` hands out."""

import json

from mrq.context import connections, get_current_job, log, retry_current_job
from mrq.task import Task
from mrq.utils import MongoJSONEncoder


class Pymongo3Calls(Task):
    def run(self, params):
        coll = connections.mongodb_jobs.tests_pymongo3
        coll.ensure_index([("kind", 1)], background=True)
        one = coll.insert({"kind": "a", "n": 1})
        many = coll.insert([{"kind": "b", "n": 2}, {"kind": "b", "n": 3}], w=1)
        ids = [one, *many]
        every = {"_id": {"$in": ids}}
        counts = {
            "all": coll.count(every),
            "b": coll.count({"kind": "b"}),
            "cursor": coll.find(every).count(),
            "cursor_limited": coll.find(every).skip(1).limit(5).count(with_limit_and_skip=True),
            "cursor_unlimited": coll.find(every).limit(1).count(),
        }
        # pymongo 3's positional form: update(spec, document, upsert, manipulate, multi)
        positional = coll.update({"kind": "b"}, {"$inc": {"n": 10}}, False, False, True)
        single = coll.update({"_id": one}, {"$set": {"seen": True}})
        upserted = coll.update({"_id": "new-one"}, {"$set": {"kind": "c"}}, upsert=True)
        replaced = coll.update({"_id": "new-one"}, {"kind": "c", "replaced": True})
        before = coll.find_and_modify({"_id": one}, {"$inc": {"n": 1}})
        after = coll.find_and_modify(query={"_id": one}, update={"$inc": {"n": 1}}, new=True, fields={"n": 1})
        first_b = coll.find_and_modify({"kind": "b"}, {"$set": {"first": True}}, sort=[("n", -1)], new=True)
        made = coll.find_and_modify({"_id": "made"}, {"$set": {"kind": "d"}}, upsert=True, new=True)
        saved_id = coll.save({"kind": "e"})
        coll.save({"_id": saved_id, "kind": "e", "again": True})
        gone = coll.find_and_modify({"_id": "made"}, remove=True)
        removed_one = coll.remove({"kind": "b"}, multi=False)
        removed = coll.remove({"_id": {"$in": [*ids, "new-one", saved_id]}})
        result = {
            "ids": ids, "counts": counts, "positional": positional, "single": single,
            "upserted": upserted, "replaced": replaced,
            "before": before["n"], "after": after, "first_b": first_b["n"], "made": made, "gone": gone["kind"],
            "saved_again": saved_id is not None, "removed_one": removed_one, "removed": removed,
            "left": coll.count({"_id": {"$in": ids}}),
            "logs_count": connections.mongodb_logs.mrq_logs.find({"job": "none"}).count(),
            "indexes": sorted(coll.index_information()),
        }
        log.info("pymongo 3 calls: %s", json.dumps(result, cls=MongoJSONEncoder))
        return json.loads(json.dumps(result, cls=MongoJSONEncoder))


class BadPymongo3Call(Task):
    def run(self, params):
        coll = connections.mongodb_jobs.tests_pymongo3
        if params["call"] == "multi_replace":
            return coll.update({"_id": "x"}, {"kind": "no operators"}, multi=True)
        if params["call"] == "both":
            return coll.find_and_modify({"_id": "x"}, {"$set": {"a": 1}}, remove=True)
        if params["call"] == "neither":
            return coll.find_and_modify({"_id": "x"})
        return coll.insert([])


class CountRuns(Task):
    """Counts its runs per job in Redis (a job that ran twice would show 2)."""

    def run(self, params):
        job = get_current_job()
        connections.redis.hincrby(params["key"], str(job.id), 1)
        connections.redis.rpush(params["key"] + ":order", params["name"])
        return params["name"]


class RetryLater(Task):
    def run(self, params):
        retry_current_job(delay=params["delay"], max_retries=5)
