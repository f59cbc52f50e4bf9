"""Replaying a failed delivery from the console: a real worker takes it to `processed` with one
effect, the page shows the outcome, and the audit log says who did it, when and from where."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select, update

from models.app import User
from models.audit import AuditEntry
from models.inbox import WebhookInbox
from models.ledger import CreditLedgerEntry
from tests.ops.console.conftest import OPERATOR, csrf_token
from tests.support.inbox import clerk_user_event, inbox_row, store

pytestmark = pytest.mark.celery_worker


def _wait_for_status(session_factory, inbox_id: int, wanted: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while inbox_row(session_factory, inbox_id).status != wanted:
        assert time.monotonic() < deadline, f"row {inbox_id} never became {wanted}"
        time.sleep(0.2)


def test_replaying_a_failed_row_ends_processed_with_one_effect_and_an_audit_entry(
    client, session_factory, celery_worker
):
    inbox_id = store(session_factory, "clerk", clerk_user_event("user.created", "user_replayed", 1))
    with session_factory.begin() as session:  # as a run that hit a bug would have left it
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == inbox_id)
            .values(status="failed", attempts=4, crashes=4, last_error="runs died mid-task")
        )
    page = client.get(f"/inbox/{inbox_id}", auth=OPERATOR).text
    assert "runs died mid-task" in page and "Replay</button>" in page

    for _ in range(2):  # the second replay (of a processed row) must change nothing
        answer = client.post(f"/inbox/{inbox_id}/replay", data={"csrf_token": csrf_token(page)}, auth=OPERATOR)
        assert answer.status_code == 303 and answer.headers["Location"].endswith(f"/inbox/{inbox_id}")
        shown = client.get(answer.headers["Location"], auth=OPERATOR).text
        assert f"Replayed: row {inbox_id} is back to pending" in shown
        _wait_for_status(session_factory, inbox_id, "processed")

    with session_factory() as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.clerk_id == "user_replayed")) == 1
        entries = session.scalars(
            select(CreditLedgerEntry).where(CreditLedgerEntry.clerk_user_id == "user_replayed")
        ).all()
        assert [(e.kind, e.delta) for e in entries] == [("signup", 100)]
        audit = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    assert len(audit) == 2
    first = audit[0]
    assert (first.actor, first.channel, first.address, first.action) == ("ana", "console", "127.0.0.1", "inbox.replay")
    assert first.target == f"inbox {inbox_id}" and first.details["inbox_ids"] == [inbox_id]
    assert first.outcome == "1 row(s) put back to pending" and first.at is not None

    final = client.get(f"/inbox/{inbox_id}", auth=OPERATOR).text
    assert 'id="row-status">processed<' in final
    assert final.count("put back to pending; now processed") == 2  # the row's replays, with the outcome
    assert 'http-equiv="refresh"' not in final  # a final row's page no longer reloads itself
