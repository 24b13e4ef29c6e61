"""Configuration: one typed `Settings` object built from four layers.

Precedence, highest first: command line > `MRQ_*` environment variables > the config file
(`mrq-config.py` in the working directory, or `--config PATH`) > defaults.

Every known key is declared once below as an `Option` (name, type, default, help, where it
applies); the command-line parsers, the environment reader, the file reader, the validation and
the configuration reference in docs/ are all derived from that table. Uppercase variables of
the config file that are not known keys pass through untouched (MRQ users keep custom keys,
hooks and lambdas there) and are readable as `settings["lower_case_name"]`.

Nothing here connects to anything or has side effects beyond reading the file it is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import runpy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import ConfigError

ENV_PREFIX = "MRQ_"
DEFAULT_CONFIG_FILE = "mrq-config.py"

# Which command line exposes an option. Every command reads every layer of the file and env.
GENERAL = "general"  # every command
WORKER = "worker"
RUN = "run"
DASHBOARD = "dashboard"


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
           "Redis URI: redis://, rediss:// (TLS), unix://, redis+sentinel://host:port[,host:port]/service[/db], "
           "redis+cluster://host:port"),
    Option("redis_prefix", _parse_str, "mrq", "Namespace of every Redis key and channel mrq uses."),
    Option("redis_max_connections", _parse_int, 100, "Size of the Redis connection pool per process.",
           minimum=1),
    Option("redis_timeout", _parse_float, 10.0,
           "Seconds before a Redis connect or command gives up (blocking waits have their own limits).",
           minimum=0.1),
    Option("mongodb_jobs", _parse_str, "mongodb://127.0.0.1:27017/mrq",
           "MongoDB URI of the jobs database (the database named in the path, `mrq` if none).",
           flags=("--mongodb",)),
    Option("mongodb_logs", _parse_str, "1",
           "Where per-job logs go: a MongoDB URI, `1` = the jobs database, `0` = no log storage."),
    Option("mongodb_logs_size", _parse_int, 0,
           "Make mrq_logs a capped collection of this many bytes (0 = not capped; a TTL cleans it).", minimum=0),
    Option("mongodb_timeout", _parse_float, 5.0,
           "Seconds before a MongoDB server selection or connect gives up.", minimum=0.1),
    # --- identity, logging
    Option("name", _parse_str, "", "Worker name shown in reports (default: <hostname>.<pid>)."),
    Option("log_level", _parse_str, "INFO", "Log level of the mrq loggers.",
           choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    Option("log_format", _parse_str, "text", "Log line format of mrq commands: human-readable text, or one JSON object "
           "per line for log pipelines.", choices=("text", "json")),
    Option("log_levels", _parse_str_list, [],
           "Levels of single loggers, e.g. `mrq.worker=DEBUG mrq.scheduler=WARNING` (over log_level)."),
    Option("quiet", _parse_bool, False, "Do not echo per-job logs to the worker's output."),
    # --- job defaults (overridable per task in TASKS)
    Option("default_job_timeout", _parse_float, 3600.0, "Seconds a job may run before it is killed (`timeout`).",
           minimum=0.001),
    Option("default_job_result_ttl", _parse_float, 7 * DAY, "Seconds a successful job is kept.", minimum=0),
    Option("default_job_abort_ttl", _parse_float, DAY, "Seconds an aborted job is kept.", minimum=0),
    Option("default_job_cancel_ttl", _parse_float, DAY, "Seconds a cancelled job is kept.", minimum=0),
    Option("default_job_ttl", _parse_float, 180 * DAY,
           "Seconds a job in any other final status (failed, timeout, maxretries...) is kept.", minimum=0),
    Option("default_job_max_retries", _parse_int, 3, "Retries allowed by retry_current_job() by default.",
           minimum=0),
    Option("default_job_retry_delay", _parse_float, 3.0, "Seconds before a retried job runs again by default.",
           minimum=0),
    Option("retry_on_connection_errors", _parse_bool, True,
           "A job whose task raised a Redis or MongoDB connection error (an outage, a failover) is retried with "
           "exponential backoff from retry_delay, within max_retries, instead of failing."),
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
    Option("max_recoveries", _parse_int, 3,
           "Times a job may be recovered from a crashed worker before it is marked failed as a poison job.",
           scope=WORKER, minimum=0),
    Option("scheduler", _parse_bool, False, "Also run the scheduler (SCHEDULER_TASKS) in this worker.",
           scope=WORKER),
    Option("scheduler_interval", _parse_float, 1.0, "Seconds between scheduler checks.", scope=WORKER,
           minimum=0.1),
    Option("ensure_indexes", _parse_bool, False, "Create the MongoDB indexes at start.", scope=WORKER),
    Option("admin_port", _parse_int, 0, "Port of the worker's admin HTTP server (0 = off).", scope=WORKER,
           minimum=0),
    Option("admin_ip", _parse_str, "127.0.0.1", "Address the admin HTTP server binds to.", scope=WORKER),
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
           "With --trace_memory: draw the references to an object of this type after each job (needs graphviz).",
           scope=WORKER),
    Option("trace_memory_output_dir", _parse_str, "memory_traces",
           "Where --trace_memory_type writes its graphs.", scope=WORKER),
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
           "Task paths (or dotted prefixes) that POST /api/jobs may enqueue (empty = enqueueing by HTTP is off).",
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
    Option("metric_hook", _parse_callable_or_path, None, "fn(name, incr=1, **kwargs) called for each metric.",
           cli=False),
)

OPTIONS_BY_NAME: dict[str, Option] = {opt.name: opt for opt in OPTIONS}


@dataclass
class Settings:
    """The effective configuration. Attribute access for known keys; `settings["key"]` (MRQ style)
    for any key, including pass-through uppercase variables of the config file."""

    values: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # key -> "default" | "file" | "env" | "cli"
    config_file: str | None = None

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(f"unknown setting {name!r}")

    def __getitem__(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        return self.extra[key]

    def __contains__(self, key: object) -> bool:
        return key in self.values or key in self.extra

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self) -> Iterator[str]:
        yield from self.values
        yield from self.extra

    def replace(self, **changes: Any) -> Settings:
        """A copy with some known keys changed (validated like any other layer)."""
        values = dict(self.values)
        sources = dict(self.sources)
        for key, value in changes.items():
            option = OPTIONS_BY_NAME.get(key)
            if option is None:
                raise ConfigError(f"unknown setting {key!r}")
            try:
                values[key] = option.convert(value)
            except ValueError as exc:
                raise ConfigError(f"setting {key}: {exc}") from None
            sources[key] = "override"
        return dataclasses.replace(self, values=values, sources=sources)


# --- the layers -----------------------------------------------------------------------------------


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Execute a config file and return its uppercase variables, or raise a one-line ConfigError."""
    path = os.fspath(path)
    try:
        namespace = runpy.run_path(path, run_name="mrq_config")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except SyntaxError as exc:
        raise ConfigError(f"config file {path}, line {exc.lineno}: syntax error: {exc.msg}") from None
    except Exception as exc:
        raise ConfigError(f"config file {path} raised {type(exc).__name__}: {exc}") from None
    return {key: value for key, value in namespace.items() if key[:1].isupper()}


