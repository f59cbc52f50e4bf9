"""The Next.js app's own `deductCredits` (tests/app/src/credits.ts, the app's code verbatim) on
the real Prisma client, racing the service's debits on one balance: the overdraft guard keeps
the balance at or above zero, the app's losing calls fail with an error that names the guard and
leave no `UsageHistory` row, and the ledger explains the balance."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, select

from models.app import CreditBalance, UsageHistory, User
from models.ledger import OVERDRAFT_GUARD, OVERDRAFT_SQLSTATE, CreditLedgerEntry
from tests.support.databases import libpq_url
from tests.support.inbox import assert_ledger_matches_balances
from tests.support.prisma_app import PrismaApp
from tests.support.servers import PROJECT_ROOT
from tests.support.usage import credits_client, hold, make_user, release

CLERK_ID = "user_app_race"
BALANCE = 150
SERVICE_DEBITS = 100  # of 1 credit, through a real worker
# The app alone wants more than the balance, so its last calls always meet zero while others are
# in flight (read, check, decrement: the race the guard ends); with the service's, demand is 300.
APP_CALLS = 200  # of 1 credit
APP_CONCURRENCY = 10  # Prisma's default pool (tests/app/src/lib/db.ts)


@pytest.mark.celery_worker
def test_the_apps_deduct_credits_racing_the_service_never_overdraws(
    prisma_app, celery_worker, session_factory, settings
):
    make_user(session_factory, CLERK_ID, credits=BALANCE)
    user_id, balance_id = _ids(session_factory)
    app = _start_app(prisma_app, settings, user_id)
    with ThreadPoolExecutor(1) as pool:
        service = pool.submit(_service_debits, settings.redis_url.get_secret_value(), CLERK_ID, SERVICE_DEBITS)
        outcomes = _go(app)
        statuses = service.result()

    by_kind = _app_outcomes(outcomes)
    applied, refused = by_kind["applied"], by_kind["guard"]
    final = _balance(session_factory)
    print(
        f"app: {len(applied)} applied, {len(refused)} refused by the guard, {len(by_kind['insufficient'])} "
        f"refused by its own check; service: {dict(statuses)}; balance {final}"
    )
    assert final >= 0
    assert final == BALANCE - len(applied) - statuses["applied"]
    assert set(statuses) <= {"applied", "insufficient_credits"}, statuses
    assert refused, "no app call met the guard: its calls never raced each other at zero"
    for outcome in refused:
        _assert_names_the_guard(outcome, balance_id)
    assert _service_debits_landed_between_the_apps(session_factory), "the service and the app did not overlap"
    assert_ledger_matches_balances(session_factory)
    assert _ledger_kinds(session_factory) == {"signup": 1, "external": len(applied), "usage": statuses["applied"]}
    # Each failed app transaction rolled back: the app's UsageHistory rows are its successes.
    assert _app_usage_calls(session_factory) == sorted(n for n, outcome in enumerate(outcomes) if outcome["ok"])


def test_the_app_cannot_spend_credits_the_service_holds(prisma_app, session_factory, settings):
    """A hold takes its credits out of `creditsRemaining` at once: the app's own `deductCredits`
    beside it spends only what is left, and the held credits come back when the hold ends."""
    make_user(session_factory, CLERK_ID, credits=100)
    assert hold(session_factory, "llm-job", clerk_user_id=CLERK_ID, credits=90, expires_in=600)["status"] == "held"
    user_id, _ = _ids(session_factory)
    outcomes = _go(_start_app(prisma_app, settings, user_id, calls=20, concurrency=5))
    by_kind = _app_outcomes(outcomes)
    assert len(by_kind["applied"]) == 10 and len(by_kind["insufficient"]) + len(by_kind["guard"]) == 10
    assert _balance(session_factory) == 0
    assert release(session_factory, "llm-job")["remaining"] == 90
    assert_ledger_matches_balances(session_factory)


def _assert_names_the_guard(outcome: dict[str, Any], balance_id: str) -> None:
    """What the app sees (docs/usage-api.md): the driver adapter's error, the database's message
    and SQLSTATE as they are."""
    assert (outcome["errorClass"], outcome["name"]) == ("DriverAdapterError", "DriverAdapterError"), outcome
    assert outcome["message"].startswith(f'{OVERDRAFT_GUARD}: refused to take "CreditBalance" {balance_id} from ')
    assert outcome["message"].endswith(" credits (below zero)")
    cause = outcome["cause"]
    assert (cause["kind"], cause["originalCode"], cause["originalMessage"]) == (
        "postgres",
        OVERDRAFT_SQLSTATE,
        outcome["message"],
    )


def _app_outcomes(outcomes: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Every call ended applied, refused by the app's own check, or refused by the guard."""
    by_kind: dict[str, list[dict[str, Any]]] = {"applied": [], "insufficient": [], "guard": []}
    for outcome in outcomes:
        if outcome["ok"]:
            by_kind["applied"].append(outcome)
        elif outcome["errorClass"] == "InsufficientCreditsError":
            by_kind["insufficient"].append(outcome)
        else:
            assert OVERDRAFT_GUARD in outcome["message"], outcome
            by_kind["guard"].append(outcome)
    return by_kind


