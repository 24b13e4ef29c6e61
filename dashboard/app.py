"""The Flask app factory. `create_app(settings)` builds an app on a Store; it connects to nothing
until the first request, patches nothing and parses no command line (`mrq-dashboard`, in
dashboard/cli.py, does those). Without settings it reads the environment and the config file.

Errors are answered in one place: JSON `{"error": "<one line>"}` under /api/, an HTML page
elsewhere (with a banner when MongoDB or Redis cannot be reached: 503, and the server keeps
serving and recovers by itself when they are back).
"""

from __future__ import annotations

from typing import Any

import pymongo.errors
import redis.exceptions
from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from mrq.config import DASHBOARD, Settings, load_settings
from mrq.connections import redact_text
from mrq.exceptions import InvalidJob, InvalidQueueName, JobNotFound, StoreUnavailable
from mrq.job import ALL_STATUSES
from mrq.store import Store
from mrq.version import __version__

from .actions import Actions, Conflict, Forbidden, GroupNotFound
from .formatting import FILTERS, JSONProvider
from .jobfilter import BadInput
from .queries import Reader, TTLCache
from .security import CSRF_HEADER, Refused, Security
from .state import DashboardState

PARTIAL_HEADER = "X-Mrq-Partial"
MAX_BODY_BYTES = 16 * 1024 * 1024
NAV = (("pages.overview", "Overview"), ("pages.jobs", "Jobs"), ("pages.workers", "Workers"),
       ("pages.scheduled", "Scheduled"), ("pages.taskpaths", "Task paths"), ("pages.exceptions", "Exceptions"),
       ("pages.actions", "Actions"))
ERROR_GROUPS = {"errors": "failed,maxretries,timeout", "not finished": "waiting,queued,started,retry,delayed"}


def create_app(settings: Settings | None = None, *, store: Store | None = None, cache_seconds: float = 5.0,
               count_limit: int = 100_000) -> Flask:
    """The dashboard app. `store` lets a caller share (or instrument) the connections;
    `cache_seconds` is how long counts and statistics are reused between requests."""
    if settings is None:
        settings, _ = load_settings(None, scope=DASHBOARD)
    store = store or Store(settings)
    app = Flask(__name__, static_folder="static", template_folder="templates")
    app.json = JSONProvider(app)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False, TEMPLATES_AUTO_RELOAD=False)
    app.jinja_env.autoescape = True  # every template, whatever its file name
    app.jinja_env.filters.update(FILTERS)
    security = Security(settings)
    app.extensions["mrq"] = DashboardState(
        settings=settings, store=store, reader=Reader(store, TTLCache(cache_seconds), count_limit=count_limit),
        actions=Actions(store, enqueue_paths=settings.dashboard_enqueue_paths, count_limit=count_limit),
        security=security,
    )
    security.install(app)
    from .metrics import make_registry

    app.extensions["mrq_metrics"] = make_registry(app.extensions["mrq"].reader)

    from .api import api
    from .metrics import metrics
    from .pages import pages

    app.register_blueprint(pages)
    app.register_blueprint(api)
    app.register_blueprint(metrics)
    register_error_handlers(app, settings)

    @app.context_processor
    def globals_for_templates() -> dict[str, Any]:
        from flask import g

        return {"csrf_token": g.get("csrf_token", ""), "csrf_header": CSRF_HEADER, "readonly": security.readonly,
                "statuses": ALL_STATUSES, "status_groups": ERROR_GROUPS, "version": __version__,
                "partial": bool(request.headers.get(PARTIAL_HEADER)), "nav": NAV}

    return app


def wants_json() -> bool:
    return request.path.startswith("/api/")


def one_line(text: str, limit: int = 300) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return (lines[0] if lines else "error")[:limit]


def unavailable_message(exc: BaseException, settings: Settings) -> str:
    if isinstance(exc, StoreUnavailable):
        return one_line(str(exc))
    if isinstance(exc, pymongo.errors.OperationFailure) and not isinstance(exc, pymongo.errors.ExecutionTimeout):
        detail = one_line(str(exc))
        return "MongoDB refused the request: " + redact_text(detail, settings.mongodb_jobs, settings.mongodb_logs)
    if isinstance(exc, pymongo.errors.PyMongoError):
        detail = one_line(str(exc)).split(", Timeout:")[0]
        return "MongoDB is unreachable: " + redact_text(detail, settings.mongodb_jobs, settings.mongodb_logs)
    return "Redis is unreachable: " + redact_text(one_line(str(exc) or type(exc).__name__), settings.redis)


def register_error_handlers(app: Flask, settings: Settings) -> None:
    def answer(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        if wants_json():
            response = jsonify({"error": message})
        else:
            response = Response(render_template("error.html", status=status, message=message, title=f"Error {status}",
                                                banner=message if status == 503 else None), mimetype="text/html")
        response.status_code = status
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response

    @app.errorhandler(Refused)
    def refused(exc: Refused) -> Response:
        return answer(exc.status, str(exc), {"WWW-Authenticate": exc.authenticate} if exc.authenticate else None)

    @app.errorhandler(BadInput)
    @app.errorhandler(InvalidQueueName)
    @app.errorhandler(InvalidJob)
    def bad_input(exc: Exception) -> Response:
        return answer(400, one_line(str(exc)))

    @app.errorhandler(JobNotFound)
    def not_found(exc: JobNotFound) -> Response:
        return answer(404, f"no job with id {str(exc.job_id)[:60]!r}")

    @app.errorhandler(GroupNotFound)
    def group_not_found(exc: GroupNotFound) -> Response:
        return answer(404, f"no group with id {str(exc.group_id)!r}")

    @app.errorhandler(Conflict)
    def conflict(exc: Conflict) -> Response:
        return answer(409, one_line(str(exc)))

    @app.errorhandler(Forbidden)
    def forbidden(exc: Forbidden) -> Response:
        return answer(403, one_line(str(exc)))

    @app.errorhandler(StoreUnavailable)
    @app.errorhandler(pymongo.errors.PyMongoError)
    @app.errorhandler(redis.exceptions.RedisError)
    def unavailable(exc: Exception) -> Response:
        app.logger.warning("%s %s: %s", request.method, request.path, unavailable_message(exc, settings))
        return answer(503, unavailable_message(exc, settings))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        message = {404: f"not found: {request.path[:200]}", 405: f"method {request.method} not allowed here",
                   413: f"request body over {MAX_BODY_BYTES // 1048576} MiB"}.get(status, exc.description or "")
        return answer(status, one_line(message or exc.name))

    @app.errorhandler(Exception)
    def internal(exc: Exception) -> Response:
        app.logger.exception("unexpected error on %s %s", request.method, request.path)
        return answer(500, f"internal error: {type(exc).__name__} (details in the dashboard's log)")
