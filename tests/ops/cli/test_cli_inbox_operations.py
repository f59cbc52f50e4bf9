"""`inbox list`, `inbox show`, `inbox replay` of a failed row, `inbox prune`, `sweep`, against
the run's database (the pipeline runs in this process, as in the other pipeline tests)."""

from __future__ import annotations

import json
from contextlib import contextmanager

from sqlalchemy import select, text, update

from models.app import Plan
from models.inbox import WebhookInbox
from tests.support.billing import CLERK_ID, PRO_CREDITS, add_pro_plan, add_user, asaas_event, balance, ledger
from tests.support.cli import invoke
from tests.support.inbox import deliver, inbox_row, payload, store


def test_list_filters_by_status_source_type_and_user(session_factory):
    add_user(session_factory)
    other = deliver(
        session_factory,
        "clerk",
        {
            **payload("clerk/user.created"),
            "data": {**payload("clerk/user.created")["data"], "id": "user_other", "email_addresses": []},
        },
    )
    attention = deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))  # no Plan: nothing granted
    assert attention.status == "needs_attention"

    listed = json.loads(invoke("inbox", "list", "--json").output)
    assert [row["id"] for row in listed] == sorted((row["id"] for row in listed), reverse=True)  # newest first
    assert len(listed) == 3

    [row] = json.loads(invoke("inbox", "list", "--status", "needs_attention", "--json").output)
    assert (row["id"], row["event_type"], row["source"]) == (attention.id, "PAYMENT_CONFIRMED", "asaas")
    assert "nothing granted" in row["detail"]

    mine = json.loads(invoke("inbox", "list", "--user", CLERK_ID, "--json").output)
    assert other.id not in {row["id"] for row in mine} and attention.id in {row["id"] for row in mine}
    assert len(mine) == 2  # its user.created and its payment

    typed = json.loads(invoke("inbox", "list", "--type", "user.created", "--source", "clerk", "--json").output)
    assert {row["event_type"] for row in typed} == {"user.created"} and len(typed) == 2
    assert (
        json.loads(invoke("inbox", "list", "--since", "1h", "--limit", "1", "--json").output)[0]["id"] == attention.id
    )
    assert invoke("inbox", "list", "--since", "2999-01-01").output.strip() == "no rows match"

    table = invoke("inbox", "list", "--status", "needs_attention").output.splitlines()
    assert table[0].split() == ["id", "received", "source", "type", "status", "tries", "detail", "/", "last", "error"]
    assert table[1].split()[0] == str(attention.id) and "needs_attention" in table[1]


def test_show_prints_the_payload_and_what_the_row_changed(session_factory):
    add_pro_plan(session_factory)
    signup_row = add_user(session_factory)  # the user.created row
    row = deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))
    assert row.status == "processed"

    shown = json.loads(invoke("inbox", "show", str(row.id), "--json").output)
    assert shown["payload"] == row.payload and shown["status"] == "processed" and shown["attempts"] == 1
    effects = shown["effects"]
    assert [(e["kind"], e["delta"], e["idempotency_key"]) for e in effects["ledger"]] == [
        ("grant", PRO_CREDITS, "grant:asaas:pay_080225913252")
    ]
    assert [(e["event_type"], e["status"]) for e in effects["subscription_events"]] == [
        ("PAYMENT_CONFIRMED", "CONFIRMED")
    ]
    assert [(p["payment_id"], p["credits_granted"], p["credits_reversed"]) for p in effects["payments"]] == [
        ("pay_080225913252", PRO_CREDITS, 0)
    ]

    printed = invoke("inbox", "show", str(row.id)).output
    assert f"provider event id: {row.external_id}" in printed
    assert '"externalReference": "user_29w83sxmDNGwOuEthce5gg56FcC|pro"' in printed  # pretty-printed payload
    assert "grant:asaas:pay_080225913252" in printed and "+500" in printed

    signup = json.loads(invoke("inbox", "show", str(signup_row), "--json").output)
    assert [(e["kind"], e["delta"]) for e in signup["effects"]["ledger"]] == [("signup", 100)]

    missing = invoke("inbox", "show", "999999")
    assert missing.exit_code == 1 and "no inbox row 999999" in missing.output


@contextmanager
def _writes_to_subscription_events_refused(session_factory):
    """A cause an operator can fix: the database refuses the row's writes (a permission revoked
    by mistake, as a trigger raising `insufficient_privilege`, since the tests connect as a
    superuser). Not a transient error: the row is dead-lettered with it at once."""
    with session_factory.begin() as session:
        session.execute(text(_REFUSE))
    try:
        yield
    finally:
        with session_factory.begin() as session:
            session.execute(text('DROP TRIGGER IF EXISTS ops_test_refuse ON "SubscriptionEvent"'))
            session.execute(text("DROP FUNCTION IF EXISTS ops_test_refuse()"))


_REFUSE = """
CREATE FUNCTION ops_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'permission denied for table SubscriptionEvent (ops_test_refuse)'
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER ops_test_refuse BEFORE INSERT ON "SubscriptionEvent"
    FOR EACH ROW EXECUTE FUNCTION ops_test_refuse();
"""


