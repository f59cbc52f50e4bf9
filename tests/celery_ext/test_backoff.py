"""The retry schedules the tasks promise (docs/design.md "Retries", worker/usage/retries.py):
`webhooks.process`, `webhooks.ingest` and the sweep back off 2, 4, 8 ... up to 60 s; usage
requests 1, 2, 4 ... up to 30 s; full jitter below each step. Waiting them out takes minutes, so
these read the live worker app's tasks and compute each countdown with the function every
hand-made retry uses (`celery_ext.backoff.retry_countdown`, the commit-time retry's too)."""

from __future__ import annotations

import random

import pytest

from celery_ext.backoff import retry_countdown
from messaging.celery_config import DEBIT_TASK, INGEST_WEBHOOK_TASK, PROCESS_WEBHOOK_TASK, REFUND_TASK, SWEEP_INBOX_TASK
from worker.celery_app import app
from worker.inbox.tasks import PROCESS_MAX_RETRIES
from worker.usage import tasks as _usage_tasks  # noqa: F401  (registers the usage tasks on `app`)
from worker.usage.retries import retry_delay, waited

INBOX_SCHEDULE = [2, 4, 8, 16, 32, 60, 60, 60]
USAGE_SCHEDULE = [1, 2, 4, 8, 16, 30, 30, 30]

pytestmark = pytest.mark.usefixtures("settings")  # the app's configuration is read from the environment


@pytest.fixture
def highest_jitter(monkeypatch):
    """Full jitter draws from 0 ... the step (`random.randrange(step + 1)`): take the step."""
    monkeypatch.setattr(random, "randrange", lambda stop: stop - 1)


@pytest.fixture
def lowest_jitter(monkeypatch):
    monkeypatch.setattr(random, "randrange", lambda stop: 0)


def _countdowns(task_name: str, tries: int) -> list[float]:
    return [retry_countdown(app.tasks[task_name], n) for n in range(tries)]


@pytest.mark.parametrize("task_name", [PROCESS_WEBHOOK_TASK, INGEST_WEBHOOK_TASK, SWEEP_INBOX_TASK])
def test_the_pipeline_backs_off_2_4_8_up_to_60_seconds(task_name, highest_jitter):
    assert _countdowns(task_name, len(INBOX_SCHEDULE)) == INBOX_SCHEDULE


def test_every_retry_of_webhooks_process_is_scheduled(highest_jitter):
    """Its 8 retries: the last waits the 60 s cap, no more (the pending age bounds it)."""
    assert app.tasks[PROCESS_WEBHOOK_TASK].max_retries == PROCESS_MAX_RETRIES == len(INBOX_SCHEDULE)


@pytest.mark.parametrize("task_name", [DEBIT_TASK, REFUND_TASK])
def test_usage_requests_back_off_1_2_4_up_to_30_seconds(task_name, highest_jitter):
    assert _countdowns(task_name, len(USAGE_SCHEDULE)) == USAGE_SCHEDULE


def test_the_wait_for_a_user_follows_the_same_steps_without_jitter():
    assert [retry_delay(n) for n in range(len(USAGE_SCHEDULE))] == USAGE_SCHEDULE
    assert waited(3) == 1 + 2 + 4


@pytest.mark.parametrize("task_name", [PROCESS_WEBHOOK_TASK, DEBIT_TASK])
def test_the_jitter_reaches_down_to_no_wait(task_name, lowest_jitter):
    """Full jitter: copies retried together spread over the whole step instead of colliding."""
    assert _countdowns(task_name, 4) == [0, 0, 0, 0]
