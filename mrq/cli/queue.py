"""`mrq-queue`: look at queues and pause or resume them from the command line.

    mrq-queue list                 # every known queue: kind, size, delayed, paused, oldest job age
    mrq-queue pause crawl          # workers stop taking jobs from crawl and crawl/* within a second
    mrq-queue resume crawl
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from .. import current
from ..backoff import STORE_ERRORS
from ..config import QUEUE, build_parser, load_settings
from ..connections import redact_uri
from ..exceptions import ConfigError, InvalidQueueName, StoreUnavailable
from ..queue import pause_queue, queue_infos, resume_queue
from .common import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, fail


def main(argv: Sequence[str] | None = None) -> int:
    prog = "mrq-queue"
    parser = build_parser(QUEUE, prog=prog, description=__doc__, usage="%(prog)s {list,pause,resume} [QUEUE] [options]")
    parser.add_argument("action", choices=("list", "pause", "resume"), help="what to do")
    parser.add_argument("queue", nargs="?", help="queue name (pause, resume)")
    parser.add_argument("--json", action="store_true", default=False, help="list as JSON")
    try:
        settings, args = load_settings(sys.argv[1:] if argv is None else argv, scope=QUEUE, parser=parser)
    except ConfigError as exc:
        return fail(prog, str(exc), EXIT_USAGE)
    store = current.set_current_config(settings)
    try:
        if args.action == "list":
            infos = queue_infos(store)
            if getattr(args, "json", False):
                print(json.dumps([info.as_dict() for info in infos]))
            else:
                print(f"{'queue':40} {'kind':10} {'size':>9} {'delayed':>8} {'paused':>6} {'oldest':>9}")
                for info in infos:
                    age = "-" if info.oldest_age is None else f"{info.oldest_age:.0f}s"
                    print(f"{info.name:40} {info.kind:10} {info.size:>9} {info.delayed:>8} "
                          f"{'yes' if info.paused else 'no':>6} {age:>9}")
            return EXIT_OK
        name = getattr(args, "queue", None)
        if not name:
            return fail(prog, f"{args.action} needs a queue name", EXIT_USAGE)
        (pause_queue if args.action == "pause" else resume_queue)(store, name)
        print(f"{name}: {'paused' if args.action == 'pause' else 'resumed'}")
        return EXIT_OK
    except InvalidQueueName as exc:
        return fail(prog, str(exc), EXIT_USAGE)
    except StoreUnavailable as exc:
        return fail(prog, str(exc), EXIT_UNAVAILABLE)
    except STORE_ERRORS as exc:
        return fail(prog, f"Redis at {redact_uri(settings.redis)} failed: {exc}", EXIT_UNAVAILABLE)
    finally:
        current.reset()


if __name__ == "__main__":
    sys.exit(main())
