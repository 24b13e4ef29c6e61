"""The Lua scripts in ./lua, loaded from their files and registered once per Redis client.

Each script opens with its KEYS/ARGV contract. redis-py's Script object runs EVALSHA and
re-sends the source after a NOSCRIPT error (e.g. when Redis restarted), so callers never see it.
"""

from __future__ import annotations

import weakref
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

_NAMES = ("dequeue", "requeue_running", "lease", "expired_workers", "timed_pop", "acquire_slot")
_SOURCES: dict[str, str] = {
    name: resources.files(__package__).joinpath("lua", f"{name}.lua").read_text() for name in _NAMES
}


class Scripts:
    """The registered scripts of one Redis client: `scripts.dequeue(keys=[...], args=[...])`."""

    def __init__(self, client: redis.Redis) -> None:
        self.dequeue: Script = client.register_script(_SOURCES["dequeue"])
        self.requeue_running: Script = client.register_script(_SOURCES["requeue_running"])
        self.lease: Script = client.register_script(_SOURCES["lease"])
        self.expired_workers: Script = client.register_script(_SOURCES["expired_workers"])
        self.timed_pop: Script = client.register_script(_SOURCES["timed_pop"])
        self.acquire_slot: Script = client.register_script(_SOURCES["acquire_slot"])


_CACHE: weakref.WeakKeyDictionary[Any, Scripts] = weakref.WeakKeyDictionary()


def scripts_for(client: redis.Redis) -> Scripts:
    """The Scripts of a client, registered on first use."""
    found = _CACHE.get(client)
    if found is None:
        found = _CACHE[client] = Scripts(client)
    return found
