"""The configuration table: every key mrq knows, declared once as an `Option` (name, parser,
default, help, the command line that exposes it), with the value parsers, one per type.

mrq/config.py derives everything else from this table: the command-line parsers (`--help`), the
environment and file readers, the validation, the `Settings` object and the reference table of
docs/configuration.md (`python -m mrq.config`; tests/test_config.py keeps it current).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ENV_PREFIX = "MRQ_"

# Which command line exposes an option. Every command reads every layer of the file and env.
GENERAL = "general"  # every command
WORKER = "worker"
RUN = "run"
DASHBOARD = "dashboard"
QUEUE = "queue"  # mrq-queue
COMMANDS = (WORKER, RUN, DASHBOARD, QUEUE)

# Sections of a command's --help after its own options (those of its scope), in this order.
CONNECTIONS = "connections"
JOB_DEFAULTS = "job defaults"
OTHER = "other options"


# --- value parsers: one per type, used for env strings, CLI strings and file values ------------


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
    raise ValueError("a boolean (true/false, 1/0, yes/no, on/off)")


def _parse_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ValueError("an integer")


def _parse_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ValueError("a number")


def _parse_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueError("a string")


def _parse_level(value: Any) -> str:
    """A logging level name, in any case (MRQ users wrote `--log_level info`)."""
    return _parse_str(value).strip().upper()


def _parse_str_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [part for part in re.split(r"[\s,]+", value.strip()) if part]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ValueError("a list of strings (or a space/comma separated string)")


def _parse_json(kind: type) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"JSON for a {kind.__name__} ({exc.msg} at position {exc.pos})") from None
        if kind is list and isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, kind):
            raise ValueError(f"a {kind.__name__}")
        return value

    return parse


def _parse_callable_or_path(value: Any) -> Any:
    if value is None or callable(value):
        return value
    if isinstance(value, str) and re.fullmatch(r"[\w.]+", value):
        return value  # a dotted path, imported by whoever uses it
    raise ValueError("a callable or a dotted path to one")


TYPE_NAMES: dict[Callable[[Any], Any], str] = {
    _parse_bool: "boolean",
    _parse_int: "integer",
    _parse_float: "number",
    _parse_str: "string",
    _parse_level: "string",
    _parse_str_list: "list of strings",
    _parse_callable_or_path: "callable",
}


@dataclass(frozen=True)
class Option:
    """One configuration key. `name` is the lowercase key; the file uses NAME, env MRQ_NAME."""

    name: str
    parse: Callable[[Any], Any]
    default: Any
    help: str
    scope: str = GENERAL
    flags: tuple[str, ...] = ()  # extra command-line spellings (aliases)
    cli: bool = True  # False: file/env only (dicts, hooks)
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    positional: bool = False
    group: str = OTHER  # the --help section of a GENERAL option (CONNECTIONS, JOB_DEFAULTS, OTHER)
    #: The commands whose --help lists a GENERAL option (empty: every command): the others still
    #: accept it (MRQ 0.9 command lines passed it everywhere) but do not act on it.
    shown_in: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        """The spelling --help shows: hyphenated (`--max-jobs`); `--max_jobs` is accepted too."""
        return "--" + self.name.replace("_", "-")

    def shown_for(self, command: str) -> bool:
        return self.scope == command or (self.scope == GENERAL and (not self.shown_in or command in self.shown_in))

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def file_name(self) -> str:
        return self.name.upper()

    @property
    def type_name(self) -> str:
        return TYPE_NAMES.get(self.parse, "JSON value")

    def convert(self, value: Any) -> Any:
        """Parse and validate a value from any layer; raises ValueError with the expectation."""
        try:
            parsed = self.parse(value)
        except ValueError as exc:
            raise ValueError(f"expected {exc}, got {value!r}") from None
        if self.choices and parsed not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {value!r}")
        if self.minimum is not None and parsed is not None and parsed < self.minimum:
            raise ValueError(f"expected a value >= {self.minimum:g}, got {value!r}")
        return parsed


DAY = 24 * 3600
OPTIONS: tuple[Option, ...] = (
    # --- connections
    Option("redis", _parse_str, "redis://127.0.0.1:6379/0",
           "Redis URI: redis://host:port/db, rediss:// (TLS), unix://, "
           "redis+sentinel://host:port,host:port/service[/db] or redis+cluster://host:port", group=CONNECTIONS),
    Option("redis_prefix", _parse_str, "mrq", "Namespace of every Redis key and channel (not MongoDB: give each "
           "prefix its own jobs database).",
           group=CONNECTIONS),
    Option("redis_max_connections", _parse_int, 100, "Size of the Redis connection pool per process.",
           minimum=1, group=CONNECTIONS),
    Option("redis_timeout", _parse_float, 10.0,
           "Seconds before a Redis connect or command gives up (blocking waits have their own limits).",
           minimum=0.1, group=CONNECTIONS),
    Option("mongodb_jobs", _parse_str, "mongodb://127.0.0.1:27017/mrq",
           "MongoDB URI of the jobs database (the database named in the path, `mrq` if none).",
           flags=("--mongodb",), group=CONNECTIONS),
    Option("mongodb_logs", _parse_str, "1",
           "Where per-job logs go: a MongoDB URI, `1` = the jobs database, `0` = no log storage.",
           group=CONNECTIONS, shown_in=(WORKER, DASHBOARD)),
    Option("mongodb_logs_size", _parse_int, 0,
           "Make mrq_logs a capped collection of this many bytes (0 = not capped; a TTL cleans it).", minimum=0,
           group=CONNECTIONS, shown_in=(WORKER,)),
    Option("mongodb_timeout", _parse_float, 5.0,
           "Seconds before a MongoDB server selection or connect gives up.", minimum=0.1,
           group=CONNECTIONS),
    # --- identity, logging
    Option("name", _parse_str, "", "Worker name shown in reports (default: <hostname>.<pid>).",
           shown_in=(WORKER,)),
    Option("log_level", _parse_level, "INFO", "Log level of the mrq loggers and of LOG_HANDLERS' handlers.",
           choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    Option("log_format", _parse_str, "text", "Log line format of mrq commands: human-readable text, or one JSON object "
           "per line for log pipelines.", choices=("text", "json"),
           shown_in=(WORKER, RUN, QUEUE)),
    Option("log_levels", _parse_str_list, [],
           "Levels of single loggers, e.g. `mrq.worker=DEBUG mrq.scheduler=WARNING` (over log_level).",
           shown_in=(WORKER, RUN, QUEUE)),
    Option("quiet", _parse_bool, False, "Do not echo per-job logs to the worker's output.",
           shown_in=(WORKER, RUN)),
    # --- job defaults (overridable per task in TASKS)
    Option("default_job_timeout", _parse_float, 3600.0, "Seconds a job may run before it is killed (`timeout`).",
           minimum=0.001, group=JOB_DEFAULTS, shown_in=(WORKER,)),
    Option("default_job_result_ttl", _parse_float, 7 * DAY, "Seconds a successful job is kept.", minimum=0,
           group=JOB_DEFAULTS, shown_in=(WORKER,)),
    Option("default_job_abort_ttl", _parse_float, DAY, "Seconds an aborted job is kept.", minimum=0,
           group=JOB_DEFAULTS, shown_in=(WORKER,)),
    Option("default_job_cancel_ttl", _parse_float, DAY, "Seconds a cancelled job is kept.", minimum=0,
           group=JOB_DEFAULTS, shown_in=(WORKER, DASHBOARD, QUEUE)),
    Option("default_job_ttl", _parse_float, 180 * DAY,
           "Seconds a job in any other final status (failed, timeout, maxretries...) is kept.", minimum=0,
           group=JOB_DEFAULTS, shown_in=(WORKER,)),
    Option("default_job_max_retries", _parse_int, 3, "Retries allowed by retry_current_job() by default.",
           minimum=0, group=JOB_DEFAULTS, shown_in=(WORKER,)),
    Option("default_job_retry_delay", _parse_float, 3.0, "Seconds before a retried job runs again by default.",
           minimum=0, group=JOB_DEFAULTS, shown_in=(WORKER,)),
    Option("retry_on_connection_errors", _parse_bool, True,
           "A job whose task raised a Redis or MongoDB connection error (an outage, a failover) is retried with "
           "exponential backoff from retry_delay, within max_retries, instead of failing.",
           group=JOB_DEFAULTS, shown_in=(WORKER,)),
    # --- worker
    Option("queues", _parse_str_list, ["default"],
           "Queues to listen on, highest priority first; `name/` also takes every subqueue `name/...`.",
           scope=WORKER, positional=True),
    Option("greenlets", _parse_int, 1, "Jobs run concurrently by one worker process (gevent greenlets).",
           scope=WORKER, flags=("--gevent", "-g"), minimum=1),
    Option("processes", _parse_int, 0,
           "Run this many worker processes under supervisord (0 = this process is the worker).",
           scope=WORKER, flags=("-p",), minimum=0),
    Option("max_jobs", _parse_int, 0, "Exit cleanly after this many jobs (0 = no limit).", scope=WORKER, minimum=0),
    Option("max_time", _parse_float, 0.0, "Exit cleanly after this many seconds (0 = no limit).", scope=WORKER,
           minimum=0),
    Option("max_memory", _parse_int, 0, "Exit cleanly once RSS exceeds this many MB (0 = no limit).",
           scope=WORKER, minimum=0),
    Option("dequeue_strategy", _parse_str, "sequential",
           "sequential: strict queue priority; parallel: round-robin; burst: exit when the queues are empty.",
           scope=WORKER, choices=("sequential", "parallel", "burst")),
    Option("report_interval", _parse_float, 5.0, "Seconds between worker reports in mrq_workers.",
           scope=WORKER, minimum=0.1),
    Option("worker_lease", _parse_float, 15.0,
           "Seconds a worker's lease lasts without renewal; its jobs are recovered once it expires.",
           scope=WORKER, minimum=1),
    Option("forget_subqueues_after", _parse_float, 86400.0,
           "Seconds after which a subqueue that holds nothing and got no new job is dropped from the known "
           "queues (the dashboard's list, the subqueues workers listening on root/ look at).",
           scope=WORKER, minimum=300),
    Option("max_recoveries", _parse_int, 3,
           "Times a job may be recovered from a crashed worker before it is marked failed as a poison job.",
           scope=WORKER, minimum=0),
    Option("task_whitelist", _parse_str_list, [],
           "Task paths (comma-separated) this worker runs, alone: jobs of other tasks stay queued for other workers "
           "(regular queues).", scope=WORKER),
    Option("task_blacklist", _parse_str_list, [],
           "Task paths (comma-separated) this worker never runs: their jobs stay queued for other workers "
           "(regular queues).", scope=WORKER),
    Option("scheduler", _parse_bool, False, "Also run the scheduler (SCHEDULER_TASKS) in this worker.",
           scope=WORKER),
    Option("scheduler_interval", _parse_float, 1.0, "Seconds between scheduler checks.", scope=WORKER,
           minimum=0.1),
    Option("ensure_indexes", _parse_bool, False, "Create the MongoDB indexes at start.", scope=WORKER),
    Option("admin_port", _parse_int, 0, "Port of the worker's admin HTTP server (0 = off).", scope=WORKER,
           minimum=0),
    Option("admin_ip", _parse_str, "127.0.0.1", "Address the admin HTTP server binds to.", scope=WORKER),
    Option("admin_token", _parse_str, "",
           "Bearer token every admin HTTP request must send (Authorization: Bearer ...); set it whenever the "
           "admin server is reachable from other machines: /report shows live job stacks.", scope=WORKER),
    # --- tracing (worker)
    Option("trace_greenlets", _parse_bool, False,
           "Measure the time each job's greenlets ran and how often they switched (job fields time, switches).",
           scope=WORKER),
    Option("trace_io", _parse_bool, False,
           "Record each Redis, MongoDB and HTTP call of a job with its duration (job field io).", scope=WORKER),
    Option("trace_memory", _parse_bool, False,
           "Measure memory growth per job, with objgraph type counts (job fields memory_diff, memory_growth); "
           "needs --greenlets 1.", scope=WORKER),
    Option("trace_memory_type", _parse_str, "",
           "With --trace-memory: draw the references to an object of this type after each job (needs graphviz).",
           scope=WORKER),
    Option("trace_memory_output_dir", _parse_str, "memory_traces",
           "Where --trace-memory-type writes its graphs.", scope=WORKER),
    Option("profile", _parse_bool, False,
           "cProfile each job (with --greenlets 1; job field profile) or else the whole worker (its report).",
           scope=WORKER),
    Option("add_network_latency", _parse_float, 0.0,
           "Add a random delay of up to this many seconds before every Redis, MongoDB and HTTP call "
           "(rehearse a slow network).", scope=WORKER, minimum=0),
    # --- mrq-dashboard
    Option("dashboard_port", _parse_int, 5555, "Port the dashboard listens on.", scope=DASHBOARD,
           flags=("--port",), minimum=0),
    Option("dashboard_bind", _parse_str, "127.0.0.1",
           "Address the dashboard binds to (loopback by default; anything else should have auth).",
           scope=DASHBOARD, flags=("--bind",)),
    Option("dashboard_auth", _parse_str, "",
           "`user:password` for HTTP basic auth on every dashboard page and API route (empty = none).",
           scope=DASHBOARD),
    Option("dashboard_token", _parse_str, "",
           "Bearer token accepted by the dashboard (`Authorization: Bearer <token>`, for API clients).",
           scope=DASHBOARD),
    Option("dashboard_readonly", _parse_bool, False,
           "Read-only dashboard: every action (cancel, requeue, abort, pause, enqueue) is refused.",
           scope=DASHBOARD),
    Option("dashboard_enqueue_paths", _parse_str_list, [],
           "Task paths (exact, or `prefix.*` patterns) that POST /api/jobs may enqueue; each must be a Task "
           "class or function defined in its module (empty = enqueueing by HTTP is off).",
           scope=DASHBOARD),
    # --- mrq-run
    Option("queue", _parse_str, "", "Enqueue the task on this queue and print its id instead of running it.",
           scope=RUN),
    # --- file/env only
    Option("tasks", _parse_json(dict), {},
           "Per-task settings by path or path prefix: queue, timeout, result_ttl, max_retries, retry_delay, ...",
           cli=False),
    Option("scheduler_tasks", _parse_json(list), [], "Scheduled tasks (see docs/scheduler.md).", cli=False),
    Option("raw_queues", _parse_json(dict), {}, "Raw queue settings by queue name.", cli=False),
    Option("log_handlers", _parse_json(dict), {},
           "Extra `logging` handlers for the per-job logger `mrq.current`, as in MRQ: "
           "`{\"logging.FileHandler\": {\"filename\": ..., \"format\": ..., \"level\": ...}}` (other keys are the "
           "handler's arguments); a `mrq.logger.MongoHandler` entry only sets `mongodb_logs_size`.", cli=False),
    Option("metric_hook", _parse_callable_or_path, None, "fn(name, incr=1, **kwargs) called for each metric.",
           cli=False),
)

OPTIONS_BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}

#: MRQ 0.9 command-line flags that mrq accepts and ignores, so that old command lines and supervisor
#: configs still start: name -> (takes a value, command scope, what to do instead). Each one given
#: prints one deprecation line (config.deprecation_warnings).
DEPRECATED_FLAGS: dict[str, tuple[bool, str, str]] = {
    "max_latency": (True, WORKER, "idle workers are woken at once by notifications"),
    "subqueues_refresh_interval": (True, WORKER, "new subqueues are learnt from notifications (and re-read every 5 s)"),
    "paused_queues_refresh_interval": (True, WORKER, "workers see a pause within a second"),
    "report_file": (True, WORKER, "use --admin-port and GET /report"),
    "agent_id": (True, WORKER, "there is no mrq-agent (docs/migrating-from-mrq.md)"),
    "worker_id": (True, WORKER, "worker ids are generated; use --name to label a worker"),
    "worker_group": (True, WORKER, "there is no mrq-agent (docs/migrating-from-mrq.md)"),
    "local_ip": (True, WORKER, "the worker report shows the host name"),
    "external_ip": (True, WORKER, "the worker report shows the host name"),
    "worker_class": (True, GENERAL, "Worker subclasses are not loaded; task code and settings cover what they did"),
    "queue_ttl": (True, GENERAL, "there are no queuesize counters to expire"),
    "use_large_job_ids": (False, GENERAL, "job ids are ObjectIds"),
    "no_import_patch": (False, GENERAL, "nothing is patched at import"),
    "print_mongodb": (False, GENERAL, "use --trace-io"),
    "log_handler": (True, GENERAL, "use LOG_HANDLERS in the config file"),
}
