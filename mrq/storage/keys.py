"""Every Redis key and channel name mrq uses, built from the configured prefix. Nowhere else
builds a key. docs/storage.md describes each one (type, meaning, who writes and reads it).

Keys that an atomic operation (a Lua script, a MULTI) touches together share one hash tag,
`{<prefix>:q:<queue>}`, so that each such operation stays on one slot of a Redis Cluster.
Keys that no multi-key operation touches (the worker registry, paused queues...) carry no tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..exceptions import InvalidQueueName

# Letters, digits and a few safe punctuation marks; '/' separates subqueues. No whitespace, no
# ':' (the key separator), no braces (hash tags), no glob characters (pattern subscriptions).
# MRQ also accepted `/main` (one part after a leading '/'): a plain queue of that name.
_QUEUE_NAME = re.compile(r"/[A-Za-z0-9_\-.@+=]+|[A-Za-z0-9_\-.@+=]+(?:/[A-Za-z0-9_\-.@+=]+)*")
MAX_QUEUE_NAME = 200


def validate_queue_name(name: object, *, allow_subqueue_wildcard: bool = False) -> str:
    """Return the name if a job may be queued on it, else raise InvalidQueueName saying why.

    With allow_subqueue_wildcard, `name/` (a worker listening on every subqueue of name) is
    accepted too; nobody can queue a job on such a name.
    """
    if not isinstance(name, str):
        raise InvalidQueueName(f"queue name must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidQueueName("queue name is empty")
    if len(name) > MAX_QUEUE_NAME:
        raise InvalidQueueName(f"queue name is longer than {MAX_QUEUE_NAME} characters")
    if name.startswith("/") and "/" in name[1:]:
        raise InvalidQueueName(f"queue name {name!r}: a name starting with '/' is a plain queue, with no subqueues")
    base = name
    if name.endswith("/"):
        if not allow_subqueue_wildcard:
            raise InvalidQueueName(
                f"queue name {name!r} ends with '/': that form only selects subqueues for a worker; "
                "queue jobs on a full subqueue name such as 'crawl/example.com'"
            )
        base = name[:-1]
    if not _QUEUE_NAME.fullmatch(base):
        bad = sorted({c for c in base if not re.fullmatch(r"[A-Za-z0-9_\-.@+=/]", c)})
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            raise InvalidQueueName(
                f"queue name {name!r} contains {shown}: use letters, digits and _ - . @ + =, "
                "with '/' between subqueue parts"
            )
        raise InvalidQueueName(f"queue name {name!r}: empty part between '/' separators")
    return name


#: MRQ's worker-argument suffix: `mrq-worker default_reverse` takes `default` newest first.
REVERSE_SUFFIX = "_reverse"


def validate_job_queue(name: object) -> str:
    """A queue a job may be put on (queue_job, a retry, a requeue, a schedule, a raw queue's
    retry_queue): validate_queue_name, and not a name ending in `_reverse`, which (as in MRQ) is
    how a worker takes another queue newest first, not a queue of its own. As in MRQ, `main/`
    is a queue of that name (which a worker given `main/` takes with main's subqueues)."""
    name = validate_queue_name(name, allow_subqueue_wildcard=isinstance(name, str) and not name.startswith("/"))
    if name.endswith(REVERSE_SUFFIX):
        base = name[:-len(REVERSE_SUFFIX)]
        raise InvalidQueueName(
            f"queue name {name!r} ends with {REVERSE_SUFFIX}: that form only tells a worker to take the queue "
            f"{base!r} newest first (mrq-worker {name}); queue jobs on {base!r}"
        )
    return name


@dataclass(frozen=True)
class Keys:
    """Key builder for one prefix (`redis_prefix` setting)."""

    prefix: str = "mrq"

    # --- per queue (hash-tagged) ---------------------------------------------------------------
    def queue_tag(self, queue: str) -> str:
        return "{%s:q:%s}" % (self.prefix, queue)  # noqa: UP031 - braces are literal here

    def queue_ids(self, queue: str) -> str:
        """LIST of the ids of a regular queue's queued jobs (RPUSH; taken from the left)."""
        return self.queue_tag(queue) + ":ids"

    def queue_running(self, queue: str, worker_id: str) -> str:
        """SET of the ids a worker took from the queue and has not finished (its in-flight jobs)."""
        return f"{self.queue_tag(queue)}:running:{worker_id}"

    def queue_landing(self, queue: str, worker_id: str) -> str:
        """LIST where an idle worker's blocking pickup (`BLMOVE`) puts the id it takes, for the
        instant before claim_landing.lua moves it into the worker's running set. Recovery and
        reconciliation treat it as part of the running set."""
        return f"{self.queue_tag(queue)}:landing:{worker_id}"

    def queue_delayed(self, queue: str) -> str:
        """ZSET id -> unix time at which the job (a delayed retry) goes back to the queue."""
        return self.queue_tag(queue) + ":delayed"

    def queue_cancelled(self, queue: str) -> str:
        """ZSET id -> unix time of the cancel: ids still in the list whose job was cancelled. The
        dequeue script drops them without handing them to a worker; sizes subtract them."""
        return self.queue_tag(queue) + ":cancelled"

    def raw_queue(self, queue: str) -> str:
        """A raw queue's parameters: LIST (`_raw`), SET (`_set`) or ZSET (`_sorted_set`: score =
        order; `_timed_set`: score = unix time when the job becomes due)."""
        return self.queue_tag(queue) + ":raw"

    # --- global ------------------------------------------------------------------------------------
    # --- the queue registry (one hash tag: the forget script touches its keys together) ------------
    @property
    def registry_tag(self) -> str:
        return "{%s:queues}" % self.prefix  # noqa: UP031 - braces are literal here

    @property
    def known_queues(self) -> str:
        """ZSET of every known queue name, all scored 0: read in name order, a page at a time
        (ZRANGEBYLEX). Producers add a queue when they push to it; empty subqueues not pushed to
        for `forget_subqueues_after` seconds are removed (mrq.queue.registry)."""
        return self.registry_tag + ":names"

    @property
    def queues_seen(self) -> str:
        """ZSET queue name -> unix time a producer last noted it (at most once a minute per
        process): which subqueues have not been used for a while."""
        return self.registry_tag + ":seen"

    def subqueues(self, root: str) -> str:
        """SET of the known subqueue names (`root/...`); workers listening on `root/` take jobs
        from each of them."""
        return f"{self.registry_tag}:sub:{root}"

    @property
    def legacy_known_queues(self) -> str:
        """The SET of queue names of mrq versions before the registry (adopted, then deleted)."""
        return f"{self.prefix}:queues"

    def legacy_subqueues(self, root: str) -> str:
        return f"{self.prefix}:subqueues:{root}"

    @property
    def workers(self) -> str:
        """ZSET worker id -> lease deadline (unix seconds). An expired score means a dead worker."""
        return f"{self.prefix}:workers"

    def worker_queues(self, worker_id: str) -> str:
        """SET of the queues in which a worker may hold running ids (where to look on recovery)."""
        return f"{self.prefix}:worker:{worker_id}:queues"

    def concurrency(self, task_path: str) -> str:
        """ZSET job id -> expiry (unix time) of the running jobs of a task that has a
        `max_concurrency` in TASKS: at most that many members at once."""
        return f"{self.prefix}:concurrency:{task_path}"

    def ratelimit(self, key: str, window: int) -> str:
        """Counter of mrq.helpers.ratelimit(key) for one time window."""
        return f"{self.prefix}:ratelimit:{key}:{window}"

    @property
    def epoch(self) -> str:
        """STRING: the identity (run ids) of the Redis server(s) MongoDB was last reconciled with.
        Set only after a complete reconciliation; when it is missing (Redis emptied) or names
        another server (a restart, a failover that may have lost writes), a worker reconciles."""
        return f"{self.prefix}:epoch"

    @property
    def reconcile_lock(self) -> str:
        """STRING (with an expiry): the worker reconciling Redis with MongoDB right now."""
        return f"{self.prefix}:reconciling"

    def stats(self, minute: int) -> str:
        """HASH of the counts of one minute (unix time // 60): `in:<queue>`, `<status>:<queue>`."""
        return f"{self.prefix}:stats:{minute}"

    @property
    def paused_queues(self) -> str:
        """SET of paused queue names."""
        return f"{self.prefix}:paused"

    # --- channels (pub/sub) -------------------------------------------------------------------------
    def notify_channel(self, queue: str) -> str:
        """Channel published on when jobs are queued (payload: how many). Idle workers wake on it."""
        return f"{self.prefix}:notify:{queue}"

    def due_channel(self, queue: str) -> str:
        """Channel published on when a delayed job of the queue is scheduled (payload:
        `at:<unix time>`, when it is due). Idle workers look at the queue again then."""
        return f"{self.prefix}:due:{queue}"

    @property
    def control_channel(self) -> str:
        """Channel of commands to workers: `abort <job id>` (abort a running job), `paused`
        (the paused queues changed)."""
        return f"{self.prefix}:control"

    def notify_pattern(self, queue_prefix: str) -> str:
        """Pattern matching the channels of every subqueue of `queue_prefix` (which ends with '/')."""
        return f"{self.prefix}:notify:{queue_prefix}*"

    def due_pattern(self, queue_prefix: str) -> str:
        """Pattern matching the due channels of every subqueue of `queue_prefix`."""
        return f"{self.prefix}:due:{queue_prefix}*"
