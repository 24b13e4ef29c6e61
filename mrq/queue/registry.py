"""The registry of known queues, in Redis under one hash tag (`{<p>:queues}`, storage/keys.py):

- `names` (ZSET, every score 0): every known queue, subqueues included, read in name order a
  page at a time (ZRANGEBYLEX), so that listing costs the same with 10 or 100,000 queues;
- `seen` (ZSET subqueue -> unix time a producer last noted it);
- `sub:<root>` (SET): the subqueues of a root, read by the workers listening on `root/`.

Producers note a queue in the pipeline that pushes its jobs, at most once a minute per process
(`note`). Workers sweep the registry now and then (`introspection.forget_empty_subqueues`): a subqueue that
no producer noted for `forget_subqueues_after` seconds and that holds nothing (no ids, no delayed
retry, no raw parameter) is dropped; one that gets a job again is noted again by that push. Plain
queues (no '/') are never forgotten: there are as many as the configuration names.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..store import strings

if TYPE_CHECKING:
    from ..store import Store

#: The shortest `forget_subqueues_after`: well above the once-a-minute note of a producer, so that
#: a subqueue in use always has a recent score.
MIN_FORGET_AFTER = 300.0
#: Subqueues looked at per round trip of a sweep, and the most a sweep looks at.
SWEEP_BATCH = 500
SWEEP_MAX = 5000


def note(store: Store, pipe: Any, name: str, root: str, is_subqueue: bool) -> None:
    """Add the registry writes for a push to `name` to the push's commands (`execute_command`: a
    pipeline or mrq.connections.Commands), once a minute at most per process and queue: the
    registry heals by itself after Redis lost its data."""
    if not store.note_once("queue:" + name):
        return
    keys = store.keys
    pipe.execute_command("ZADD", keys.known_queues, 0, name)
    if is_subqueue:
        pipe.execute_command("ZADD", keys.queues_seen, time.time(), name)
        pipe.execute_command("SADD", keys.subqueues(root), name)


def known_queue_names(store: Store) -> list[str]:
    """Every known queue name, in name order (one reply as long as the registry: the dashboard
    reads `queue_names_page` instead)."""
    return strings(store.redis.zrange(store.keys.known_queues, 0, -1))


def queue_names_page(store: Store, after: str | None = None, limit: int = 100, prefix: str = "") -> list[str]:
    """Up to `limit` known queue names after `after` (exclusive), in name order, starting with
    `prefix` when given: one ZRANGEBYLEX, whatever the number of queues."""
    low = "(" + after if after and after >= prefix else ("[" + prefix if prefix else "-")
    high = "[" + prefix + "\xff" if prefix else "+"
    return strings(store.redis.zrangebylex(store.keys.known_queues, low, high, start=0, num=limit))


def count_known(store: Store) -> int:
    return int(store.redis.zcard(store.keys.known_queues))


def subqueue_names(store: Store, root: str) -> list[str]:
    """The known subqueues (`root/...`)."""
    return sorted(strings(store.redis.smembers(store.keys.subqueues(root))))


def adopt_legacy(store: Store) -> int:
    """Move the queue names of versions before the registry (the SETs `<p>:queues` and
    `<p>:subqueues:<root>`) into it, then delete those SETs. Returns how many names were moved.
    Costs one EXISTS when there is nothing to move."""
    keys, client = store.keys, store.redis
    if not client.exists(keys.legacy_known_queues):
        return 0
    names = strings(client.smembers(keys.legacy_known_queues))
    roots = {name.split("/", 1)[0] for name in names if "/" in name}
    for root in roots:
        names += strings(client.smembers(keys.legacy_subqueues(root)))
    names = sorted(set(names))
    now = time.time()
    for start in range(0, len(names), SWEEP_BATCH):
        pipe = client.pipeline(transaction=False)
        for name in names[start:start + SWEEP_BATCH]:
            pipe.zadd(keys.known_queues, {name: 0}, nx=True)
            if "/" in name:
                pipe.zadd(keys.queues_seen, {name: now}, nx=True)
                pipe.sadd(keys.subqueues(name.split("/", 1)[0]), name)
        pipe.execute()
    client.delete(keys.legacy_known_queues, *[keys.legacy_subqueues(root) for root in sorted(roots)])
    return len(names)
