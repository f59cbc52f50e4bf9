"""`user show`, `reconcile` and `credits grant|adjust` against the run's database."""

from __future__ import annotations

import json
import subprocess

import pytest
from sqlalchemy import text

from tests.support.billing import CLERK_ID, PRO_CREDITS, add_pro_plan, add_user, asaas_event, balance
from tests.support.cli import COMMAND, invoke
from tests.support.inbox import deliver


@pytest.fixture
def paid_user(session_factory):
    """The fixtures' user: signup 100, a `pro` payment granted 500, then refunded 30%."""
    add_pro_plan(session_factory)
    add_user(session_factory)
    assert deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED")).status == "processed"
    assert deliver(session_factory, "asaas", asaas_event("PAYMENT_PARTIALLY_REFUNDED")).status == "processed"
    assert balance(session_factory) == 100 + PRO_CREDITS - 150
    return CLERK_ID


def test_user_show_explains_the_balance_with_the_ledger(session_factory, paid_user):
    shown = json.loads(invoke("user", "show", paid_user, "--json").output)
    assert (shown["balance"], shown["ledger_sum"], shown["balance_matches_ledger"]) == (450, 450, True)
    assert shown["plan"] == {"id": "pro", "name": "Pro", "credits": PRO_CREDITS}
    assert [(e["kind"], e["delta"], e["balance_after"]) for e in shown["ledger"]] == [
        ("reversal", -150, 450),
        ("grant", 500, 600),
        ("signup", 100, 100),
    ]
    assert shown["ledger"][1]["reference"] == "asaas payment pay_080225913252 (Pro)"

    page = json.loads(invoke("user", "show", paid_user, "--per-page", "2", "--page", "2", "--json").output)
    assert [e["kind"] for e in page["ledger"]] == ["signup"] and page["ledger_entries"] == 3

    printed = invoke("user", "show", paid_user).output
    assert "balance:  450 credits (= the ledger)" in printed
    assert "plan:     pro (Pro, 500 credits)" in printed
    assert "ledger (page 1 of 1, 3 entries, newest first)" in printed
    assert "refund/chargeback of asaas payment pay_080225913252" in printed

    unknown = invoke("user", "show", "user_nobody")
    assert unknown.exit_code == 1 and "no user user_nobody" in unknown.output


def test_reconcile_passes_on_a_consistent_database(session_factory, paid_user):
    result = invoke("reconcile")
    assert result.exit_code == 0 and result.output.strip() == "ok: balances, grants and reversals agree for every user"
    assert json.loads(invoke("reconcile", "--user", paid_user, "--json").output) == []


def _plant(session_factory, sql: str) -> None:
    """Write behind the service's back, with triggers off (the ledger's `external` entry is not
    written, and the ledger's append-only guard does not fire): what only a bug or a hand-made
    fix could do."""
    with session_factory.begin() as session:
        session.execute(text("SET LOCAL session_replication_role = replica"))
        session.execute(text(sql))


def test_reconcile_finds_a_balance_changed_with_triggers_bypassed_and_exits_non_zero(session_factory, paid_user):
    add_user(session_factory, "user_bystander")
    _plant(
        session_factory, f"""UPDATE "CreditBalance" SET "creditsRemaining" = 9999 WHERE "clerkUserId" = '{paid_user}'"""
    )
    result = invoke("reconcile")
    assert result.exit_code == 1
    [found] = json.loads(invoke("reconcile", "--json").output)
    assert (found["check"], found["clerk_user_id"], found["expected"], found["found"]) == (
        "balance",
        paid_user,
        450,
        9999,
    )
    assert "creditsRemaining is 9999 but the ledger adds up to 450 (+9549)" in result.output
    assert invoke("reconcile", "--user", "user_bystander").exit_code == 0  # the other user is fine
    shown = json.loads(invoke("user", "show", paid_user, "--json").output)
    assert (shown["balance"], shown["ledger_sum"], shown["balance_matches_ledger"]) == (9999, 450, False)


def test_reconcile_finds_grants_and_reversals_that_disagree_with_their_payment(session_factory, paid_user):
    _plant(session_factory, "UPDATE ingest.payment_credits SET credits_granted = 400, credits_reversed = 100")
    _plant(
        session_factory,
        "INSERT INTO ingest.credit_ledger (user_id, clerk_user_id, credit_balance_id, delta, balance_after, kind,"
        " idempotency_key, reference) SELECT user_id, clerk_user_id, credit_balance_id, -10, 0, 'reversal',"
        " 'reversal:asaas:pay_nowhere:10', 'planted' FROM ingest.credit_ledger LIMIT 1",
    )
    result = invoke("reconcile", "--json")
    assert result.exit_code == 1
    found = {(m["check"], m["subject"], m["expected"], m["found"]) for m in json.loads(result.output)}
    balance_subject = next(subject for check, subject, _, _ in found if check == "balance")
    assert balance_subject.startswith("CreditBalance ")
    assert found == {
        ("balance", balance_subject, 440, 450),  # the planted reversal moved no balance
        ("grant", "payment asaas:pay_080225913252", 400, 500),
        ("reversal", "payment asaas:pay_080225913252", 100, 150),
        ("reversal", "reversal:asaas:pay_nowhere:10", None, 10),
    }