def _apply(values: dict[str, Any], sources: dict[str, str], option: Option, raw: Any, origin: str) -> None:
    try:
        values[option.name] = option.convert(raw)
    except ValueError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def build_parser(scope: str, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser of one command. Defaults are suppressed so that only flags the
    user actually passed override the other layers."""
    parser = _ErrorParser(prog=prog, description=description, argument_default=argparse.SUPPRESS,
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", "-c", metavar="PATH",
                        help=f"Config file (default: ./{DEFAULT_CONFIG_FILE} when it exists).")
    for option in OPTIONS:
        if not option.cli or option.scope not in (GENERAL, scope):
            continue
        help_text = f"{option.help} [env {option.env_name}; default {option.default!r}]"
        if option.positional:
            parser.add_argument(option.name, nargs="*", metavar=option.name.upper().rstrip("S"), help=help_text)
            continue
        flags = ("--" + option.name, *option.flags)
        if option.parse is _parse_bool:
            parser.add_argument(*flags, dest=option.name, action="store_const", const=True, help=help_text)
            parser.add_argument("--no-" + option.name, dest=option.name, action="store_const", const=False,
                                help=argparse.SUPPRESS)
        else:
            parser.add_argument(*flags, dest=option.name, metavar=option.type_name.split()[0].upper(),
                                help=help_text)
    return parser


class _ErrorParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit 2
        raise ConfigError(f"command line: {message} (see --help)")


def load_settings(
    argv: Sequence[str] | None = None,
    *,
    scope: str = GENERAL,
    env: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    parser: argparse.ArgumentParser | None = None,
    overrides: Mapping[str, Any] | None = None,
    default_file: bool = True,
) -> tuple[Settings, argparse.Namespace]:
    """Build the settings from all layers. Returns them with the parsed command line (for
    command-specific positional arguments). Raises ConfigError with a one-line reason."""
    env = os.environ if env is None else env
    args = argparse.Namespace()
    if argv is not None:
        parser = parser or build_parser(scope)
        args = parser.parse_args(list(argv))

    values: dict[str, Any] = {opt.name: _copy_default(opt.default) for opt in OPTIONS}
    sources = dict.fromkeys(values, "default")
    extra: dict[str, Any] = {}

    path = getattr(args, "config", None) or config_file or env.get(ENV_PREFIX + "CONFIG") or None
    if path is None and default_file:
        candidate = Path(cwd or os.getcwd()) / DEFAULT_CONFIG_FILE
        path = str(candidate) if candidate.is_file() else None
    if path is not None:
        for key, raw in read_config_file(path).items():
            option = OPTIONS_BY_NAME.get(key.lower())
            if option is None:
                extra[key.lower()] = raw
                continue
            _apply(values, sources, option, raw, f"config file {path}: {key}")
            sources[option.name] = "file"

    for option in OPTIONS:
        raw_env = env.get(option.env_name)
        if raw_env is None or raw_env == "":
            continue
        _apply(values, sources, option, raw_env, f"environment variable {option.env_name}")
        sources[option.name] = "env"

    for option in OPTIONS:
        if not hasattr(args, option.name):
            continue
        raw_cli = getattr(args, option.name)
        if option.positional and not raw_cli:
            continue
        flag = option.name if option.positional else "--" + option.name
        _apply(values, sources, option, raw_cli, f"command line {flag}")
        sources[option.name] = "cli"

    for key, raw in (overrides or {}).items():
        option = OPTIONS_BY_NAME.get(key)
        if option is None:
            extra[key] = raw
            continue
        _apply(values, sources, option, raw, f"setting {key}")
        sources[key] = "override"

    settings = Settings(values=values, extra=extra, sources=sources, config_file=None if path is None else str(path))
    _validate(settings)
    return settings, args


def _copy_default(value: Any) -> Any:
    return type(value)(value) if isinstance(value, list | dict) else value


def _validate(settings: Settings) -> None:
    """Checks that span several keys or need more than a type."""
    prefix = settings.redis_prefix
    if not re.fullmatch(r"[A-Za-z0-9_.\-]{1,64}", prefix):
        raise ConfigError(
            f"redis_prefix {prefix!r}: use 1-64 letters, digits, '_', '-' or '.' (no spaces, ':' or braces)"
        )
    if settings.mongodb_logs not in ("0", "1") and not settings.mongodb_logs.startswith(("mongodb://",
                                                                                           "mongodb+srv://")):
        raise ConfigError(f"mongodb_logs: expected 0, 1 or a mongodb:// URI, got {settings.mongodb_logs!r}")
    for key in ("mongodb_jobs",):
        if not settings[key].startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError(f"{key}: expected a mongodb:// URI, got {settings[key]!r}")
    for item in settings.log_levels:
        name, sep, level = item.partition("=")
        if not sep or not name or level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log_levels: expected logger=LEVEL (DEBUG, INFO, WARNING, ERROR, CRITICAL), "
                              f"got {item!r}")
    for path, task_conf in settings.tasks.items():
        if not isinstance(path, str) or not isinstance(task_conf, dict):
            raise ConfigError(f"TASKS: each entry must be 'path': {{...settings...}}, got {path!r}")
        for key, value in task_conf.items():
            _validate_task_key(path, key, value)


# TASKS entry keys: (parser, minimum)
_TASK_KEYS: dict[str, tuple[Callable[[Any], Any], float | None]] = {
    "queue": (_parse_str, None),
    "timeout": (_parse_float, 0.001),
    "result_ttl": (_parse_float, 0),
    "abort_ttl": (_parse_float, 0),
    "cancel_ttl": (_parse_float, 0),
    "default_ttl": (_parse_float, 0),
    "max_retries": (_parse_int, 0),
    "retry_delay": (_parse_float, 0),
    "max_concurrency": (_parse_int, 1),
}


def _validate_task_key(path: str, key: str, value: Any) -> None:
    where = f"TASKS[{path!r}]"
    if key not in _TASK_KEYS:
        raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_TASK_KEYS))})")
    parse, minimum = _TASK_KEYS[key]
    try:
        parsed = parse(value)
    except ValueError as exc:
        raise ConfigError(f"{where}.{key}: expected {exc}, got {value!r}") from None
    if minimum is not None and parsed < minimum:
        raise ConfigError(f"{where}.{key}: expected a value >= {minimum:g}, got {value!r}")


def reference_markdown() -> str:
    """The configuration reference table (docs/configuration.md embeds it; a test keeps it current)."""
    rows = ["| key (file) | flag | env | type | default | meaning |", "|---|---|---|---|---|---|"]
    for option in OPTIONS:
        if option.positional:
            flag = "positional"
        elif option.cli:
            flag = ", ".join(f"`{f}`" for f in ("--" + option.name, *option.flags))
        else:
            flag = "(file/env only)"
        default = json.dumps(option.default) if option.default is not None else "none"
        scope = "" if option.scope == GENERAL else f" *({option.scope})*"
        choices = f" One of: {', '.join(option.choices)}." if option.choices else ""
        rows.append(f"| `{option.file_name}` | {flag} | `{option.env_name}` | {option.type_name} | `{default}` | "
                    f"{option.help}{choices}{scope} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
