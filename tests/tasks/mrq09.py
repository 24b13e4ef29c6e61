"""Task code written as for MRQ 0.9: Task classes, mrq.context helpers, the config as a dict."""

import json

from mrq.context import connections, get_current_config, get_current_job, log
from mrq.task import Task
from mrq.utils import MongoJSONEncoder


class ConfigAsDict(Task):
    def run(self, params):
        config = get_current_config()
        config["set_by_task"] = params.get("value", 1)
        log.info("config: %s", json.dumps(config))
        again = get_current_config()
        return {
            "is_dict": isinstance(config, dict),
            "json": json.loads(json.dumps(config))["redis_prefix"] == config.get("redis_prefix"),
            "custom": config["my_custom_key"],
            "set_by_task": again["set_by_task"],
            "greenlets": again.get("greenlets"),
            "config": config,
        }


class SecondRedis(Task):
    def run(self, params):
        connections.redis_second.set(params["key"], params["value"])
        assert connections.redis_second is connections.redis_second  # created once
        return connections.redis_second.get(params["key"]).decode()


class BrokenRedis(Task):
    def run(self, params):
        return connections.redis_broken.get("x")


class LogLines(Task):
    def run(self, params):
        log.debug("a debug line")
        log.info(b"latin-1 bytes: caf\xe9")
        log.info("formatted %s", b"na\xefve")
        log.warning("a warning line")
        return "logged"


def raw_factory(rawparam):
    return {"path": "tests.tasks.mrq09.Upper", "params": {"value": rawparam.decode("utf-8")}}


class Upper(Task):
    def run(self, params):
        return params["value"].upper()


class Tick(Task):
    def run(self, params):
        log.info("tick %s", json.dumps({"job": get_current_job().id, "params": params}, cls=MongoJSONEncoder))
        return params
