"""The dashboard's Flask app factory: security headers, bearer-token auth, JSON errors, blueprints."""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Flask, Response, jsonify, redirect, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.wrappers import Response as ResponseBase

from mpobs.defaults import is_loopback

#: The page keeps the token here after ``/?token=``: HttpOnly, so page scripts never see it.
COOKIE = "mpobs_token"
#: Bodies are never needed (every endpoint is GET); anything bigger is refused.
MAX_BODY = 16 * 1024
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

log = logging.getLogger("mpobs.dashboard")


def create_app(source: Any, token: str | None = None, loopback_hosts_only: bool = False) -> Flask:
    """A dashboard over ``source`` (a ``dashboard_app.sources.Source``).

    ``token``: every endpoint but /healthz needs ``Authorization: Bearer <token>``
    or the cookie the page gets from ``/?token=``. ``loopback_hosts_only``: refuse
    requests whose Host header is not a loopback name (against DNS rebinding
    when the dashboard is bound to 127.0.0.1 without a token).
    """
    from dashboard_app import api, views

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    # The Prometheus registry is made on the first /metrics request (api.metrics): importing
    # prometheus_client costs 14 ms of CPU while the workers run, and most runs are not scraped.
    app.extensions["mpobs"] = {"source": source, "registry": None, "token": token}
    app.register_blueprint(api.bp)
    app.register_blueprint(views.bp)

    @app.before_request
    def _guard() -> Any:
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise RequestEntityTooLarge(f"request bodies are limited to {MAX_BODY} bytes")
        if loopback_hosts_only and not is_loopback(_host_name(request.host)):
            return _error(403, "Forbidden", "this dashboard answers on loopback host names only")
        if not token or request.endpoint == "api.healthz":
            return None
        return _check_token(token)

    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _internal)
    return app


def _check_token(token: str) -> ResponseBase | None:
    """None when the request carries the token (header or cookie); else a 401, or the redirect that sets the cookie."""
    given = request.args.get("token") if request.endpoint == "views.index" else None
    if given is not None:
        if not _same(given, token):
            return _error(401, "Unauthorized", "wrong token")
        # Keep it in an HttpOnly cookie and take it out of the address bar (and of history).
        resp = redirect("/", code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure, path="/")
        return resp
    auth = request.headers.get("Authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.cookies.get(COOKIE)
    if not given or not _same(given, token):
        resp = _error(
            401,
            "Unauthorized",
            "this dashboard needs a token: send 'Authorization: Bearer <token>' or open /?token=<token> once",
        )
        resp.headers["WWW-Authenticate"] = 'Bearer realm="mpobs"'
        return resp
    return None


def _security_headers(resp: Response) -> Response:
    h = resp.headers
    h["Content-Security-Policy"] = CSP
    h["X-Content-Type-Options"] = "nosniff"
    h["Referrer-Policy"] = "no-referrer"
    h["X-Frame-Options"] = "DENY"
    if request.endpoint != "static":
        h["Cache-Control"] = "no-store"
    return resp


def _http_error(err: HTTPException) -> ResponseBase:
    resp = err.get_response()
    body = jsonify(error=err.name, status=err.code, message=err.description)
    resp.set_data(body.get_data())
    resp.content_type = "application/json"
    return resp


def _internal(err: Exception) -> Response:  # a bug; still JSON, and logged
    log.exception("dashboard: %s %s failed", request.method, request.path)
    return _error(500, "Internal Server Error", f"{type(err).__name__} while answering {request.path}")


def _host_name(host: str) -> str:
    """The Host header without its port: "[::1]:8000" -> "[::1]", "localhost:80" -> "localhost"."""
    host = host.lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.split(":", 1)[0]


def _same(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape"))


def _error(code: int, name: str, message: str) -> Response:
    resp = jsonify(error=name, status=code, message=message)
    resp.status_code = code
    return resp
