"""Configuration: one typed `Settings` object built from four layers.

Precedence, highest first: command line > `MRQ_*` environment variables > the config file
(`mrq-config.py` in the working directory, or `--config PATH`) > defaults.

Every known key is declared once as an `Option` in mrq/options.py (name, type, default, help, where
it applies); the command-line parsers, the environment reader, the file reader, the validation and
the configuration reference in docs/ are derived here from that table. Uppercase variables of
the config file that are not known keys pass through untouched (MRQ users keep custom keys,
hooks and lambdas there) and are readable as `settings["lower_case_name"]`.

Nothing here connects to anything or has side effects beyond reading the file it is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import logging
import os
import re
import runpy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import ConfigError
from .options import (
    CONNECTIONS,
    DASHBOARD,
    DAY,
    DEPRECATED_FLAGS,
    ENV_PREFIX,
    GENERAL,
    JOB_DEFAULTS,
    OPTIONS,
    OPTIONS_BY_NAME,
    OTHER,
    QUEUE,
    RUN,
    TYPE_NAMES,
    WORKER,
    Option,
    _parse_bool,
    _parse_float,
    _parse_int,
    _parse_str,
)
from .version import __version__

__all__ = [  # the table lives in mrq/options.py; its names stay importable from here
    "DASHBOARD", "DAY", "DEFAULT_CONFIG_FILE", "DEPRECATED_FLAGS", "ENV_PREFIX", "GENERAL", "OPTIONS",
    "OPTIONS_BY_NAME", "QUEUE", "RUN", "TYPE_NAMES", "WORKER", "Option", "Settings", "build_parser",
    "deprecation_warnings", "load_settings", "read_config_file", "reference_markdown",
]  # fmt: skip

DEFAULT_CONFIG_FILE = "mrq-config.py"


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


_METAVARS = {"integer": "N", "number": "N", "string": "TEXT", "list of strings": "LIST"}

HELP_EPILOG = """Every option can also be set in mrq-config.py (LOG_LEVEL = "DEBUG") or in the environment
(MRQ_LOG_LEVEL=DEBUG); the command line wins. Flags take MRQ's underscore spelling too
(--max_jobs = --max-jobs), and MRQ 0.9 flags that no longer do anything are accepted with a warning."""


def build_parser(scope: str, prog: str | None = None, description: str | None = None,
                 usage: str | None = None) -> argparse.ArgumentParser:
    """The command-line parser of one command. Defaults are suppressed so that only flags the
    user actually passed override the other layers.

    --help lists the command's own options first (the parser's default group: commands add
    theirs there too), then the connections, the job defaults and the rest; only the options the
    command acts on (`Option.shown_for`). The others it accepts are hidden: the GENERAL options it
    ignores, MRQ's underscore spellings (`--max_jobs`, each a hidden twin of `--max-jobs` with the
    same dest) and MRQ 0.9's deprecated flags."""
    parser = _ErrorParser(prog=prog, description=description, usage=usage or "%(prog)s [options]",
                          epilog=HELP_EPILOG, add_help=False, argument_default=argparse.SUPPRESS,
                          formatter_class=_HelpFormatter)
    groups = {CONNECTIONS: parser.add_argument_group("connections"),
              JOB_DEFAULTS: parser.add_argument_group("job defaults (per task: TASKS in the config file)"),
              OTHER: parser.add_argument_group("other options")}
    other = groups[OTHER]
    other.add_argument("--config", "-c", metavar="PATH",
                       help=f"Config file (default: ./{DEFAULT_CONFIG_FILE} when it exists).")
    other.add_argument("--help", "-h", action="help", help="Show this help and exit.")
    other.add_argument("--version", "-v", action="version", version=f"mrq {__version__}",
                       help="Show the version and exit.")
    for option in OPTIONS:
        if not option.cli or option.scope not in (GENERAL, scope):
            continue
        shown = option.shown_for(scope)
        where = parser if option.scope == scope else groups[option.group]
        help_text = _option_help(option) if shown else argparse.SUPPRESS
        if option.positional:
            where.add_argument(option.name, nargs="*", metavar=option.name.upper().rstrip("S"), help=help_text)
            continue
        underscore = "--" + option.name
        twins = [underscore] if underscore != option.flag else []
        if option.parse is _parse_bool:
            where.add_argument(option.flag, *option.flags, dest=option.name, action="store_const", const=True,
                               help=help_text)
            negations = dict.fromkeys(("--no-" + option.name.replace("_", "-"), "--no-" + option.name))
            for flag in (*twins, *negations):
                where.add_argument(flag, dest=option.name, action="store_const", const=flag in twins,
                                   help=argparse.SUPPRESS)
        else:
            metavar = "|".join(option.choices) if option.choices else _METAVARS.get(option.type_name, "VALUE")
            where.add_argument(option.flag, *option.flags, dest=option.name, metavar=metavar, help=help_text)
            for flag in twins:
                where.add_argument(flag, dest=option.name, metavar=metavar, help=argparse.SUPPRESS)
    for name, (takes_value, flag_scope, _instead) in DEPRECATED_FLAGS.items():
        if flag_scope in (GENERAL, scope):
            for flag in dict.fromkeys(("--" + name, "--" + name.replace("_", "-"))):
                parser.add_argument(flag, dest=_DEPRECATED + name, help=argparse.SUPPRESS,
                                    **({"metavar": "VALUE"} if takes_value else {"action": "store_const",
                                                                                 "const": True}))
    return parser


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written; option help in a column wide enough for most flags."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def _option_help(option: Option) -> str:
    """One option's --help text: its meaning and its default when it has one worth showing (not
    an empty string, list or False)."""
    text, default = option.help, option.default
    if default is True:
        text += f" (on by default: --no-{option.flag[2:]} turns it off)"
    elif default not in ("", [], None, False) and not option.positional:
        text += f" (default: {default:g})" if isinstance(default, float) else f" (default: {default})"
    return text.replace("%", "%%")


