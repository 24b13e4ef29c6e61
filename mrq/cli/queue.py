"""`mrq-queue`: look at queues, workers and jobs, and act on them from the command line.

  mrq-queue info [--interval 2]      queues with their sizes, workers alive and their running jobs
  mrq-queue list [--json]            every known queue: kind, size, delayed, paused, oldest job age
  mrq-queue empty crawl [--yes]      cancel the jobs waiting in crawl (raw queue: drop its params)
  mrq-queue requeue [--status failed] [--queue crawl] [--path tasks.Fetch] [--yes]
  mrq-queue job 65f0c3e2a1b2c3d4e5f60718 [--json]
  mrq-queue pause crawl              workers stop taking jobs from crawl and crawl/* within a second
  mrq-queue resume crawl

empty and requeue show how many jobs they would change and ask first (--yes: do not ask; without
a terminal they refuse to act unless --yes is given). Exit codes: 0 done, 1 not confirmed,
2 bad command line, 3 Redis/MongoDB unreachable, 4 job not found.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pymongo.errors
from bson import ObjectId

from .. import current
from ..backoff import STORE_ERRORS
from ..clock import utcnow
from ..config import QUEUE, build_parser, load_settings
from ..connections import store_error
from ..exceptions import ConfigError, InvalidJob, InvalidQueueName, StoreUnavailable
from ..lifecycle.operations import act_on_matching, requeue_matching
from ..lifecycle.statuses import ALL_STATUSES, FAILED, NOT_REQUEUABLE, STARTABLE_STATUSES
from ..log import setup_logging
from ..queue import Queue, RawQueue, count_known, pause_queue, queue_infos, queue_names_page, resume_queue
from ..storage.keys import validate_job_queue
from ..storage.leases import Leases
from ..task import validate_task_path
from .common import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, fail, json_default

if TYPE_CHECKING:
    from ..config import Settings
    from ..store import Store

PROG = "mrq-queue"
ACTIONS = ("info", "list", "empty", "requeue", "job", "pause", "resume")
#: Workers `info` shows at most (the count of the others is given).
MAX_WORKERS = 50
#: What a store raises when it cannot serve: one line, exit 3.
FAILURES: tuple[type[BaseException], ...] = (*STORE_ERRORS, pymongo.errors.OperationFailure)


class Refused(Exception):
    """The command stops with this one line and exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(QUEUE, prog=PROG, description=__doc__,
                          usage="%(prog)s {" + ",".join(ACTIONS) + "} [QUEUE|ID] [options]")
    parser.add_argument("action", choices=ACTIONS, metavar="ACTION", help="One of: " + ", ".join(ACTIONS) + ".")
    parser.add_argument("target", nargs="?", metavar="QUEUE|ID",
                        help="The queue (empty, pause, resume) or job id (job).")
    parser.add_argument("--yes", "-y", action="store_true", help="empty, requeue: act without asking.")
    parser.add_argument("--status", metavar="STATUS[,...]",
                        help=f"requeue: the jobs in these statuses (default: {FAILED}).")
    parser.add_argument("--queue", dest="filter_queue", metavar="QUEUE", help="requeue: only the jobs of this queue.")
    parser.add_argument("--path", metavar="PATH", help="requeue: only the jobs of this task path.")
    parser.add_argument("--interval", metavar="SECONDS", type=float,
                        help="info: show it again every SECONDS until Ctrl-C.")
    parser.add_argument("--limit", metavar="N", type=int,
                        help="info: the most queues shown, in name order (default: 50).")
    parser.add_argument("--json", action="store_true", help="list, job: print JSON.")
    try:
        settings, args = load_settings(sys.argv[1:] if argv is None else argv, scope=QUEUE, parser=parser,
                                       intermixed=True)
        setup_logging(settings, sys.stderr)
    except ConfigError as exc:
        return fail(PROG, str(exc), EXIT_USAGE)
    store = current.set_current_config(settings)
    try:
        return ACTION_FUNCTIONS[args.action](store, args)
    except Refused as exc:
        return fail(PROG, str(exc), exc.code)
    except (InvalidQueueName, InvalidJob) as exc:
        return fail(PROG, str(exc), EXIT_USAGE)
    except StoreUnavailable as exc:
        return fail(PROG, str(exc), EXIT_UNAVAILABLE)
    except FAILURES as exc:
        return fail(PROG, _store_failure(settings, exc), EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        return EXIT_OK if args.action == "info" else fail(PROG, "interrupted", EXIT_FAILED)
    finally:
        store.close()
        current.reset()


def _store_failure(settings: Settings, exc: BaseException) -> str:
    if isinstance(exc, pymongo.errors.PyMongoError):
        return store_error("MongoDB", settings.mongodb_jobs, exc, settings.mongodb_timeout)
    return store_error("Redis", settings.redis, exc)


def _target(args: Any, what: str) -> str:
    target = getattr(args, "target", None)
    if not target:
        raise Refused(f"{args.action} needs {what} (mrq-queue {args.action} {what.split()[-1].upper()})", EXIT_USAGE)
    return str(target)


def _confirm(args: Any, question: str) -> None:
    """Ask on a terminal unless --yes; without a terminal, refuse (a script must say --yes)."""
    if getattr(args, "yes", False):
        return
    if not sys.stdin.isatty():
        raise Refused(f"{question}: not done, confirm with --yes (no terminal to ask on)", EXIT_USAGE)
    try:
        answer = input(f"{question}? [y/N] ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        raise Refused("not confirmed: nothing changed", EXIT_FAILED)


# --- the actions --------------------------------------------------------------------------------------


def list_queues(store: Store, args: Any) -> int:
    infos = queue_infos(store)
    if getattr(args, "json", False):
        print(json.dumps([info.as_dict() for info in infos]))
        return EXIT_OK
    print(f"{'queue':40} {'kind':10} {'size':>9} {'delayed':>8} {'paused':>6} {'oldest':>9}")
    for info in infos:
        age = "-" if info.oldest_age is None else f"{info.oldest_age:.0f}s"
        print(f"{info.name:40} {info.kind:10} {info.size:>9} {info.delayed:>8} "
              f"{'yes' if info.paused else 'no':>6} {age:>9}")
    return EXIT_OK


def info(store: Store, args: Any) -> int:
    """Like `rq info`: the queues (a page of them, in name order) and the workers alive."""
    limit = getattr(args, "limit", 50)
    interval = getattr(args, "interval", None)
    if limit < 1 or (interval is not None and not interval > 0):
        raise Refused("--limit must be >= 1 and --interval > 0", EXIT_USAGE)
    if interval is None:
        print(render_info(store, limit), end="")
        return EXIT_OK
    live = sys.stdout.isatty()
    while True:  # until Ctrl-C (KeyboardInterrupt: exit 0)
        text = render_info(store, limit)
        header = f"{utcnow():%Y-%m-%d %H:%M:%S} UTC, every {interval:g}s (Ctrl-C to stop)\n\n"
        print(("\033[H\033[2J" if live else "") + header + text, end="" if live else "\n", flush=True)
        time.sleep(interval)


def render_info(store: Store, limit: int) -> str:
    names = queue_names_page(store, limit=limit)
    total = count_known(store)
    infos = queue_infos(store, names)
    lines = [f"{'queue':40} {'size':>9} {'delayed':>8} {'paused':>6} {'oldest':>8}"]
    for item in infos:
        age = "-" if item.oldest_age is None else f"{item.oldest_age:.0f}s"
        lines.append(f"{item.name:40} {item.size:>9} {item.delayed:>8} {'yes' if item.paused else 'no':>6} {age:>8}")
    more = f" (the first {len(infos)} in name order: --limit N, or mrq-queue list)" if total > len(infos) else ""
    waiting = sum(i.size for i in infos)
    lines.append(f"{_count(total, 'queue')}, {_count(waiting, 'job')} waiting{' in these' if more else ''}{more}")
    alive = sorted(Leases(store.redis, store.keys).alive())
    reports = {str(doc["_id"]): doc for doc in store.workers.find(
        {"_id": {"$in": [ObjectId(i) for i in alive[:MAX_WORKERS] if ObjectId.is_valid(i)]}},
        {"name": 1, "host": 1, "queues": 1, "greenlets": 1, "jobs": 1, "status": 1})}
    lines += ["", f"{'worker':40} {'jobs':>9} {'status':>8}  queues"]
    for worker_id in alive[:MAX_WORKERS]:
        doc = reports.get(worker_id, {})
        greenlets = doc.get("greenlets") if isinstance(doc.get("greenlets"), dict) else {}
        running = len(doc["jobs"]) if isinstance(doc.get("jobs"), list) else greenlets.get("busy", "?")
        jobs = f"{running}/{greenlets.get('total', '?')}"
        queues = " ".join(str(q) for q in doc.get("queues") or [])
        name, status = str(doc.get("name") or worker_id), str(doc.get("status") or "?")
        lines.append(f"{name:40} {jobs:>9} {status:>8}  {queues}")
    shown = "" if len(alive) <= MAX_WORKERS else f" (the first {MAX_WORKERS} shown)"
    lines.append(f"{_count(len(alive), 'worker')} alive{shown}")
    return "\n".join(lines) + "\n"


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}{'' if number == 1 else 's'}"


def empty(store: Store, args: Any) -> int:
    """A regular queue: its waiting jobs (queued, delayed, retry) are cancelled through the
    lifecycle (their documents say `cancel`, their ids are dropped); a raw queue: its params are
    deleted (raw jobs have no documents)."""
    name = validate_job_queue(_target(args, "a queue name"))
    target = Queue(name, store)
    size = queue_infos(store, [name])[0].size
    if isinstance(target, RawQueue):
        if not size:
            print(f"{name}: nothing waiting")
            return EXIT_OK
        _confirm(args, f"delete the {size} waiting params of the raw queue {name} (raw jobs have no documents)")
        target.empty()
        print(f"{name}: {size} params deleted")
        return EXIT_OK
    waiting = {"queue": name, "status": {"$in": sorted(STARTABLE_STATUSES)}}
    count = store.jobs.count_documents(waiting)
    if not count:
        left = f" (the {size} ids left in Redis have no waiting job: workers drop them)" if size else ""
        print(f"{name}: no job waiting{left}")
        return EXIT_OK
    _confirm(args, f"cancel the {count} waiting jobs (queued, delayed, retry) of {name}")
    cancelled = act_on_matching(store, "cancel", {"queue": name})
    print(f"{name}: {_count(cancelled, 'job')} cancelled")
    return EXIT_OK


def requeue(store: Store, args: Any) -> int:
    statuses = [s for s in str(getattr(args, "status", FAILED)).replace(" ", ",").split(",") if s]
    wrong = [s for s in statuses if s not in ALL_STATUSES or s in NOT_REQUEUABLE]
    if wrong or not statuses:
        allowed = ", ".join(s for s in ALL_STATUSES if s not in NOT_REQUEUABLE)
        raise Refused(f"--status {','.join(wrong) or '(empty)'}: requeue takes jobs in {allowed}", EXIT_USAGE)
    query: dict[str, Any] = {"status": statuses[0] if len(statuses) == 1 else {"$in": statuses}}
    where = ""
    if getattr(args, "filter_queue", None):
        query["queue"] = validate_job_queue(args.filter_queue)
        where += f" of queue {query['queue']}"
    if getattr(args, "path", None):
        query["path"] = validate_task_path(args.path)
        where += f" of task {query['path']}"
    count = store.jobs.count_documents(query)
    what = f"{'/'.join(statuses)} jobs{where}"
    if not count:
        print(f"no {what}")
        return EXIT_OK
    _confirm(args, f"requeue the {count} {what}")
    print(f"{_count(requeue_matching(store, query), 'job')} requeued")
    return EXIT_OK


#: The fields `job` shows first, in this order; the others follow in name order, the traceback last.
JOB_FIELDS = ("path", "queue", "status", "params", "result", "exceptiontype", "retry_count", "worker", "datequeued",
              "datestarted", "dateupdated", "dateretry", "dateexpires", "totaltime", "progress")


def job(store: Store, args: Any) -> int:
    raw_id = _target(args, "a job id")
    if not ObjectId.is_valid(raw_id):
        raise Refused(f"{raw_id!r} is not a job id (24 hexadecimal digits)", EXIT_USAGE)
    doc = store.jobs.find_one({"_id": ObjectId(raw_id)})
    if doc is None:
        raise Refused(f"job {raw_id} not found (a finished job is removed once its TTL passes)", EXIT_NOT_FOUND)
    if getattr(args, "json", False):
        print(json.dumps(doc, default=json_default, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"job {doc['_id']}")
    names = [k for k in JOB_FIELDS if k in doc] + sorted(k for k in doc if k not in JOB_FIELDS and
                                                         k not in ("_id", "traceback"))
    for name in names:
        print(f"  {name:14} {_readable(doc[name])}")
    if doc.get("traceback"):
        print("  traceback:")
        for line in str(doc["traceback"]).rstrip("\n").splitlines():
            print(f"    {line}")
    return EXIT_OK


def _readable(value: Any, width: int = 2000) -> str:
    if isinstance(value, str | int | float | ObjectId) and not isinstance(value, bool):
        text = str(value)
    elif hasattr(value, "isoformat"):
        text = value.isoformat(sep=" ", timespec="seconds")
    else:
        text = json.dumps(value, default=json_default, ensure_ascii=False)
    return text if len(text) <= width else text[:width] + f"... ({len(text)} characters: --json shows all)"


def pause_or_resume(store: Store, args: Any) -> int:
    name = _target(args, "a queue name")
    (pause_queue if args.action == "pause" else resume_queue)(store, name)
    print(f"{name}: {'paused' if args.action == 'pause' else 'resumed'}")
    return EXIT_OK


ACTION_FUNCTIONS = {"info": info, "list": list_queues, "empty": empty, "requeue": requeue, "job": job,
                    "pause": pause_or_resume, "resume": pause_or_resume}


if __name__ == "__main__":
    sys.exit(main())
