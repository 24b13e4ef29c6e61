"""`mrq-dashboard`: serve the dashboard with gevent's WSGI server.

    mrq-dashboard [--port 5555] [--bind 127.0.0.1] [--dashboard-auth user:password] [--config PATH] ...

gevent's monkey-patching happens here, first, and nowhere else; then the configuration is read
(command line > MRQ_* environment > mrq-config.py > defaults), the app is built and served until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

DESCRIPTION = """Serve the mrq web dashboard and its HTTP/JSON API (see docs/dashboard.md). It binds to
127.0.0.1 by default; bound to another address it should have --dashboard-auth or --dashboard-token."""


def main(argv: Sequence[str] | None = None) -> int:
    from gevent import monkey

    monkey.patch_all()

    import logging
    import signal

    import gevent
    from gevent.pywsgi import WSGIServer

    from mrq.cli.common import EXIT_OK, EXIT_USAGE, fail
    from mrq.config import DASHBOARD, build_parser, load_settings
    from mrq.connections import redact_uri
    from mrq.exceptions import ConfigError

    from .app import create_app
    from .security import is_loopback

    parser = build_parser(DASHBOARD, prog="mrq-dashboard", description=DESCRIPTION)
    try:
        settings, _ = load_settings(sys.argv[1:] if argv is None else argv, scope=DASHBOARD, parser=parser)
        app = create_app(settings)
    except ConfigError as exc:
        return fail("mrq-dashboard", str(exc), EXIT_USAGE)
    logging.basicConfig(level=getattr(logging, settings.log_level, logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log = logging.getLogger("mrq.dashboard")
    bind, port = settings.dashboard_bind, settings.dashboard_port
    state = app.extensions["mrq"]
    if not is_loopback(bind) and not state.security.auth_required:
        banner = "!" * 78
        print(f"{banner}\nmrq-dashboard: WARNING: listening on {bind}, not on loopback, WITHOUT authentication:\n"
              "anyone who can reach this address can read every job and cancel, requeue or abort jobs.\n"
              "Set --dashboard-auth user:password or --dashboard-token, or --dashboard-readonly.\n"
              f"{banner}", file=sys.stderr, flush=True)
    try:
        server = WSGIServer((bind, port), app, log=None, error_log=log)
        server.init_socket()
    except OSError as exc:
        return fail("mrq-dashboard", f"cannot listen on {bind}:{port}: {exc.strerror or exc}", EXIT_USAGE)
    host = f"[{bind}]" if ":" in bind else bind
    actual_port = server.socket.getsockname()[1]
    print(f"mrq-dashboard: listening on http://{host}:{actual_port}/ (Redis {redact_uri(settings.redis)}, "
          f"MongoDB {redact_uri(settings.mongodb_jobs)}{', read-only' if state.security.readonly else ''})",
          flush=True)

    def stop(*_args: object) -> None:
        gevent.spawn(server.stop, timeout=5)

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    server.serve_forever()
    state.store.close()
    print("mrq-dashboard: stopped", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
