"""Who may use the dashboard and how its responses protect the browser.

- Authentication: optional HTTP basic auth (`dashboard_auth = "user:password"`) and/or a bearer
  token (`dashboard_token`), compared in constant time, on every route including static files.
- Read-only mode: every state-changing request is refused (403).
- CSRF: state changes are POST only, and every one must prove it was not forged by another web
  page: the per-session token of the `mrq_csrf` cookie sent back in the `X-CSRF-Token` header
  (double submit: the dashboard's own pages), or an `X-MRQ-Client` header (API clients: curl,
  services; a page of another origin cannot add a custom header without a CORS preflight, which
  the dashboard never grants), or the bearer token (which a browser never sends by itself). A
  request that says it comes from another origin (Origin, Sec-Fetch-Site) is refused whatever it
  carries.
- DNS rebinding: while the dashboard is bound to a loopback address without authentication,
  requests must name a loopback host (`Host: localhost:5555`, `127.0.0.1`, `[::1]`).
- Headers: a strict Content-Security-Policy (scripts and styles from the app's own static files
  only, nothing inline), no framing, no sniffing, no caching of data.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re
import secrets
from urllib.parse import urlsplit

from flask import Flask, Response, g, request

from mrq.config import Settings
from mrq.exceptions import ConfigError

from .actions import Actor

CSRF_COOKIE = "mrq_csrf"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
#: Any value: marks a request from an API client (a custom header no other origin can set).
CLIENT_HEADER = "X-MRQ-Client"
_TOKEN = re.compile(r"[A-Za-z0-9_\-]{20,100}")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class Refused(Exception):
    """A request refused by the security layer: HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str, authenticate: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.authenticate = authenticate


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def request_hostname(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def parse_basic_auth(value: str) -> tuple[str, str]:
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError("dashboard_auth: expected 'user:password' with both parts non-empty")
    return user, password


class Security:
    def __init__(self, settings: Settings) -> None:
        self.basic = parse_basic_auth(settings.dashboard_auth) if settings.dashboard_auth else None
        self.token: str = settings.dashboard_token
        self.readonly: bool = bool(settings.dashboard_readonly)
        # Without authentication, a loopback dashboard answers only to loopback host names (DNS
        # rebinding). With it, a rebound page has no credentials for this origin: a reverse proxy
        # may then pass its own Host.
        self.loopback_only = is_loopback(settings.dashboard_bind) and not self.auth_required

    @property
    def auth_required(self) -> bool:
        return self.basic is not None or bool(self.token)

    def install(self, app: Flask) -> None:
        app.before_request(self.check_request)
        app.after_request(self.add_headers)

    # --- before each request ---------------------------------------------------------------------

    def check_request(self) -> None:
        if self.loopback_only and not is_loopback(request_hostname(request.host)):
            raise Refused(400, f"unexpected Host {request.host[:100]!r}: the dashboard is bound to a loopback "
                               "address and answers only to localhost, 127.0.0.1 or [::1]")
        who = self.authenticate()
        g.actor = Actor(who, request.remote_addr)
        cookie = request.cookies.get(CSRF_COOKIE, "")
        g.csrf_token = cookie if _TOKEN.fullmatch(cookie) else secrets.token_urlsafe(32)
        if request.method in SAFE_METHODS:
            return
        if self.readonly:
            raise Refused(403, "the dashboard is read-only (dashboard_readonly)")
        self.check_csrf(who)

    def authenticate(self) -> str:
        if not self.auth_required:
            return "anonymous"
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.token and hmac.compare_digest(value.encode(), self.token.encode()):
            return "token"
        if scheme == "basic" and self.basic is not None:
            try:
                user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                user, password = "", ""
            same_user = hmac.compare_digest(user.encode(), self.basic[0].encode())
            same_password = hmac.compare_digest(password.encode(), self.basic[1].encode())
            if same_user and same_password:
                return user
        challenge = 'Basic realm="mrq dashboard", charset="UTF-8"' if self.basic is not None else \
            'Bearer realm="mrq dashboard"'
        raise Refused(401, "authentication required", authenticate=challenge)

    def check_csrf(self, who: str) -> None:
        if who == "token":
            return  # a bearer token is never sent by a browser on its own
        origin = request.headers.get("Origin")
        fetch_site = request.headers.get("Sec-Fetch-Site")
        if fetch_site == "cross-site":
            raise Refused(403, "cross-site request refused")
        if origin is not None and urlsplit(origin).netloc != request.host:
            raise Refused(403, f"request from another origin ({origin[:100]}) refused")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
        if cookie and sent and hmac.compare_digest(cookie.encode(), sent.encode()):
            return
        if request.headers.get(CLIENT_HEADER, "").strip() and not cookie:
            return  # an API client (a browser holding the cookie must use the token)
        raise Refused(403, f"missing or wrong CSRF token: reload the page and try again (API clients: send an "
                           f"{CLIENT_HEADER} header, e.g. `{CLIENT_HEADER}: my-service`)")

    # --- after each request ----------------------------------------------------------------------

    def add_headers(self, response: Response) -> Response:
        headers = response.headers
        headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "same-origin"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
        if request.endpoint != "static":
            headers["Cache-Control"] = "no-store"
        token = g.get("csrf_token")
        if token and request.cookies.get(CSRF_COOKIE) != token and response.mimetype == "text/html":
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                                path="/")
        return response
