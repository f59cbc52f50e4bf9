"""`/users/<clerk_id>`: the balance and whether the ledger explains it, its open credit holds,
the plan, storage, the ledger with its running sum (paged), a chart of the balance over time,
and usage by operation. The queries are the CLI's `user show` and `report operations --user`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import Blueprint, abort, redirect, render_template, request, url_for
from werkzeug.wrappers.response import Response as WerkzeugResponse

from ops.console.resources import resources
from ops.console.validation import clerk_id, text_value, whole_number
from ops.queries.reports import operations
from ops.queries.user_view import balance_history, user_view

bp = Blueprint("users", __name__)

LEDGER_PER_PAGE = 50
USAGE_WINDOW = timedelta(days=30)


@bp.get("/users")
def find_user() -> WerkzeugResponse:
    """The search box: a Clerk user id, to its page."""
    wanted = text_value("clerk user id", request.args.get("clerk_id"), max_length=200)
    if wanted is None:
        abort(400, description="Give a Clerk user id (user_...).")
    return redirect(url_for("users.user_page", clerk_user_id=wanted), code=303)


@bp.get("/users/<clerk_user_id>")
def user_page(clerk_user_id: str) -> str:
    wanted = clerk_id(clerk_user_id)
    page = whole_number("page", request.args.get("page"), low=1, high=1_000_000) or 1
    with resources().sessions() as session:
        view = user_view(session, wanted, page=page, per_page=LEDGER_PER_PAGE)
        if view is None:
            abort(404, description=f"No user {wanted}.")
        history = balance_history(session, wanted)
        return render_template(
            "user.html",
            view=view,
            page=page,
            pages=max(1, -(-view.ledger_entries // LEDGER_PER_PAGE)),
            chart=[[int(point.at.timestamp()), point.balance] for point in history],
            usage=operations(session, since=datetime.now(UTC) - USAGE_WINDOW, clerk_user_id=wanted),
            usage_days=USAGE_WINDOW.days,
            max_amount=resources().max_support_amount,
            now=datetime.now(UTC),
        )
