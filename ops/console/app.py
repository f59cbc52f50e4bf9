"""`create_app()`: the console, served by gunicorn (`ops/console/gunicorn_conf.py`).

Nothing is read at import: `create_app` loads the settings (DATABASE_URL, REDIS_URL and
CONSOLE_*), so a missing variable stops start-up with a message that names it.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from flask import Flask, Response, g
from flask_wtf.csrf import CSRFProtect
from werkzeug.middleware.proxy_fix import ProxyFix

from messaging.celery_config import create_producer
from models.db import make_engine, make_session_factory
from models.settings import (
    ConsoleSettings,
    Settings,
    load_console_settings,
    load_settings,
    load_support_credit_settings,
)
from ops import human
from ops.console import access
from ops.console.actions import bp as actions_bp
from ops.console.audit_page import bp as audit_bp
from ops.console.errors import register_error_handlers
from ops.console.inbox_pages import bp as inbox_bp
from ops.console.overview import bp as overview_bp
from ops.console.resources import EXTENSION, Resources
from ops.console.user_pages import bp as users_bp

# Pages only this origin may load code, styles and forms from; none may frame them.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def create_app(settings: Settings | None = None, console: ConsoleSettings | None = None) -> Flask:
    settings = settings or load_settings()
    console = console or load_console_settings()
    app = Flask(__name__)
    if console.console_trusted_proxy_count:
        # The audit log's address is the client's (the proxies' own entries are skipped).
        count = console.console_trusted_proxy_count
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=count)  # type: ignore[method-assign]
    app.config.update(
        SECRET_KEY=_secret_key(console),
        SESSION_COOKIE_NAME="pedro_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        WTF_CSRF_TIME_LIMIT=12 * 3600,
        MAX_CONTENT_LENGTH=64 * 1024,  # the largest form is a few hundred bytes
    )
    engine = make_engine(settings, pool_size=2, max_overflow=2)
    app.extensions[EXTENSION] = Resources(
        settings,
        console,
        engine,
        make_session_factory(engine),
        create_producer(settings),
        load_support_credit_settings().support_credits_max_amount,
    )
    # Access first: a request without a login, or an action by a non-operator, is refused
    # before the CSRF check reads its form.
    logins, operators = console.logins, console.operators
    app.before_request(lambda: access.check_access(logins, operators))
    CSRFProtect(app)
    register_error_handlers(app)
    for blueprint in (overview_bp, inbox_bp, users_bp, actions_bp, audit_bp):
        app.register_blueprint(blueprint)
    app.after_request(_security_headers)
    app.jinja_env.filters.update(when=human.when, age=human.age)
    app.context_processor(lambda: {"login": g.get("login"), "is_operator": g.get("is_operator", False)})
    return app


def _secret_key(console: ConsoleSettings) -> str:
    """CONSOLE_SECRET_KEY, else one for this process (gunicorn_conf sets one for all workers)."""
    if console.console_secret_key is not None:
        return console.console_secret_key.get_secret_value()
    return secrets.token_urlsafe(32)


def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")
    return response
