"""Every error leaves the receiver as JSON `{"error": "<stable_code>", "detail": "..."}`.

Providers and dashboards key on `error`, so codes are part of the API: never derive them from
exception messages, and never put internals (SQL, tracebacks, header values) in `detail`.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException, InternalServerError
from werkzeug.wrappers import Response as WerkzeugResponse

log = logging.getLogger(__name__)

# Stable codes for the HTTP errors Flask/Werkzeug raise themselves (unknown route, wrong method).
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    503: "unavailable",
}


class Rejected(Exception):
    """A request the receiver refuses on purpose.

    `code` is the stable `error` field and also the outcome label of the delivery metrics, so a
    dashboard and a provider's delivery log name the same reason.
    """

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.detail = detail


def error_response(status: int, code: str, detail: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": code, "detail": detail, **extra}), status


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(Rejected, _rejected)
    app.register_error_handler(HTTPException, _http_exception)
    # Flask wraps any unhandled exception in InternalServerError and looks handlers up by status
    # code first, so this one wins over the generic HTTPException handler for 500s.
    app.register_error_handler(InternalServerError, _internal_error)


def _rejected(exc: Rejected) -> tuple[Response, int]:
    return error_response(exc.status, exc.code, exc.detail)


def _http_exception(exc: HTTPException) -> WerkzeugResponse:
    # Start from Werkzeug's own response so headers it sets (`Allow` on a 405) survive.
    response = exc.get_response()
    status = response.status_code
    body, _ = error_response(status, _HTTP_CODES.get(status, f"http_{status}"), exc.description or "")
    response.set_data(body.get_data())
    response.content_type = "application/json"
    return response


def _internal_error(exc: InternalServerError) -> tuple[Response, int]:
    original = exc.original_exception or exc
    # The traceback goes to the log (type and stack only: nothing here formats request data);
    # the client learns only that it failed.
    log.error("request.failed error=%s", type(original).__name__, exc_info=original)
    return error_response(500, "internal", "internal server error")
