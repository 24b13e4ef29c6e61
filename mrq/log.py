"""Process logging for mrq commands: human-readable lines by default, one JSON object per line
with `--log_format json`. Lines logged inside a job carry the job id."""

from __future__ import annotations

import importlib
import json
import logging
from typing import IO, Any

from . import current
from .config import MONGO_LOG_HANDLER, Settings
from .exceptions import ConfigError
from .joblogs import message_text

#: MRQ's LOG_FORMAT default, used by LOG_HANDLERS' handlers without a "format".
HANDLER_FORMAT = "%(asctime)s [%(levelname)s] %(message)s"


class _JobFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        job = current.get_current_job()
        record.job_id = str(job.id) if job is not None else ""
        return True


class _JobLevelFilter(logging.Filter):
    """The job logger keeps every line (they are all stored with the job); the stream shows its
    lines from `level` up, like everything else (other loggers filter by their own level)."""

    def __init__(self, level: str) -> None:
        super().__init__()
        self.level = logging.getLevelName(level)

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("mrq.current") or record.levelno >= self.level


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(job_tag)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        clean = logging.makeLogRecord(record.__dict__)
        clean.msg, clean.args = message_text(record), None
        job_id = getattr(record, "job_id", "")
        clean.job_tag = f" [job {job_id}]" if job_id else ""
        return super().format(clean)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname,
            "logger": record.name,
            "message": message_text(record),
        }
        job_id = getattr(record, "job_id", "")
        if job_id:
            data["job"] = job_id
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class DecodingFormatter(logging.Formatter):
    """A `logging` format string; byte strings in the message are decoded (undecodable bytes
    replaced), as MRQ did."""

    def format(self, record: logging.LogRecord) -> str:
        clean = logging.makeLogRecord(record.__dict__)
        clean.msg, clean.args = message_text(record), None
        return super().format(clean)


def log_handlers(settings: Settings) -> list[logging.Handler]:
    """The handlers of LOG_HANDLERS (MRQ's `{class path: {arguments, "format", "level"}}`), built;
    raises ConfigError naming the entry when a class cannot be imported or built."""
    handlers: list[logging.Handler] = []
    for path, entry in settings.log_handlers.items():
        if path == MONGO_LOG_HANDLER:
            continue  # mrq stores per-job logs itself; the entry only gave mongodb_logs_size (config.py)
        where = f"LOG_HANDLERS[{path!r}]"
        arguments = dict(entry)
        fmt = arguments.pop("format", None) or HANDLER_FORMAT
        level = str(arguments.pop("level", settings.log_level)).upper()
        module_name, _, class_name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name) if module_name else None
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{where}: cannot import {path!r} ({type(exc).__name__}: {exc})") from None
        if not (isinstance(cls, type) and issubclass(cls, logging.Handler)):
            raise ConfigError(f"{where}: {path!r} is not a logging.Handler class (module.ClassName)")
        try:
            handler = cls(**arguments)
            handler.setLevel(level)
            handler.setFormatter(DecodingFormatter(fmt))
        except Exception as exc:
            raise ConfigError(f"{where}: cannot build the handler: {type(exc).__name__}: {exc}") from None
        handler._mrq_extra = True  # type: ignore[attr-defined]
        handlers.append(handler)
    return handlers


def setup_logging(settings: Settings, stream: IO[str]) -> None:
    """Send the `mrq` loggers (worker and per-job) to `stream` in the configured format, and the
    per-job logger to the LOG_HANDLERS handlers too. Raises ConfigError for a bad LOG_HANDLERS."""
    extra = log_handlers(settings)
    root = logging.getLogger("mrq")
    for handler in list(root.handlers):
        if getattr(handler, "_mrq_stream", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler._mrq_stream = True  # type: ignore[attr-defined]
    handler.addFilter(_JobFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    root.propagate = False
    job_logger = logging.getLogger("mrq.current")
    job_logger.setLevel(logging.DEBUG)  # every job line is stored; the stream handler filters by level
    handler.setLevel(logging.DEBUG)
    handler.addFilter(_JobLevelFilter(settings.log_level))
    job_logger.propagate = not settings.quiet
    for old in [h for h in job_logger.handlers if getattr(h, "_mrq_extra", False)]:
        job_logger.removeHandler(old)
        old.close()
    for new in extra:
        job_logger.addHandler(new)
    for item in settings.log_levels:
        name, _, level = item.partition("=")
        logging.getLogger(name).setLevel(level.upper())
