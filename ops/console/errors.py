"""Every refusal as a page that says why (and that nothing changed); never a traceback.

What a client can send is checked before it reaches the database (`validation`), so a 500 here
is the console's own fault: it is logged, and the page says only that it happened. PostgreSQL
not answering is a 503.
"""

from __future__ import annotations

import logging

from flask import Flask, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(CSRFError, _csrf_refused)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(OperationalError, _database_unreachable)
    app.register_error_handler(Exception, _unexpected)


def _page(code: int, title: str, message: str) -> tuple[str, int]:
    return render_template("error.html", code=code, title=title, message=message), code


def _csrf_refused(error: CSRFError) -> tuple[str, int]:
    return _page(
        400,
        "Form expired or forged",
        f"{error.description} Reload the page and submit the form again. Nothing was changed.",
    )


def _http_error(error: HTTPException) -> tuple[str, int]:
    code = error.code or 500
    message = error.description or ""
    if (code in (400, 403, 404, 405, 409, 413) and request.method == "POST") or code in (400, 403):
        message += " Nothing was changed."
    return _page(code, error.name, message)


def _database_unreachable(error: OperationalError) -> tuple[str, int]:
    log.warning("console.database_unreachable error=%s", type(error.orig).__name__)
    return _page(503, "PostgreSQL does not answer", "Try again in a moment; `pedro-webhooks status` says more.")


def _unexpected(error: Exception) -> tuple[str, int]:
    log.exception("console.unexpected_error")
    return _page(500, "Internal error", "The console failed on this request; its log has the details.")
