"""The JSON endpoints (/stats, /trace, /errors, /history, /dag, /healthz) and the /metrics text."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import BadRequest

bp = Blueprint("api", __name__)

#: Records a /trace or /errors answer holds by default, and at most.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_HISTORY = 600
STATUSES = ("emit", "drop", "error", "route")


def _source() -> Any:
    return current_app.extensions["mpobs"]["source"]


def _int_arg(name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 12 or not lo <= int(raw) <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}, got {raw[:40]!r}")
    return int(raw)


def _str_arg(name: str, max_len: int = 200) -> str | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return None
    if len(raw) > max_len:
        raise BadRequest(f"{name} must be at most {max_len} characters")
    return raw


def _processor_arg() -> str | None:
    pid = _str_arg("processor")
    if pid is not None:
        known = list(_source().stats().get("processors", {}))
        if pid not in known:
            raise BadRequest(f"unknown processor {pid!r}; known: {', '.join(known)}")
    return pid


def _route(rule: str, **kw: Any) -> Any:
    return bp.route(rule, methods=["GET"], provide_automatic_options=False, **kw)


@_route("/stats")
def stats() -> Response:
    return Response(_source().stats_json(), mimetype="application/json")


@_route("/trace")
def trace() -> dict[str, Any]:
    limit = _int_arg("limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
    processor = _processor_arg()
    status = _str_arg("status", 100)
    if status is not None and status not in STATUSES and not status.startswith("route:"):
        raise BadRequest(f"status must be one of {', '.join(STATUSES)} or route:<name>, got {status!r}")
    line = _int_arg("line", None, 1, 10**12)
    kept = _source().traces()
    out: list[dict[str, Any]] = []
    for t in kept:
        if len(out) >= (limit or 0):
            break
        if line is not None and t.get("line_number") != line:
            continue
        path = t.get("path") or []
        if processor is not None and not any(s.get("processor") == processor for s in path):
            continue
        if status is not None and not any(_status_match(s, status, processor) for s in path):
            continue
        out.append(t)
    return {"traces": out, "count": len(out), "kept": len(kept), "limit": limit}


def _status_match(step: dict[str, Any], status: str, processor: str | None) -> bool:
    if processor is not None and step.get("processor") != processor:
        return False
    got = str(step.get("status", ""))
    return got == status or (status == "route" and got.startswith("route:"))


@_route("/errors")
def errors() -> dict[str, Any]:
    limit = _int_arg("limit", DEFAULT_LIMIT, 0, MAX_LIMIT)
    processor = _processor_arg()
    etype = _str_arg("type")
    kept = _source().errors()
    out = [
        e
        for e in kept
        if (processor is None or e.get("processor") == processor) and (etype is None or e.get("error_type") == etype)
    ][: limit or 0]
    return {"errors": out, "count": len(out), "kept": len(kept), "limit": limit}


@_route("/history")
def history() -> dict[str, Any]:
    limit = _int_arg("limit", MAX_HISTORY, 1, MAX_HISTORY)
    return _source().history(limit)


@_route("/dag")
def dag() -> dict[str, Any]:
    return _source().dag()


@_route("/healthz")
def healthz() -> tuple[dict[str, Any], int]:
    """ok (200); degraded (200: a call runs longer than --stall-after, named in ``stalled_calls``); unhealthy (503)."""
    source = _source()
    ok, reason = source.health()
    if not ok:
        return {"status": "unhealthy", "reason": reason}, 503
    stalled = source.stalled()
    if stalled:
        from mpobs.metrics.activity import describe

        what = "; ".join(f"worker {c['worker']}: {describe(c)} for {c['for_s']:.0f} s" for c in stalled)
        return {"status": "degraded", "reason": f"stalled: {what}", "stalled_calls": stalled}, 200
    return {"status": "ok", "reason": reason}, 200


@_route("/alerts")
@_route("/api/v1/alerts")
def alerts() -> dict[str, Any]:
    """The --alerts rules' pending and firing alerts, in the shape of Prometheus's /api/v1/alerts."""
    doc = _source().stats().get("alerts") or {}
    return {"status": "success", "data": {"alerts": doc.get("alerts", [])}}


@_route("/metrics")
def metrics() -> Response:
    from prometheus_client.exposition import choose_encoder

    from dashboard_app.metrics import make_registry

    ext = current_app.extensions["mpobs"]
    registry = ext["registry"]
    if registry is None:  # the first scrape (see create_app); two at once make one each, one is kept
        registry = ext["registry"] = make_registry(ext["source"])
    # The client library negotiates: OpenMetrics for a Prometheus server that asks, else text 0.0.4.
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(registry), content_type=content_type)
