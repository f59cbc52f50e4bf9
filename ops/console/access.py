"""Who may open the console and who may act: HTTP basic auth, then operators only for POSTs.

Passwords are compared in constant time (`hmac.compare_digest`), against every configured login,
so the time taken says nothing about which user names exist. Every action is a POST, so a
read-only user is refused (403) before the request is read any further.
"""

from __future__ import annotations

import hmac

from flask import Response, abort, g, request
from werkzeug.datastructures import Authorization

REALM = 'Basic realm="pedro-webhooks console", charset="UTF-8"'
READ_METHODS = ("GET", "HEAD")


def authenticated_login(authorization: Authorization | None, logins: dict[str, str]) -> str | None:
    """The login the request's basic-auth credentials match, or None."""
    if authorization is None or authorization.type != "basic":
        return None
    user = (authorization.username or "").encode()
    password = (authorization.password or "").encode()
    found = None
    for known_user, known_password in logins.items():
        # Both compared for every login (no early exit): each comparison takes the same time.
        user_matches = hmac.compare_digest(known_user.encode(), user)
        password_matches = hmac.compare_digest(known_password.encode(), password)
        if user_matches and password_matches:
            found = known_user
    return found


def check_access(logins: dict[str, str], operators: frozenset[str]) -> Response | None:
    """A `before_request` hook: 401 without a known login, 403 for an action by a non-operator."""
    login = authenticated_login(request.authorization, logins)
    if login is None:
        return Response(
            "Log in with a user of CONSOLE_BASIC_AUTH.\n",
            status=401,
            headers={"WWW-Authenticate": REALM},
            mimetype="text/plain",
        )
    g.login = login
    g.is_operator = login in operators
    if request.method not in READ_METHODS and not g.is_operator:
        abort(403, description=f"{login} may read the console but not act: actions are for CONSOLE_OPERATORS.")
    return None


def current_login() -> str:
    login: str = g.login
    return login
