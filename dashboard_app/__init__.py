"""mpobs's live dashboard: ``create_app(source, token=...)`` builds the Flask app (see ``app``)."""

from __future__ import annotations

from dashboard_app.app import create_app

__all__ = ["create_app"]
