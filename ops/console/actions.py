"""The console's actions, each a POST (operators only, CSRF token checked: `app.py`), each run
through `ops.actions` as the CLI runs it, so each lands in the audit log. The outcome is shown
on the page the action redirects to (303, so a reload never repeats it)."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, abort, flash, redirect, request, url_for
from werkzeug.wrappers.response import Response as WerkzeugResponse

from models.inbox import InboxStatus
from ops.actions.replay import replay
from ops.actions.retention import prune
from ops.actions.support import SupportRequest, change_credits
from ops.audit import Actor
from ops.console.access import current_login
from ops.console.resources import resources
from ops.console.validation import clerk_id, row_id, text_value, whole_number
from ops.queries.inbox_rows import MIN_RETENTION, get_row
from ops.support_credits import SupportCreditError

bp = Blueprint("actions", __name__)

PRUNE_BATCH = 1000
PRUNE_MOST_PER_REQUEST = 20_000  # a request stays short; press again for the rest


def _actor() -> Actor:
    return Actor.console(current_login(), request.remote_addr)


@bp.post("/inbox/<int:inbox_id>/replay")
def replay_row(inbox_id: int) -> WerkzeugResponse:
    console = resources()
    with console.sessions() as session:
        row = get_row(session, row_id(inbox_id))
        status = row.status if row is not None else None
    if status is None:
        abort(404, description=f"No inbox row {inbox_id}.")
    if status == InboxStatus.PENDING:
        abort(409, description=f"Row {inbox_id} is pending: it waits for its run, there is nothing to replay.")
    done = replay(console.sessions, console.producer, _actor(), (inbox_id,))
    if done.inbox_ids and done.enqueued:
        flash(f"Replayed: row {inbox_id} is back to pending and enqueued (audit entry {done.audit_id}).")
    elif done.inbox_ids:
        flash(
            f"Replayed: row {inbox_id} is back to pending, but Redis did not take its message: the sweeper "
            f"sends it within SWEEP_PENDING_AFTER_SECONDS (audit entry {done.audit_id})."
        )
    else:
        # The row became pending between the check and the replay (another replay, the sweeper).
        flash(f"Nothing replayed: row {inbox_id} is pending already (audit entry {done.audit_id}).")
    return redirect(url_for("inbox.inbox_row", inbox_id=inbox_id), code=303)


@bp.post("/users/<clerk_user_id>/credits")
def support_credits(clerk_user_id: str) -> WerkzeugResponse:
    console = resources()
    wanted = clerk_id(clerk_user_id)
    limit = console.max_support_amount
    amount = whole_number("amount", request.form.get("amount"), low=-limit, high=limit)
    reason = text_value("reason", request.form.get("reason"), max_length=500)
    key = text_value("key", request.form.get("key"), max_length=200)
    if amount is None or reason is None or key is None:
        abort(400, description="Amount, reason and key are all required.")
    support = SupportRequest(wanted, amount, reason, key, allow_negative=request.form.get("allow_negative") == "on")
    try:
        change = change_credits(console.sessions, _actor(), support, max_amount=limit)
    except SupportCreditError as exc:
        abort(400, description=str(exc))
    if change.applied_now:
        flash(f"{change.delta:+d} credits: balance {change.balance_after} (ledger entry {change.entry_id}).")
    else:
        flash(f"Already applied with key {change.key!r} (ledger entry {change.entry_id}): nothing changed.")
    return redirect(url_for("users.user_page", clerk_user_id=wanted), code=303)


@bp.post("/inbox/prune")
def prune_rows() -> WerkzeugResponse:
    days = whole_number("older_than_days", request.form.get("older_than_days"), low=MIN_RETENTION.days, high=36_500)
    if days is None:
        abort(400, description=f"Give older_than_days (at least {MIN_RETENTION.days}).")
    done = prune(resources().sessions, _actor(), timedelta(days=days), PRUNE_BATCH, max_rows=PRUNE_MOST_PER_REQUEST)
    more = "" if done.finished else " More remain: prune again."
    flash(f"Pruned {done.deleted} processed or ignored row(s) that ended over {days} days ago.{more}")
    return redirect(url_for("overview.overview"), code=303)
