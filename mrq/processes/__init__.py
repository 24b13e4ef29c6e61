"""`mrq-worker --processes N`: N worker processes under supervisord.

The `mrq-worker` process that is given `--processes N` runs no jobs itself. It writes a
supervisord configuration in a private temporary directory (removed at exit) and runs
`supervisord -n` as its child, in a session of its own (a Ctrl-C in the terminal reaches only
this parent, which decides what the workers get). supervisord runs N copies of the same worker
command line without `--processes` and with `MRQ_IS_SUBPROCESS=1` (a worker never supervises),
restarts any of them that exits (a crash, a SIGKILL, or the clean exit of --max_jobs,
--max_time, --max_memory), and writes their output to the parent's stdout. The parent talks to
supervisord through XML-RPC on a unix socket in the temporary directory.

Stopping, decided by the parent:
  - first SIGINT: supervisord shuts down, sending each worker its stop signal, SIGINT (finish
    the running jobs, take no new ones); nothing is restarted. No time limit: a worker running
    an hours-long job takes hours. The parent exits 0 once every worker has exited.
  - second SIGINT, or SIGTERM: every worker also gets SIGTERM (its running jobs are interrupted
    and queued again). Workers still alive `stop_timeout` seconds later get SIGKILL (their
    process group), and the exit code is 1.
  - the parent dies (even by SIGKILL): supervisord gets SIGTERM from the kernel
    (PR_SET_PDEATHSIG, Linux) and shuts down; each worker notices within a second that its
    supervisor lost its parent and sends itself SIGTERM (`watch_for_orphaning`), so that a lost
    parent never leaves jobs running for hours without anyone able to stop them.

Quirks of supervisord handled here:
  - a program that exits sooner than `startsecs` after it started counts as a failed start and
    is restarted after a growing delay (1 s, 2 s, 3 s...): that is the crash-loop backoff we
    want, but a worker that finishes its --max_jobs in half a second must not be punished, so a
    supervised worker that exits cleanly waits out `START_SECONDS` (`wait_out_start_seconds`).
  - every value of the configuration is %-expanded and `;` or `#` after whitespace starts a
    comment, so arguments are quoted by `config_quote`, not by shlex.quote alone.
  - `stdout_logfile=/dev/stdout` reopens the parent's stdout, which fails when it is a socket
    (systemd's journal): then the output goes through a pipe and a small relay process. When it
    is a regular file, supervisord appends while the parent would write at its own offset
    (`> log`, no O_APPEND) over the workers' lines: the parent's stdout is set to append too.
  - supervisord refuses RPC calls once it is shutting down, so the hard stop signals the
    workers itself (psutil, which checks that a pid still is the same process).

Modules: `parent` (the parent: runs supervisord and signals it), `supervisord_conf` (the workers'
command line and the supervisord configuration) and `child` (what a supervised worker uses).
"""

from ..exceptions import SupervisorFailed
from .child import (
    PARENT_PID_ENV,
    PROCESS_NUM_ENV,
    START_SECONDS,
    SUBPROCESS_ENV,
    is_subprocess,
    wait_out_start_seconds,
    watch_for_orphaning,
)
from .parent import EXIT_FAILED, EXIT_OK, STOP_TIMEOUT, ProcessSupervisor
from .supervisord_conf import GRACEFUL_STOP_SECONDS, PROGRAM, START_RETRIES, config_quote, render_config, worker_argv

__all__ = [
    "EXIT_FAILED", "EXIT_OK", "GRACEFUL_STOP_SECONDS", "PARENT_PID_ENV", "PROCESS_NUM_ENV", "PROGRAM", "START_RETRIES",
    "START_SECONDS", "STOP_TIMEOUT", "SUBPROCESS_ENV", "ProcessSupervisor", "SupervisorFailed", "config_quote",
    "is_subprocess", "render_config", "wait_out_start_seconds", "watch_for_orphaning", "worker_argv",
]  # fmt: skip
