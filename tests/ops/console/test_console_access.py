"""Who may see and who may act: basic auth, operators, CSRF tokens; and what a client sends that
cannot be a request is a clear 4xx that changes nothing (never a 500)."""

from __future__ import annotations

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from models.audit import AuditEntry
from models.inbox import InboxStatus
from tests.ops.console.conftest import OPERATOR, READER, csrf_token
from tests.support.inbox import inbox_row, payload, store


def _failed_row(session_factory) -> int:
    from sqlalchemy import update

    from models.inbox import WebhookInbox

    inbox_id = store(session_factory, "clerk", payload("clerk/user.created"))
    with session_factory.begin() as session:
        session.execute(
            update(WebhookInbox).where(WebhookInbox.id == inbox_id).values(status="failed", last_error="boom")
        )
    return inbox_id


def _audit_entries(session_factory) -> int:
    with session_factory() as session:
        return session.scalar(select(func.count()).select_from(AuditEntry)) or 0


def test_every_page_needs_a_login(client):
    for path in ("/", "/inbox", "/inbox/1", "/users/user_x", "/audit", "/static/console.css"):
        answer = client.get(path)
        assert answer.status_code == 401, path
        assert answer.headers["WWW-Authenticate"].startswith("Basic ")
    assert client.get("/", auth=(OPERATOR[0], "wrong")).status_code == 401
    assert client.get("/", auth=("nobody", OPERATOR[1])).status_code == 401
    assert client.get("/", auth=OPERATOR).status_code == 200
    assert client.get("/", auth=READER).status_code == 200


def test_a_read_only_user_reads_but_cannot_replay(client, session_factory):
    inbox_id = _failed_row(session_factory)
    page = client.get(f"/inbox/{inbox_id}", auth=READER)
    assert page.status_code == 200 and "boom" in page.text
    assert "Replay</button>" not in page.text  # no button for a reader
    token = csrf_token(client.get(f"/inbox/{inbox_id}", auth=OPERATOR).text)  # a valid token, even
    answer = client.post(f"/inbox/{inbox_id}/replay", data={"csrf_token": token}, auth=READER)
    assert answer.status_code == 403
    assert "may read the console but not act" in answer.text
    assert inbox_row(session_factory, inbox_id).status == InboxStatus.FAILED
    assert _audit_entries(session_factory) == 0


def test_a_post_without_its_csrf_token_is_refused_and_changes_nothing(client, session_factory):
    inbox_id = _failed_row(session_factory)
    client.get(f"/inbox/{inbox_id}", auth=OPERATOR)  # the session cookie exists; the form is not sent
    for data in ({}, {"csrf_token": "forged"}):
        answer = client.post(f"/inbox/{inbox_id}/replay", data=data, auth=OPERATOR)
        assert answer.status_code == 400
        assert "CSRF token" in answer.text and "Nothing was changed" in answer.text
    assert inbox_row(session_factory, inbox_id).status == InboxStatus.FAILED
    assert _audit_entries(session_factory) == 0


def test_what_cannot_be_a_request_is_a_clear_4xx(client, session_factory):
    cases = {
        "/inbox?status=nonsense": (400, "status must be one of"),
        "/inbox?source=stripe": (400, "source must be one of"),
        "/inbox?received_from=yesterday": (400, "received_from must be a date"),
        "/inbox?before=abc": (400, "before must be a whole number"),
        "/inbox?before=99999999999999999999999": (400, "before must be between"),
        "/inbox?per_page=100000": (400, "per_page must be between"),
        "/inbox?event_id=a%00b": (400, "NUL character"),
        "/inbox?user=" + "u" * 300: (400, "longer than 200"),
        "/inbox/99999999999999999999999": (404, "no inbox row"),
        "/inbox/424242": (404, "No inbox row 424242"),
        "/users/user_nobody": (404, "No user user_nobody"),
        "/users/a%00b": (400, "NUL character"),
        "/users?clerk_id=": (400, "Give a Clerk user id"),
        "/users/x?page=0": (400, "page must be between"),
        "/nowhere": (404, "Not Found"),
    }
    for path, (code, text) in cases.items():
        answer = client.get(path, auth=OPERATOR)
        assert (answer.status_code, text in answer.text) == (code, True), (path, answer.status_code, answer.text[:300])
    assert client.put("/inbox", auth=OPERATOR).status_code == 405