def test_a_failed_row_replayed_after_its_cause_is_fixed_ends_processed_with_its_effect_once(session_factory):
    add_pro_plan(session_factory)
    add_user(session_factory)
    with _writes_to_subscription_events_refused(session_factory):
        failed = deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))
    assert failed.status == "failed" and "ops_test_refuse" in failed.last_error
    assert balance(session_factory) == 100 and ledger(session_factory) == []  # nothing applied

    [listed] = json.loads(invoke("inbox", "list", "--status", "failed", "--json").output)
    assert listed["id"] == failed.id and "ops_test_refuse" in listed["last_error"]

    # The cause is gone (the constraint was dropped): replay the dead letter, twice.
    for _ in range(2):
        result = invoke("inbox", "replay", "--status", "failed")
        assert result.exit_code == 0, result.output
    replayed = inbox_row(session_factory, failed.id)
    assert (replayed.status, replayed.last_error) == ("processed", None)
    assert balance(session_factory) == 100 + PRO_CREDITS  # granted once
    assert [kind for kind, _, _ in ledger(session_factory)] == ["grant"]
    assert invoke("inbox", "replay", str(failed.id)).exit_code == 0  # by id, processed: still once
    assert balance(session_factory) == 100 + PRO_CREDITS


def test_replay_by_status_since_leaves_older_rows(session_factory):
    add_user(session_factory)
    old = deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))
    new = deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED", id="pay_2", event_id="evt_2"))
    with session_factory.begin() as session:
        session.execute(
            update(WebhookInbox).where(WebhookInbox.id == old.id).values(received_at=text("now() - interval '3 days'"))
        )
        session.add(Plan(id="pro", asaas_id="pro", name="Pro", credits=PRO_CREDITS))
    result = invoke("inbox", "replay", "--status", "needs_attention", "--since", "1d")
    assert result.exit_code == 0 and result.output.strip().endswith(f"[{new.id}]"), result.output
    assert inbox_row(session_factory, old.id).status == "needs_attention"
    assert inbox_row(session_factory, new.id).status == "processed"


def _age(session_factory, inbox_id: int, days: int) -> None:
    with session_factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == inbox_id)
            .values(
                received_at=text(f"now() - interval '{days} days'"),
                processed_at=text(f"CASE WHEN processed_at IS NULL THEN NULL ELSE now() - interval '{days} days' END"),
            )
        )


def test_prune_deletes_old_final_rows_and_keeps_young_and_unfinished_ones(session_factory):
    young = add_user(session_factory)  # processed
    rows = {
        "old processed": deliver(session_factory, "clerk", payload("clerk/user.updated")).id,
        "old ignored": deliver(session_factory, "clerk", {"type": "session.created", "data": {}}).id,
        "old needs_attention": deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED")).id,
        "old unmatched": deliver(
            session_factory,
            "asaas",
            asaas_event("PAYMENT_CONFIRMED", externalReference="user_nobody", id="pay_x", event_id="evt_x"),
        ).id,
        "old failed": deliver(session_factory, "clerk", {"type": "user.created", "data": {}}).id,
        "old pending": store(session_factory, "clerk", payload("clerk/user.deleted")),
        "young processed": young,
    }
    for name, inbox_id in rows.items():
        if name.startswith("old"):
            _age(session_factory, inbox_id, 100)
    statuses = {name: inbox_row(session_factory, inbox_id).status for name, inbox_id in rows.items()}
    assert statuses == {
        "old processed": "processed",
        "old ignored": "ignored",
        "old needs_attention": "needs_attention",
        "old unmatched": "unmatched",
        "old failed": "failed",
        "old pending": "pending",
        "young processed": "processed",
    }

    assert invoke("inbox", "prune", "--older-than", "90d", "--dry-run").output.strip() == "2 row(s) would be deleted"
    result = invoke("inbox", "prune", "--older-than", "90d", "--batch-size", "1")  # two batches of one
    assert result.exit_code == 0 and "deleted 2 row(s)" in result.output, result.output
    with session_factory() as session:
        left = set(session.scalars(select(WebhookInbox.id)))
    assert left == {rows[name] for name in rows if name not in ("old processed", "old ignored")}
    assert invoke("inbox", "prune", "--older-than", "90d").output.strip() == "nothing to prune"

    too_short = invoke("inbox", "prune", "--older-than", "3d")
    assert too_short.exit_code == 2 and "keep at least 14d" in too_short.output


def test_sweep_re_enqueues_a_pending_row_whose_message_was_lost(session_factory):
    add_pro_plan(session_factory)
    add_user(session_factory)
    inbox_id = store(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))  # stored, never enqueued
    _age(session_factory, inbox_id, 1)
    with session_factory.begin() as session:
        session.execute(update(WebhookInbox).where(WebhookInbox.id == inbox_id).values(enqueued_at=text("received_at")))
    result = invoke("sweep")
    assert result.exit_code == 0 and result.output.strip() == f"swept 1 pending row(s), enqueued 1: [{inbox_id}]"
    # The test app runs what it enqueues in place (eager): the row was processed.
    assert inbox_row(session_factory, inbox_id).status == "processed"
    assert balance(session_factory) == 100 + PRO_CREDITS
    assert invoke("sweep").output.strip() == "swept 0 pending row(s), enqueued 0"