def test_credits_grant_twice_with_one_key_grants_once(session_factory, paid_user):
    args = [
        "credits",
        "grant",
        "--user",
        paid_user,
        "--amount",
        "25",
        "--reason",
        "ticket 42: failed render",
        "--key",
        "T-42",
    ]
    first = invoke(*args, "--operator", "ana")
    assert first.exit_code == 0 and first.output.startswith(f"+25 credits to {paid_user}: balance 475"), first.output
    second = invoke(*args, "--operator", "ana")
    assert second.exit_code == 0 and "already applied with key 'T-42'" in second.output
    assert balance(session_factory) == 475
    shown = json.loads(invoke("user", "show", paid_user, "--json").output)
    assert (shown["ledger"][0]["kind"], shown["ledger"][0]["delta"], shown["ledger"][0]["reference"]) == (
        "adjustment",
        25,
        "ana: ticket 42: failed render",
    )
    assert shown["ledger_entries"] == 4
    reused = invoke("credits", "grant", "--user", paid_user, "--amount", "30", "--reason", "x", "--key", "T-42")
    assert reused.exit_code == 1 and "key 'T-42' was used for +25 credits" in reused.output
    assert invoke("reconcile").exit_code == 0


def test_credits_grant_with_one_key_from_operators_at_once_grants_once(session_factory, paid_user):
    args = ["credits", "grant", "--user", paid_user, "--amount", "7", "--reason", "race", "--key", "RACE"]
    processes = [
        subprocess.Popen(
            [str(COMMAND), "--local-dir", "/nonexistent-local-dir", *args], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=60)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert sum(output.startswith("+7 credits") for output in outputs) == 1, outputs
    assert balance(session_factory) == 450 + 7


def test_credits_adjust_takes_credits_but_not_below_zero_unless_asked(session_factory, paid_user):
    taken = invoke(
        "credits", "adjust", "--user", paid_user, "--amount", "-50", "--reason", "duplicate grant", "--key", "A1"
    )
    assert taken.exit_code == 0 and "-50 credits" in taken.output and balance(session_factory) == 400
    refused = invoke("credits", "adjust", "--user", paid_user, "--amount", "-1000", "--reason", "x", "--key", "A2")
    assert refused.exit_code == 1 and "below zero" in refused.output and balance(session_factory) == 400
    forced = invoke(
        "credits",
        "adjust",
        "--user",
        paid_user,
        "--amount",
        "-1000",
        "--reason",
        "x",
        "--key",
        "A2",
        "--allow-negative",
    )
    assert forced.exit_code == 0 and balance(session_factory) == -600
    assert (
        invoke("credits", "grant", "--user", paid_user, "--amount", "-5", "--reason", "x", "--key", "A3").exit_code == 2
    )
    unknown = invoke("credits", "grant", "--user", "user_nobody", "--amount", "5", "--reason", "x", "--key", "A4")
    assert unknown.exit_code == 1 and "no user user_nobody with a credit balance" in unknown.output
    assert invoke("reconcile").exit_code == 0


def _ledger_entries(session_factory) -> list[tuple[str | None, int]]:
    with session_factory() as session:
        rows = session.execute(text("SELECT idempotency_key, delta FROM ingest.credit_ledger ORDER BY id")).all()
    return [tuple(row) for row in rows]


def test_credits_keys_differing_only_in_surrounding_spaces_apply_once(session_factory, paid_user):
    args = ["credits", "grant", "--user", paid_user, "--amount", "10", "--reason", "ticket 7"]
    first = invoke(*args, "--key", "t-1 ")
    assert first.exit_code == 0 and first.output.startswith("+10 credits"), first.output
    for spelling in ("t-1", "  t-1", "\tt-1\n"):
        again = invoke(*args, "--key", spelling)
        assert again.exit_code == 0 and "already applied with key 't-1'" in again.output, again.output
    assert balance(session_factory) == 450 + 10
    assert _ledger_entries(session_factory)[-1] == ("support:t-1", 10)  # stored as it was checked


def test_credits_refuse_an_empty_key(session_factory, paid_user):
    before = _ledger_entries(session_factory)
    blank = invoke("credits", "grant", "--user", paid_user, "--amount", "5", "--reason", "x", "--key", "   ")
    assert blank.exit_code == 1 and blank.output.strip() == "Error: --key must not be empty"
    assert _ledger_entries(session_factory) == before


@pytest.mark.parametrize(
    ("command", "amount"),
    [("grant", "100001"), ("grant", "2000000000"), ("adjust", "-100001"), ("adjust", "100001")],
)
def test_credits_refuse_an_amount_beyond_the_maximum_and_change_nothing(session_factory, paid_user, command, amount):
    before = _ledger_entries(session_factory)
    refused = invoke("credits", command, "--user", paid_user, "--amount", amount, "--reason", "typo", "--key", "big")
    assert refused.exit_code == 2
    assert refused.output.strip() == (
        f"Error: --amount {amount} is beyond the most one change may move, 100000 credits either way "
        "(SUPPORT_CREDITS_MAX_AMOUNT): nothing changed"
    )
    assert _ledger_entries(session_factory) == before and balance(session_factory) == 450
    at_most = invoke(
        "credits",
        "adjust",
        "--user",
        paid_user,
        "--amount",
        "-100000",
        "--reason",
        "x",
        "--key",
        "max",
        "--allow-negative",
    )
    assert at_most.exit_code == 0 and balance(session_factory) == 450 - 100000


def test_the_maximum_is_configurable(session_factory, paid_user, monkeypatch):
    monkeypatch.setenv("SUPPORT_CREDITS_MAX_AMOUNT", "50")
    args = ["credits", "grant", "--user", paid_user, "--reason", "x"]
    assert invoke(*args, "--amount", "51", "--key", "m1").exit_code == 2
    assert invoke(*args, "--amount", "50", "--key", "m2").exit_code == 0
    assert balance(session_factory) == 500
    monkeypatch.setenv("SUPPORT_CREDITS_MAX_AMOUNT", "0")
    misconfigured = invoke(*args, "--amount", "1", "--key", "m3")
    assert misconfigured.exit_code == 2 and "SUPPORT_CREDITS_MAX_AMOUNT" in misconfigured.output
    assert balance(session_factory) == 500
