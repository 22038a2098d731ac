"""mpobs's live dashboard: ``create_app(source, token=...)`` builds the Flask app (see ``app``).

``dashboard_app.process`` starts and feeds the dashboard's own process; importing it
(as ``mpobs process`` does) must not import Flask, so ``create_app`` is loaded lazily.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from dashboard_app.app import create_app

        return create_app
    raise AttributeError(name)
