"""The page at /: one template; everything on it is drawn by static/dashboard.js from the JSON API."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

bp = Blueprint("views", __name__)


@bp.route("/", methods=["GET"], provide_automatic_options=False)
def index() -> str:
    source = current_app.extensions["mpobs"]["source"]
    return render_template("index.html", source_kind=source.kind)
