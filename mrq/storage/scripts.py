"""The Lua scripts in ./lua, loaded from their files and registered once per Redis client.

Each script opens with its KEYS/ARGV contract. redis-py's Script object runs EVALSHA and
re-sends the source after a NOSCRIPT error (e.g. when Redis restarted), so callers never see it.
Every script touches keys of one hash tag only, so it runs on one Redis Cluster slot.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

_NAMES = ("dequeue", "cancel", "lock", "requeue_running", "lease", "expired_workers", "lease_deadlines", "timed_pop",
          "acquire_slot", "take_ids", "forget_queues", "move_to_back", "claim_landing")
_SOURCES: dict[str, str] = {
    name: resources.files(__package__).joinpath("lua", f"{name}.lua").read_text() for name in _NAMES
}


class LuaScript:
    """One registered script: `script(keys=[...], args=[...], client=None)` runs it on the client it
    was registered with, or queues it on `client` (a pipeline).

    A Redis Cluster pipeline refuses EVALSHA (redis-py cannot load a missing script from inside
    it), so there the script is queued as EVAL with its source: a few hundred bytes more, and no
    NOSCRIPT error possible."""

    def __init__(self, client: Any, source: str) -> None:
        self.source = source
        self._script: Script = client.register_script(source)

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Any:
        if client is not None and _is_cluster_pipeline(client):
            return client.execute_command("EVAL", self.source, len(keys), *keys, *args)
        return self._script(keys=list(keys), args=list(args), client=client)


def _is_cluster_pipeline(client: Any) -> bool:
    from redis.cluster import ClusterPipeline

    return isinstance(client, ClusterPipeline)


class Scripts:
    """The registered scripts of one Redis client: `scripts.dequeue(keys=[...], args=[...])`."""

    def __init__(self, client: redis.Redis) -> None:
        self.dequeue = LuaScript(client, _SOURCES["dequeue"])
        self.cancel = LuaScript(client, _SOURCES["cancel"])
        self.lock = LuaScript(client, _SOURCES["lock"])
        self.requeue_running = LuaScript(client, _SOURCES["requeue_running"])
        self.lease = LuaScript(client, _SOURCES["lease"])
        self.expired_workers = LuaScript(client, _SOURCES["expired_workers"])
        self.lease_deadlines = LuaScript(client, _SOURCES["lease_deadlines"])
        self.timed_pop = LuaScript(client, _SOURCES["timed_pop"])
        self.acquire_slot = LuaScript(client, _SOURCES["acquire_slot"])
        self.take_ids = LuaScript(client, _SOURCES["take_ids"])
        self.forget_queues = LuaScript(client, _SOURCES["forget_queues"])
        self.move_to_back = LuaScript(client, _SOURCES["move_to_back"])
        self.claim_landing = LuaScript(client, _SOURCES["claim_landing"])


_CACHE: weakref.WeakKeyDictionary[Any, Scripts] = weakref.WeakKeyDictionary()


def scripts_for(client: redis.Redis) -> Scripts:
    """The Scripts of a client, registered on first use."""
    found = _CACHE.get(client)
    if found is None:
        found = _CACHE[client] = Scripts(client)
    return found