def _service_debits(redis_url: str, clerk_user_id: str, count: int) -> Counter[str]:
    """The service's side, as another service of the product spends credits: `count` debits of
    1 credit sent at once, each one's final status."""
    client = credits_client(redis_url)
    try:
        sent = [client.send_debit(clerk_user_id, "AI_TEXT_CHAT", f"race-{n}", cost=1, wait=60) for n in range(count)]
        return Counter(pending.answer()["status"] for pending in sent)
    finally:
        client.close()


def _start_app(
    prisma_app: PrismaApp, settings, user_id: str, calls: int = APP_CALLS, concurrency: int = APP_CONCURRENCY
) -> subprocess.Popen[str]:
    """src/race.ts, connected and waiting for the start line."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": libpq_url(settings.database_url.get_secret_value()),
        "USER_ID": user_id,
        "CALLS": str(calls),
        "COST": "1",
        "CONCURRENCY": str(concurrency),
    }
    app = subprocess.Popen(
        prisma_app.command("src/race.ts"),
        cwd=prisma_app.folder,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = app.stdout.readline()
    assert json.loads(ready or "null") == {"ready": True}, (ready, app.stderr.read() if app.poll() is not None else "")
    return app


def _go(app: subprocess.Popen[str]) -> list[dict[str, Any]]:
    out, err = app.communicate("go\n", timeout=120)
    assert app.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])["outcomes"]


def _ids(session_factory) -> tuple[str, str]:
    with session_factory() as session:
        row = session.execute(
            select(User.id, CreditBalance.id).join(CreditBalance, CreditBalance.user_id == User.id)
        ).one()
    return row[0], row[1]


def _balance(session_factory) -> int:
    with session_factory() as session:
        return session.scalar(select(CreditBalance.credits_remaining).where(CreditBalance.clerk_user_id == CLERK_ID))


def _ledger_kinds(session_factory) -> dict[str, int]:
    with session_factory() as session:
        rows = session.execute(select(CreditLedgerEntry.kind, func.count()).group_by(CreditLedgerEntry.kind)).all()
    return {kind: count for kind, count in rows}


def _service_debits_landed_between_the_apps(session_factory) -> bool:
    """A `usage` entry (the service's debit) between the app's first and last `external` ones."""
    with session_factory() as session:
        kinds = "".join(
            kind[0] for kind in session.scalars(select(CreditLedgerEntry.kind).order_by(CreditLedgerEntry.id))
        )
    return "u" in kinds[kinds.find("e") : kinds.rfind("e")]


def _app_usage_calls(session_factory) -> list[int]:
    """The call numbers (`details.call`, src/race.ts) of the app's UsageHistory rows; the
    service's rows carry no details."""
    with session_factory() as session:
        details = session.scalars(select(UsageHistory.details).where(UsageHistory.details.has_key("call"))).all()
    return sorted(detail["call"] for detail in details)


def test_the_docs_say_what_the_app_sees():
    """docs/usage-api.md quotes the error as the test above finds it."""
    docs = (PROJECT_ROOT / "docs" / "usage-api.md").read_text()
    section = docs[docs.index("\n## The Next.js app's own writes\n") :]
    assert (
        f'{OVERDRAFT_GUARD}: refused to take "CreditBalance" <balance id> from <before> to <after> credits (below zero)'
        in section
    )
    assert f"SQLSTATE `{OVERDRAFT_SQLSTATE}`" in section
    assert "`DriverAdapterError`" in section and '"originalCode": "23514"' in section