_DEPRECATED = "deprecated:"


def deprecation_warnings(args: argparse.Namespace) -> list[str]:
    """One line per deprecated MRQ 0.9 flag given on the command line (they are ignored)."""
    return [f"--{name} is deprecated and ignored: {DEPRECATED_FLAGS[name][2]}"
            for name in DEPRECATED_FLAGS if hasattr(args, _DEPRECATED + name)]


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
    intermixed: bool = False,
) -> tuple[Settings, argparse.Namespace]:
    """Build the settings from all layers. Returns them with the parsed command line (for
    command-specific positional arguments). Raises ConfigError with a one-line reason.
    `intermixed`: positional arguments may come after options (`mrq-queue empty --yes crawl`)."""
    env = os.environ if env is None else env
    args = argparse.Namespace()
    if argv is not None:
        parser = parser or build_parser(scope)
        args = parser.parse_intermixed_args(list(argv)) if intermixed else parser.parse_args(list(argv))

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
                _warn_if_typo(key, f"config file {path}")
                continue
            _apply(values, sources, option, raw, f"config file {path}: {key}")
            sources[option.name] = "file"

    _warn_unknown_env(env)
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


log = logging.getLogger("mrq.config")

#: MRQ_* variables that are not settings: read by mrq's tools, its tests and its demo.
_ENV_NOT_SETTINGS = ("MRQ_CONFIG", "MRQ_IS_SUBPROCESS", "MRQ_PARENT_PID", "MRQ_PROCESS_NUM", "MRQ_DASHBOARD_PORT",
                     "MRQ_NEED_CHROMIUM", "MRQ_TEST_", "MRQ_BENCH_")


def _nearest(name: str, candidates: Iterator[str] | list[str], cutoff: float) -> str | None:
    found = difflib.get_close_matches(name, list(candidates), n=1, cutoff=cutoff)
    return found[0] if found else None


def _warn_if_typo(key: str, where: str) -> None:
    """An uppercase config-file key that is not a setting is kept for `get_current_config()` (MRQ
    allowed custom keys); one that looks like a setting's name is most likely a typo."""
    if re.fullmatch(r"(REDIS|MONGODB)_[A-Z0-9_]+", key) or key.lower() in DEPRECATED_FLAGS:
        return  # named connections (connections.redis_<name>), MRQ 0.9 keys mrq ignores
    nearest = _nearest(key.upper(), [option.name.upper() for option in OPTIONS], 0.8)
    if nearest is not None:
        log.warning("%s: %s is not an mrq setting: did you mean %s? (kept as a custom key)", where, key, nearest)


