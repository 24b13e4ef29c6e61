"""`mrq-worker [queues...]`: run a worker (or, with --processes N, N workers under supervisord)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

DESCRIPTION = """Run an mrq worker: take jobs from the given queues (highest priority first) and run
them in --greenlets concurrent greenlets. SIGINT: finish the running jobs and exit; a second SIGINT
or SIGTERM: interrupt them (they are queued again) and exit."""

# Settings accepted by the configuration that this worker does not act on yet: refuse them
# rather than silently ignoring them.
NOT_IMPLEMENTED_YET = ("processes",)


def main(argv: Sequence[str] | None = None) -> int:
    # gevent must patch the standard library before anything opens a socket.
    from gevent import monkey

    monkey.patch_all()

    from ..config import WORKER, build_parser, load_settings
    from ..exceptions import ConfigError, InvalidQueueName
    from ..log import setup_logging
    from ..worker import Worker
    from .common import EXIT_USAGE, fail

    sys.path.insert(0, os.getcwd())  # task modules of the current project
    parser = build_parser(WORKER, prog="mrq-worker", description=DESCRIPTION)
    try:
        settings, _ = load_settings(sys.argv[1:] if argv is None else argv, scope=WORKER, parser=parser)
    except ConfigError as exc:
        return fail("mrq-worker", str(exc), EXIT_USAGE)
    for key in NOT_IMPLEMENTED_YET:
        if settings.sources.get(key) != "default" and settings[key]:
            return fail("mrq-worker", f"--{key} is not implemented yet", EXIT_USAGE)
    setup_logging(settings, sys.stdout)
    try:
        worker = Worker(settings)
    except (InvalidQueueName, ConfigError) as exc:
        return fail("mrq-worker", str(exc), EXIT_USAGE)
    return worker.work()


if __name__ == "__main__":
    sys.exit(main())
