"""Holds through real workers (and a real beat): their messages batched with debits, every key one
effect, exactly one of capture, release and expiry ending each hold, and expiry on its own."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text

from models.app import UsageHistory
from models.usage import CreditHold
from tests.support.usage import balance, count_rows, hold_state, ledger_deltas, make_user
from worker.usage import holds

pytestmark = pytest.mark.celery_worker


def test_hold_capture_and_release_through_the_worker(client, session_factory):
    make_user(session_factory)
    held = client.hold("user_a", "AI_TEXT_CHAT", "job-1", credits=50, expires_in=300)
    assert (held["status"], held["remaining"]) == ("held", 50)
    assert client.capture("job-1", 37, details={"model": "llm"})["remaining"] == 63
    client.hold("user_a", "AI_TEXT_CHAT", "job-2", credits=20)
    assert client.release("job-2")["status"] == "released"
    assert balance(session_factory) == 63 and count_rows(session_factory, UsageHistory) == 1


def test_sent_again_with_the_same_key_one_effect_the_same_answer(client, session_factory):
    make_user(session_factory)
    holds_sent = [client.send_hold("user_a", "AI_TEXT_CHAT", "again-1", credits=10) for _ in range(4)]
    answers = [pending.answer() for pending in holds_sent]
    assert sorted(answer["status"] for answer in answers) == ["duplicate"] * 3 + ["held"]
    captures = [client.send_capture("again-1", 4) for _ in range(4)]
    captured = [pending.answer() for pending in captures]
    assert all(answer == captured[0] for answer in captured) and captured[0]["status"] == "captured"
    releases = [client.send_release("again-1") for _ in range(2)]
    assert {pending.answer()["status"] for pending in releases} == {"captured"}
    assert balance(session_factory) == 96 and ledger_deltas(session_factory, "hold") == [-10]


def test_150_holds_of_1_racing_debits_on_100_never_overdraw(client, session_factory):
    make_user(session_factory)
    sent = [client.send_hold("user_a", "AI_TEXT_CHAT", f"race-hold-{n}", credits=1, wait=60) for n in range(150)]
    sent += [client.send_debit("user_a", "AI_TEXT_CHAT", f"race-debit-{n}", cost=1, wait=60) for n in range(50)]
    statuses = Counter(pending.answer()["status"] for pending in sent)
    assert statuses["held"] + statuses["applied"] == 100 and statuses["insufficient_credits"] == 100
    assert balance(session_factory) == 0
    with session_factory() as session:
        assert session.scalar(text("SELECT count(*) FROM ingest.credit_holds")) == statuses["held"]
    assert len(ledger_deltas(session_factory, "hold")) == statuses["held"]


def test_capture_release_and_expiry_racing_on_one_hold_exactly_one_wins(client, session_factory):
    """Each round: a hold that expires in 0.3 s, then a capture and a release sent at once, from
    just before to just after its expiry, while a sweep expires what is due. Whatever the order,
    one of the three ends the hold, and the others answer what it did."""
    make_user(session_factory, credits=10_000)
    winners: Counter[str] = Counter()
    for round_ in range(20):
        key = f"contest-{round_}"
        client.hold("user_a", "AI_TEXT_CHAT", key, credits=10, expires_in=0.3)
        time.sleep(0.2 + 0.05 * (round_ % 5))  # 0.2 to 0.4 s: before, at and after the expiry
        if round_ % 2:  # who is sent first takes turns: in a batch, arrival order decides
            capture, release = client.send_capture(key, 7), client.send_release(key)
        else:
            release, capture = client.send_release(key), client.send_capture(key, 7)
        sweeps = threading.Thread(target=_sweep_for, args=(session_factory, 0.3))
        sweeps.start()
        answers = [capture.answer(), release.answer()]
        sweeps.join()
        state = hold_state(session_factory, key)
        winners[state or "none"] += 1
        assert state in {"captured", "released", "expired"}
        assert {answer["status"] for answer in answers} == {state}, (state, answers)
    # Which one wins depends on timing (printed); that exactly one did is what is asserted.
    assert sum(winners.values()) == 20
    with session_factory() as session:
        ends = session.execute(text("SELECT count(*) FROM ingest.credit_ledger WHERE kind = 'release'")).scalar()
        captured = session.scalars(select(CreditHold.captured).where(CreditHold.state == "captured")).all()
    # One `release` entry per hold that gave anything back: every non-captured hold, and each
    # capture's 3 unused credits.
    assert ends == 20
    assert balance(session_factory) == 10_000 - 7 * len(captured)
    print(f"\n20 contested holds: {dict(winners)}")


def _sweep_for(factory, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with factory.begin() as session:
            holds.expire_due(session)
        time.sleep(0.01)


@pytest.fixture
def beat(celery_worker, tmp_path) -> Iterator[None]:
    """A real `celery beat` sending the maintenance tasks every second (the session worker
    consumes `maintenance`)."""
    command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "beat", "--loglevel=WARNING"]
    command.append(f"--schedule={tmp_path / 'beat-schedule'}")
    process = subprocess.Popen(command, env={**os.environ, "SWEEP_INTERVAL_SECONDS": "1"})
    try:
        yield
    finally:
        process.terminate()
        process.wait(20)


def test_an_expired_hold_is_released_by_the_service_on_its_own(client, session_factory, beat):
    make_user(session_factory)
    client.hold("user_a", "AI_TEXT_CHAT", "forgotten-1", credits=30, expires_in=1)
    assert balance(session_factory) == 70
    deadline = time.monotonic() + 30
    while hold_state(session_factory, "forgotten-1") != "expired":
        assert time.monotonic() < deadline, "beat's holds.expire did not release the hold"
        time.sleep(0.1)
    assert balance(session_factory) == 100 and count_rows(session_factory, UsageHistory) == 0
    assert client.capture("forgotten-1", 5)["status"] == "expired"
