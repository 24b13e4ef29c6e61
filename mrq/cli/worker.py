"""`mrq-worker [queues...]`: run a worker (or, with --processes N, N workers under supervisord)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings

DESCRIPTION = """Run an mrq worker: take jobs from the given queues (highest priority first) and run
them in --greenlets concurrent greenlets. SIGINT: finish the running jobs and exit; a second SIGINT
or SIGTERM: interrupt them (they are queued again) and exit. With --processes N, run N such workers
under supervisord (restarted whenever they exit) and pass these signals on to all of them."""

# Settings accepted by the configuration that this worker does not act on yet: refuse them
# rather than silently ignoring them.
NOT_IMPLEMENTED_YET: tuple[str, ...] = ()


def main(argv: Sequence[str] | None = None) -> int:
    # gevent must patch the standard library before anything opens a socket.
    from gevent import monkey

    monkey.patch_all()

    from ..config import WORKER, build_parser, deprecation_warnings, load_settings
    from ..exceptions import ConfigError, InvalidQueueName
    from ..log import setup_logging
    from ..processes import is_subprocess
    from ..worker import Worker
    from .common import EXIT_USAGE, fail

    sys.path.insert(0, os.getcwd())  # task modules of the current project
    parser = build_parser(WORKER, prog="mrq-worker", description=DESCRIPTION, usage="%(prog)s [options] [QUEUE ...]")
    try:
        settings, args = load_settings(sys.argv[1:] if argv is None else argv, scope=WORKER, parser=parser)
    except ConfigError as exc:
        return fail("mrq-worker", str(exc), EXIT_USAGE)
    for line in deprecation_warnings(args):
        print(f"mrq-worker: warning: {line}", file=sys.stderr)
    for key in NOT_IMPLEMENTED_YET:
        if settings.sources.get(key) != "default" and settings[key]:
            return fail("mrq-worker", f"--{key} is not implemented yet", EXIT_USAGE)
    try:
        setup_logging(settings, sys.stdout)
    except ConfigError as exc:
        return fail("mrq-worker", str(exc), EXIT_USAGE)
    if settings.processes > 0 and not is_subprocess():
        return supervise(settings, args)
    if is_subprocess() and settings.admin_port:
        from ..processes import PROCESS_NUM_ENV

        # Each supervised process gets its own admin port: P, P+1, ... P+N-1.
        settings = settings.replace(admin_port=settings.admin_port + int(os.environ.get(PROCESS_NUM_ENV) or 0))
    try:
        worker = Worker(settings)
    except (InvalidQueueName, ConfigError) as exc:
        return fail("mrq-worker", str(exc), EXIT_USAGE)
    if not is_subprocess():
        return worker.work()
    from ..processes import PARENT_PID_ENV, wait_out_start_seconds, watch_for_orphaning

    parent = os.environ.get(PARENT_PID_ENV, "")
    if parent.isdigit():
        watch_for_orphaning(int(parent))
    code = worker.work()
    if code == 0:
        wait_out_start_seconds()
    return code


def supervise(settings: Settings, args: argparse.Namespace) -> int:
    """`--processes N`: run N workers with the same command line under supervisord."""
    from ..exceptions import InvalidQueueName
    from ..processes import ProcessSupervisor, SupervisorFailed, worker_argv
    from ..queue import Queue, worker_queue
    from .common import EXIT_FAILED, EXIT_USAGE, fail

    try:
        for name in settings.queues:  # fail here once, not in N restarting workers
            Queue(name) if name.endswith("/") else worker_queue(name)
        command = [sys.executable, "-m", "mrq.cli.worker", *worker_argv(args)]
        supervisor = ProcessSupervisor(command, settings.processes,
                                       burst=settings.dequeue_strategy == "burst")
    except (InvalidQueueName, ValueError) as exc:
        return fail("mrq-worker", str(exc), EXIT_USAGE)
    try:
        return supervisor.run()
    except SupervisorFailed as exc:
        return fail("mrq-worker", str(exc), EXIT_FAILED)


if __name__ == "__main__":
    sys.exit(main())