def test_bad_action_input_is_refused_before_anything_is_written(client, session_factory):
    from tests.support.billing import CLERK_ID, add_user, balance

    add_user(session_factory)
    page = client.get(f"/users/{CLERK_ID}", auth=OPERATOR)
    token = csrf_token(page.text)
    refused = {
        "amount=abc": ({"amount": "abc", "reason": "r", "key": "k"}, "amount must be a whole number"),
        "amount=0": ({"amount": "0", "reason": "r", "key": "k"}, "must not be 0"),
        "too much": ({"amount": "100001", "reason": "r", "key": "k"}, "amount must be between"),
        "no reason": ({"amount": "5", "reason": " ", "key": "k"}, "all required"),
        "overdraft": ({"amount": "-500", "reason": "r", "key": "k2"}, "below zero"),
    }
    for name, (form, text) in refused.items():
        answer = client.post(f"/users/{CLERK_ID}/credits", data={"csrf_token": token, **form}, auth=OPERATOR)
        assert (answer.status_code, text in answer.text) == (400, True), (name, answer.text[:400])
    assert balance(session_factory) == 100
    assert _audit_entries(session_factory) == 0
    prune = client.post("/inbox/prune", data={"csrf_token": token, "older_than_days": "3"}, auth=OPERATOR)
    assert prune.status_code == 400 and "between 14 and" in prune.text


def test_support_credits_from_the_console_apply_once_and_are_audited(client, session_factory):
    from tests.support.billing import CLERK_ID, add_user, balance

    add_user(session_factory)
    token = csrf_token(client.get(f"/users/{CLERK_ID}", auth=OPERATOR).text)
    form = {"csrf_token": token, "amount": "25", "reason": "ticket 7: failed render", "key": "ticket-7"}
    for _ in range(2):
        answer = client.post(f"/users/{CLERK_ID}/credits", data=form, auth=OPERATOR, follow_redirects=True)
        assert answer.status_code == 200
    assert "Already applied with key" in answer.text
    assert balance(session_factory) == 125
    with session_factory() as session:
        entries = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    assert [(e.actor, e.channel, e.action, e.target) for e in entries] == [
        ("ana", "console", "credits.grant", f"user {CLERK_ID}")
    ] * 2
    assert entries[0].address == "127.0.0.1" and entries[0].details["applied_now"] is True
    assert entries[1].details["applied_now"] is False


def test_pages_never_show_a_password(client, session_factory):
    for path in ("/", "/inbox", "/audit"):
        text = client.get(path, auth=OPERATOR).text
        assert OPERATOR[1] not in text and READER[1] not in text


FILTER_NAMES = ["source", "type", "status", "received_from", "received_to", "event_id", "user", "before", "after"]


@hypothesis_settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=st.lists(
        st.tuples(st.sampled_from([*FILTER_NAMES, "per_page", "page", "other"]), st.text(max_size=40)), max_size=5
    ),
    segment=st.text(min_size=1, max_size=30),
)
def test_nothing_a_client_sends_is_a_server_error(client, params, segment):
    """Any query string on /inbox, any id or user in a path: a page or a 4xx, never a 500."""
    from urllib.parse import quote

    assert client.get("/inbox", query_string=params, auth=OPERATOR).status_code in (200, 400)
    for path in (f"/inbox/{quote(segment, safe='')}", f"/users/{quote(segment, safe='')}"):
        # 308: Werkzeug merges a doubled slash ("/inbox//0") by redirecting.
        assert client.get(path, query_string=params, auth=OPERATOR).status_code in (200, 308, 400, 404), path


def test_replaying_a_row_that_is_missing_or_pending_is_refused(client, session_factory):
    pending = store(session_factory, "clerk", payload("clerk/user.created"))
    page = client.get(f"/inbox/{pending}", auth=OPERATOR).text
    assert "Replay</button>" not in page  # a pending row waits for its run
    token = csrf_token(client.get("/", auth=OPERATOR).text)  # the prune form's token
    missing = client.post("/inbox/424242/replay", data={"csrf_token": token}, auth=OPERATOR)
    assert missing.status_code == 404 and "Nothing was changed" in missing.text
    waiting = client.post(f"/inbox/{pending}/replay", data={"csrf_token": token}, auth=OPERATOR)
    assert waiting.status_code == 409 and "is pending" in waiting.text
    assert _audit_entries(session_factory) == 0


def test_behind_a_trusted_proxy_the_audit_log_records_the_clients_address(settings, session_factory):
    from models.settings import ConsoleSettings
    from ops.console.app import create_app
    from ops.console.resources import EXTENSION
    from tests.ops.console.conftest import LOGINS
    from tests.support.billing import CLERK_ID, add_user

    add_user(session_factory)
    console = ConsoleSettings(console_basic_auth=LOGINS, console_operators="ana", console_trusted_proxy_count=1)
    app = create_app(settings, console)
    try:
        client = app.test_client()
        token = csrf_token(client.get(f"/users/{CLERK_ID}", auth=OPERATOR).text)
        form = {"csrf_token": token, "amount": "1", "reason": "proxy test", "key": "proxy-1"}
        forwarded = {"X-Forwarded-For": "203.0.113.9"}
        client.post(f"/users/{CLERK_ID}/credits", data=form, auth=OPERATOR, headers=forwarded)
    finally:
        app.extensions[EXTENSION].close()
    with session_factory() as session:
        assert session.scalars(select(AuditEntry.address)).all() == ["203.0.113.9"]
