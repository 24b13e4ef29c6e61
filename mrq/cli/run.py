"""`mrq-run path [JSON | key value ...]`: run a task in the foreground and print its result as
JSON, or with --queue Q, queue it and print the job id."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

DESCRIPTION = """Run a task in this process and print its JSON result (no worker needed; Redis and
MongoDB are used only if the task uses them), or with --queue, queue it for a worker and print the
job id. Params: one JSON object ('{"url": "https://..."}'), or key value pairs (url https://...:
values are strings, as in MRQ), or key:=JSON pairs for typed values (a:=1 b:=2.5 tags:='["x"]').
With --queue the task must be importable here (a typo is refused, exit 4).
Exit codes: 0 success, 1 the task failed, 2 bad command line or params, 3 Redis/MongoDB
unreachable, 4 unknown task."""


def parse_params(taskargs: Sequence[str]) -> dict[str, Any]:
    """One JSON object, or key value pairs (values stay strings, as in MRQ) mixed with key:=JSON
    pairs (typed values). Raises ValueError saying why."""
    if not taskargs:
        return {}
    if len(taskargs) == 1 and taskargs[0].lstrip().startswith(("{", "[", '"')):
        try:
            whole = json.loads(taskargs[0])
        except json.JSONDecodeError as exc:
            raise ValueError(f"params are not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        if not isinstance(whole, dict):
            raise ValueError(f"params must be a JSON object, got a JSON {type(whole).__name__}")
        return whole
    params: dict[str, Any] = {}
    words = list(taskargs)
    while words:
        word = words.pop(0)
        key, typed, raw = word.partition(":=")
        if typed:  # key:=JSON, a typed value in one word
            if not key:
                raise ValueError(f"{word!r}: a key is missing before ':='")
            try:
                params[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{key}:= is not valid JSON ({exc.msg}): {raw!r} (quote strings: "
                                 f"{key}:='\"text\"', or use '{key} text')") from None
            continue
        if not words:
            raise ValueError(f"params must be one JSON object, key value pairs or key:=JSON; the last key {word!r} "
                             "has no value")
        params[word] = words.pop(0)  # key value: a string, as in MRQ
    return params


def main(argv: Sequence[str] | None = None) -> int:
    from gevent import monkey

    monkey.patch_all()

    from bson import ObjectId

    from .. import current
    from ..config import RUN, build_parser, deprecation_warnings, load_settings
    from ..exceptions import (
        ConfigError,
        InvalidJob,
        InvalidQueueName,
        JobInterrupt,
        StoreUnavailable,
        TaskNotFound,
    )
    from ..job import Job, queue_job
    from ..log import setup_logging
    from ..task import load_task, validate_task_path
    from .common import (
        EXIT_FAILED,
        EXIT_NOT_FOUND,
        EXIT_OK,
        EXIT_UNAVAILABLE,
        EXIT_USAGE,
        fail,
        json_default,
    )

    prog = "mrq-run"
    sys.path.insert(0, os.getcwd())
    parser = build_parser(RUN, prog=prog, description=DESCRIPTION, usage="%(prog)s [options] PATH [PARAMS ...]")
    parser.add_argument("--depends-on", dest="depends_on", action="append", default=[], metavar="ID",
                        help="With --queue: the job waits until this job ended success (repeat it, or give ids "
                             "separated by commas); docs/workflows.md")
    parser.add_argument("path", nargs="?", metavar="PATH", help="Dotted path of the task, e.g. tasks.io.Fetch")
    parser.add_argument("taskargs", nargs=argparse.REMAINDER, metavar="PARAMS",
                        help="Optional params: one JSON object, key value pairs, or key:=JSON pairs")
    try:
        settings, args = load_settings(sys.argv[1:] if argv is None else argv, scope=RUN, parser=parser)
        if not getattr(args, "path", None):
            parser.error("the task path is required (mrq-run tasks.io.Fetch url https://...)")
        params = parse_params(args.taskargs)
        validate_task_path(args.path)
        depends_on = [part.strip() for value in args.depends_on for part in value.split(",") if part.strip()]
        if depends_on and not settings.queue:
            raise ValueError("--depends-on needs --queue (a job run here in the foreground cannot wait)")
    except (ConfigError, ValueError, InvalidJob) as exc:
        return fail(prog, str(exc), EXIT_USAGE)
    for line in deprecation_warnings(args):
        print(f"{prog}: warning: {line}", file=sys.stderr)
    try:
        setup_logging(settings, sys.stderr)
    except ConfigError as exc:
        return fail(prog, str(exc), EXIT_USAGE)
    store = current.set_current_config(settings)

    if settings.queue:
        try:
            load_task(args.path)  # a typo is refused here, not found by a worker later
        except TaskNotFound as exc:
            store.close()
            return fail(prog, f"{exc} (nothing queued)", EXIT_NOT_FOUND)
        try:
            job_id = queue_job(args.path, params, queue=settings.queue, store=store, depends_on=depends_on or None)
        except (InvalidJob, InvalidQueueName) as exc:
            return fail(prog, str(exc), EXIT_USAGE)
        except StoreUnavailable as exc:
            return fail(prog, str(exc), EXIT_UNAVAILABLE)
        finally:
            store.close()
        print(job_id)
        return EXIT_OK

    job = Job(ObjectId(), store)
    job.data = {"_id": job.id, "path": args.path, "params": params, "status": "started", "queue": None}
    job.stored = False  # lives in this process only: no status, progress or log writes
    current.set_current_job(job)
    try:
        runner = load_task(args.path)
        result = runner(params)
    except TaskNotFound as exc:
        details = getattr(exc, "details", None)
        if details:
            print(details, file=sys.stderr, end="")
        return fail(prog, str(exc), EXIT_NOT_FOUND)
    except StoreUnavailable as exc:
        return fail(prog, str(exc), EXIT_UNAVAILABLE)
    except JobInterrupt as exc:
        return fail(prog, f"the task stopped with {type(exc).__name__}: {exc}", EXIT_FAILED)
    except Exception as exc:
        traceback.print_exc()
        return fail(prog, f"the task raised {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                    EXIT_FAILED)
    finally:
        current.set_current_job(None)
    try:
        print(json.dumps(result, default=json_default, ensure_ascii=False))
    except (TypeError, ValueError) as exc:
        return fail(prog, f"the task returned a result that is not JSON-serialisable: {exc}", EXIT_FAILED)
    finally:
        store.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
