"""The CLI's writes land in the audit log: who (the --operator or the login), from which host,
what and its outcome, committed with the change itself; a refused or dry run writes nothing."""

from __future__ import annotations

import socket

from sqlalchemy import select, text, update

from models.audit import AuditEntry
from models.inbox import WebhookInbox
from ops.audit import login_name
from tests.support.billing import CLERK_ID, add_user
from tests.support.cli import invoke
from tests.support.inbox import payload, store


def _entries(session_factory) -> list[AuditEntry]:
    with session_factory() as session:
        return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


def test_credits_replay_prune_sweep_and_seed_are_audited(session_factory, settings):
    add_user(session_factory)
    assert (
        invoke(
            "credits",
            "grant",
            "--user",
            CLERK_ID,
            "--amount",
            "5",
            "--reason",
            "r",
            "--key",
            "k1",
            "--operator",
            "maria",
        ).exit_code
        == 0
    )
    assert (
        invoke(
            "credits",
            "adjust",
            "--user",
            CLERK_ID,
            "--amount",
            "-2",
            "--reason",
            "r",
            "--key",
            "k2",
            "--operator",
            "maria",
        ).exit_code
        == 0
    )
    refused = invoke("credits", "adjust", "--user", CLERK_ID, "--amount", "-5000", "--reason", "r", "--key", "k3")
    assert refused.exit_code != 0
    old = store(session_factory, "clerk", payload("clerk/user.deleted"))
    with session_factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == old)
            .values(status="ignored", received_at=text("now() - interval '100 days'"), processed_at=None)
        )
    assert invoke("inbox", "prune", "--older-than", "90d", "--dry-run").exit_code == 0
    assert invoke("inbox", "replay", str(old)).exit_code == 0
    with session_factory.begin() as session:
        # The eager replay processed it just now: back to an old ignored row for the prune.
        session.execute(update(WebhookInbox).where(WebhookInbox.id == old).values(status="ignored", processed_at=None))
    assert invoke("inbox", "prune", "--older-than", "90d").exit_code == 0
    assert invoke("sweep").exit_code == 0
    assert invoke("dev", "seed").exit_code == 0

    entries = _entries(session_factory)
    assert [(e.action, e.actor, e.outcome.split(" (")[0]) for e in entries] == [
        ("credits.grant", "maria", "+5 credits, balance 105"),
        ("credits.adjust", "maria", "-2 credits, balance 103"),
        ("inbox.replay", login_name(), "1 row(s) put back to pending"),
        ("inbox.prune", login_name(), "started"),
        ("inbox.prune", login_name(), "deleted 1 row(s)"),
        ("inbox.sweep", login_name(), "re-enqueued 0 pending row(s)"),
        ("dev.seed", login_name(), "Plan 'demo' created"),
    ]
    assert {(e.channel, e.address) for e in entries} == {("cli", f"cli@{socket.gethostname()}")}
    assert entries[0].target == f"user {CLERK_ID}" and entries[0].details["key"] == "k1"
    assert entries[2].details["inbox_ids"] == [old]


def test_the_audit_log_is_append_only(session_factory):
    add_user(session_factory)
    invoke("credits", "grant", "--user", CLERK_ID, "--amount", "5", "--reason", "r", "--key", "k1")
    import pytest
    from sqlalchemy.exc import DBAPIError

    for statement in ("UPDATE ingest.audit_log SET actor = 'someone else'", "DELETE FROM ingest.audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), session_factory.begin() as session:
            session.execute(text(statement))
    assert [e.action for e in _entries(session_factory)] == ["credits.grant"]


def test_audit_prints_the_log_newest_first(session_factory):
    import json

    add_user(session_factory)
    for key in ("k1", "k2"):
        grant = ("credits", "grant", "--user", CLERK_ID, "--amount", "5", "--reason", "r", "--key", key)
        invoke(*grant, "--operator", "jo")
    printed = json.loads(invoke("audit", "--json").output)
    assert [(e["action"], e["actor"], e["details"]["key"]) for e in printed] == [
        ("credits.grant", "jo", "k2"),
        ("credits.grant", "jo", "k1"),
    ]
    older = json.loads(invoke("audit", "--json", "--before", str(printed[0]["id"])).output)
    assert [e["id"] for e in older] == [printed[1]["id"]]
    assert "credits.grant" in invoke("audit").output