def _warn_unknown_env(env: Mapping[str, str]) -> None:
    """MRQ_* variables that no setting reads: named with the nearest setting's variable."""
    known = {option.env_name for option in OPTIONS}
    for name in env:
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith(_ENV_NOT_SETTINGS):
            continue
        nearest = _nearest(name, sorted(known), 0.6)
        log.warning("environment variable %s is not an mrq setting%s: ignored", name,
                    f" (did you mean {nearest}?)" if nearest else "")


def _validate_redis_uri(uri: str) -> None:
    """The Redis URI's form, checked when the settings load (connections are made later, lazily:
    a malformed URI would otherwise surface deep in the first Redis call)."""
    from redis.connection import parse_url

    scheme, sep, rest = uri.partition("://")
    what = "redis: expected redis://, rediss://, unix://, redis+sentinel:// or redis+cluster://"
    if not sep or scheme.lower() not in ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster"):
        raise ConfigError(f"{what}, got {_redacted(uri)!r}")
    if scheme.lower() in ("redis+sentinel", "redis+cluster"):
        hosts = rest.split("/", 1)[0].rpartition("@")[2]
        bad = [h for h in hosts.split(",") if not re.fullmatch(r"\[?[^\s:/\[\]]*\]?(:\d{1,5})?", h)]
        if not hosts or bad:
            raise ConfigError(f"redis: expected host:port[,host:port...] after {scheme}://, got {_redacted(uri)!r}")
        return
    try:
        parse_url(uri)
    except ValueError as exc:
        raise ConfigError(f"redis: invalid URI {_redacted(uri)!r}: {exc}") from None


def _redacted(uri: str) -> str:
    return re.sub(r"://([^:@/]*):[^@/]*@", r"://\1:***@", uri)


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
    _validate_redis_uri(settings.redis)
    _validate_log_handlers(settings)
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


#: The LOG_HANDLERS entry of MRQ's MongoDB handler: here it only gives mongodb_logs_size.
MONGO_LOG_HANDLER = "mrq.logger.MongoHandler"


def _validate_log_handlers(settings: Settings) -> None:
    """LOG_HANDLERS is {class path: {arguments}}; MRQ's `mongodb_logs_size` given in the
    mrq.logger.MongoHandler entry becomes the mongodb_logs_size setting (unless that is set)."""
    for path, arguments in settings.log_handlers.items():
        if not isinstance(path, str) or not isinstance(arguments, dict):
            raise ConfigError(f"LOG_HANDLERS: each entry must be 'module.HandlerClass': {{...arguments...}}, "
                              f"got {path!r}: {arguments!r}")
    raw = settings.log_handlers.get(MONGO_LOG_HANDLER, {}).get("mongodb_logs_size")
    if raw is None or settings.mongodb_logs_size:
        return
    try:
        size = OPTIONS_BY_NAME["mongodb_logs_size"].convert(raw)
    except ValueError as exc:
        raise ConfigError(f"LOG_HANDLERS[{MONGO_LOG_HANDLER!r}]['mongodb_logs_size']: {exc}") from None
    settings.values["mongodb_logs_size"] = size
    settings.sources["mongodb_logs_size"] = "file"


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
    parse_task_key(key, value, f"TASKS[{path!r}]")


def parse_task_key(key: str, value: Any, where: str) -> Any:
    """A per-task setting (a TASKS entry's key, or an argument of the @task decorator) parsed and
    checked; ConfigError naming `where` and the key when it is unknown or out of range."""
    if key not in _TASK_KEYS:
        raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_TASK_KEYS))})")
    parse, minimum = _TASK_KEYS[key]
    try:
        parsed = parse(value)
    except ValueError as exc:
        raise ConfigError(f"{where}.{key}: expected {exc}, got {value!r}") from None
    if minimum is not None and parsed < minimum:
        raise ConfigError(f"{where}.{key}: expected a value >= {minimum:g}, got {value!r}")
    return parsed


def reference_markdown() -> str:
    """The configuration reference table (docs/configuration.md embeds it; a test keeps it current)."""
    rows = ["| key (file) | flag | env | type | default | meaning |", "|---|---|---|---|---|---|"]
    for option in OPTIONS:
        if option.positional:
            flag = "positional"
        elif option.cli:
            flag = ", ".join(f"`{f}`" for f in (option.flag, *option.flags))
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
