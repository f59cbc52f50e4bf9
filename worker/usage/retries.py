"""When a usage request is tried again: transient errors back off 1, 2, 4 ... 30 s, and a request
for a user (or a refund of a debit) not known yet waits the same way for about `wait_for_user`
seconds (USER_WAIT_SECONDS by default), never past the request's deadline."""

from __future__ import annotations

import time
from typing import TypedDict

from worker.errors import TRANSIENT_ERRORS

USER_WAIT_SECONDS = 300
MAX_USER_WAIT_SECONDS = 900
MAX_RETRY_DELAY = 30


class UsageTaskOptions(TypedDict):
    autoretry_for: tuple[type[BaseException], ...]
    max_retries: int
    retry_backoff: int
    retry_backoff_max: int
    retry_jitter: bool


# Every usage task is declared with these.
TASK_OPTIONS: UsageTaskOptions = {
    "autoretry_for": TRANSIENT_ERRORS,
    # Enough for the longest wait for a user (about 34 tries of up to 30 s for 900 s).
    "max_retries": 40,
    "retry_backoff": 1,
    "retry_backoff_max": MAX_RETRY_DELAY,
    "retry_jitter": True,
}


def retry_delay(tries: int) -> int:
    return min(2**tries, MAX_RETRY_DELAY)


def waited(tries: int) -> int:
    """Seconds spent in countdowns before try number `tries` (0-based)."""
    return sum(retry_delay(n) for n in range(tries))


def user_wait_over(tries: int, wait_for_user: float) -> bool:
    """Whether try number `tries` (0-based) is the last one a missing user may be waited for."""
    return waited(tries) >= min(max(wait_for_user, 0), MAX_USER_WAIT_SECONDS)


def user_wait_countdown(tries: int, not_after: float | None) -> float:
    """How long try number `tries` waits before the next, never past the deadline `not_after`
    (the try at the deadline answers `expired`, or its message expires)."""
    countdown: float = retry_delay(tries)
    if not_after is not None:
        countdown = min(countdown, max(not_after - time.time(), 0))
    return countdown
