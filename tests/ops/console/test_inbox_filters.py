"""/inbox's filters return exactly the matching rows of a known data set, the same the CLI's
`inbox list` returns (one query), and keyset paging visits every row exactly once."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from models.billing import ProviderLink
from models.inbox import WebhookInbox, record_delivery
from ops.console.inbox_filters import parse_filters
from ops.queries.inbox_rows import InboxQuery, conditions_of, inbox_page
from tests.ops.console.conftest import OPERATOR

ANA, BIA = "user_ana", "user_bia"
START = datetime(2026, 11, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    source: str
    event_type: str
    status: str
    hours: int  # received START + hours
    names: str | None  # the user the payload names (by any of the billing paths), or None
    body: dict[str, Any]
    external_id: str


def _known_rows() -> list[Row]:
    """Each way a payload names a user, a decoy that holds a user id where no rule looks for
    one, and a spread of sources, types, statuses and times."""
    statuses = itertools.cycle(["processed", "failed", "pending", "unmatched", "ignored", "needs_attention"])
    rows: list[Row] = []

    def add(source: str, event_type: str, names: str | None, body: dict[str, Any]) -> None:
        n = len(rows)
        external = f"{'msg' if source == 'clerk' else 'evt'}_{n:03d}&x"  # Asaas ids hold `&`
        rows.append(Row(source, event_type, next(statuses), n * 5, names, body, external))

    for user in (ANA, BIA):
        add("clerk", "user.created", user, {"type": "user.created", "data": {"id": user}})
        add("clerk", "user.updated", user, {"type": "user.updated", "data": {"id": user, "first_name": "A"}})
        add(
            "clerk",
            "paymentAttempt.updated",
            user,
            {
                "type": "paymentAttempt.updated",
                "data": {"id": f"pa_{user}", "payer": {"user_id": user}, "status": "paid"},
            },
        )
        for kind, event in (
            ("payment", "PAYMENT_CONFIRMED"),
            ("subscription", "SUBSCRIPTION_CREATED"),
            ("checkout", "CHECKOUT_CREATED"),
        ):
            reference = {"id": f"{kind}_{user}", "externalReference": f"{user}|pro"}
            add("asaas", event, user, {"event": event, kind: reference})
        add(
            "asaas",
            "PAYMENT_RECEIVED",
            user,
            {"event": "PAYMENT_RECEIVED", "payment": {"id": f"pay_linked_{user}", "customer": f"cus_{user}"}},
        )
        add(
            "asaas", "PAYMENT_CREATED", user, {"event": "PAYMENT_CREATED", "subscription": {"id": f"sub_linked_{user}"}}
        )
    # Decoys: the user's id where no rule reads it (a billing event's own data.id; an unlinked customer).
    add("clerk", "paymentAttempt.updated", None, {"type": "paymentAttempt.updated", "data": {"id": ANA}})
    add("asaas", "PAYMENT_RECEIVED", None, {"event": "PAYMENT_RECEIVED", "payment": {"customer": "cus_nobody"}})
    for n in range(12):
        add("clerk" if n % 3 else "asaas", "user.deleted" if n % 3 else "PAYMENT_CREATED", None, {"event": "x"})
    return rows


@pytest.fixture
def known(session_factory) -> dict[int, Row]:
    stored: dict[int, Row] = {}
    with session_factory.begin() as session:
        for user in (ANA, BIA):
            session.add(ProviderLink(provider="asaas", kind="customer", external_id=f"cus_{user}", clerk_user_id=user))
            session.add(
                ProviderLink(
                    provider="asaas", kind="subscription", external_id=f"sub_linked_{user}", clerk_user_id=user
                )
            )
        for row in _known_rows():
            inbox_id = record_delivery(
                session, source=row.source, external_id=row.external_id, event_type=row.event_type, payload=row.body
            )
            assert inbox_id is not None
            session.execute(
                update(WebhookInbox)
                .where(WebhookInbox.id == inbox_id)
                .values(status=row.status, received_at=START + timedelta(hours=row.hours))
            )
            stored[inbox_id] = row
    return stored


def _expected(known: dict[int, Row], params: dict[str, Any]) -> list[int]:
    def matches(row: Row) -> bool:
        received = START + timedelta(hours=row.hours)
        return all(
            (
                "source" not in params or row.source in _many(params["source"]),
                "type" not in params or row.event_type in _many(params["type"]),
                "status" not in params or row.status in _many(params["status"]),
                "received_from" not in params or received >= datetime.fromisoformat(params["received_from"]),
                "received_to" not in params or received < datetime.fromisoformat(params["received_to"]),
                "event_id" not in params or row.external_id == params["event_id"],
                "user" not in params or row.names == params["user"],
            )
        )

    return sorted((inbox_id for inbox_id, row in known.items() if matches(row)), reverse=True)


def _many(value: Any) -> list[str]:
    return value if isinstance(value, list) else [value]


FILTERS = [
    {},
    {"source": "asaas"},
    {"source": "clerk", "status": "failed"},
    {"type": "PAYMENT_CONFIRMED"},
    {"type": ["user.created", "user.updated"]},
    {"status": ["pending", "unmatched"]},
    {"status": "processed"},
    {"received_from": "2026-11-01T20:00+00:00", "received_to": "2026-11-02T10:00+00:00"},
    {"received_from": "2026-11-02T00:00+00:00", "status": "failed", "source": "asaas"},
    {"event_id": "evt_004&x"},
    {"event_id": "msg_000&x"},
    {"event_id": "evt_004&x", "source": "clerk"},
    {"user": ANA},
    {"user": BIA},
    {"user": ANA, "source": "asaas"},
    {"user": BIA, "status": "processed"},
    {"user": "user_nobody"},
    {"type": "no.such.type"},
]


@pytest.mark.parametrize("params", FILTERS, ids=lambda params: "&".join(f"{k}={v}" for k, v in params.items()) or "all")
def test_each_filter_returns_exactly_the_matching_rows(known, session_factory, params):
    wanted = _expected(known, params)
    with session_factory() as session:
        found = [row.id for row in inbox_page(session, _query(params, limit=200)).rows]
    assert found == wanted
    if params.get("user") in (ANA, BIA) and len(params) == 1:
        assert len(found) == 8  # every path a payload names a user by, and no decoy


def _query(params: dict[str, Any], **changes: Any) -> InboxQuery:
    from werkzeug.datastructures import MultiDict

    values = MultiDict([(k, v) for k, vs in params.items() for v in _many(vs)])
    query = parse_filters(values).query
    return InboxQuery(**{**query.__dict__, **changes})


@pytest.mark.parametrize(
    "params", [FILTERS[0], FILTERS[2], FILTERS[12], FILTERS[7]], ids=["all", "clerk-failed", "ana", "window"]
)
def test_the_page_shows_the_rows_the_query_finds(client, known, params):
    from werkzeug.datastructures import MultiDict

    values = MultiDict([(k, v) for k, vs in params.items() for v in _many(vs)])
    page = client.get("/inbox", query_string={**values.to_dict(flat=False), "per_page": "200"}, auth=OPERATOR).text
    shown = [int(found) for found in re.findall(r'<td><a href="/inbox/(\d+)">', page)]
    assert shown == _expected(known, params)


@pytest.mark.parametrize("per_page", [1, 3, 7, 50])
def test_keyset_paging_visits_every_row_once_both_ways(client, known, per_page):
    wanted = _expected(known, {})
    seen: list[int] = []
    link = f"/inbox?per_page={per_page}"
    while link:
        page = client.get(link.replace("&amp;", "&"), auth=OPERATOR).text
        seen += [int(found) for found in re.findall(r'<td><a href="/inbox/(\d+)">', page)]
        older = re.search(r'<a href="([^"]+)" rel="next">Older</a>', page)
        link = older.group(1) if older else ""
    assert seen == wanted
    # And back from the last page to the first through the "Newer" links.
    back: list[int] = []
    link = f"/inbox?per_page={per_page}&after=0"
    with_after = client.get(link, auth=OPERATOR).text  # after=0: the oldest rows first
    back += [int(found) for found in re.findall(r'<td><a href="/inbox/(\d+)">', with_after)]
    assert back == sorted(wanted)[:per_page][::-1]


def test_a_filtered_page_keeps_its_filters_in_the_paging_links(client, known):
    page = client.get("/inbox?status=processed&status=failed&per_page=2", auth=OPERATOR).text
    older = re.search(r'<a href="([^"]+)" rel="next">Older</a>', page)
    assert older and "status=processed&amp;status=failed" in older.group(1) and "before=" in older.group(1)


@pytest.mark.parametrize(
    ("params", "index"),
    [
        ({"user": ANA}, "webhook_inbox_payload_names_idx"),
        ({"status": "failed"}, "webhook_inbox_status_id_idx"),
        ({"status": "unmatched"}, "webhook_inbox_unmatched_idx"),
        ({"status": "pending"}, "webhook_inbox_pending_enqueued_at_idx"),
        ({"type": "PAYMENT_CONFIRMED"}, "webhook_inbox_event_type_id_idx"),
        ({"event_id": "evt_004&x"}, "webhook_inbox_source_external_id_key"),
        (FILTERS[7], "webhook_inbox_received_at_idx"),
    ],
)
def test_each_filter_can_use_its_index(known, session_factory, params, index):
    """The query's expressions are the indexes' (migration 0010): with sequential scans and walks
    down the primary key ruled out, PostgreSQL reaches the rows through the filter's index."""
    statement = select(WebhookInbox.id).where(*conditions_of(_query(params))).order_by(WebhookInbox.id.desc()).limit(50)
    with session_factory() as session:
        sql = str(statement.compile(session.get_bind(), compile_kwargs={"literal_binds": True}))
        connection = session.connection()
        connection.exec_driver_sql("SET LOCAL enable_seqscan = off")
        connection.exec_driver_sql("SET LOCAL enable_indexscan = off")
        plan = "\n".join(row[0] for row in connection.exec_driver_sql("EXPLAIN " + sql))
    assert index in plan, plan
