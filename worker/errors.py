"""Which failures a task retries, and which end it at once."""

from __future__ import annotations

import kombu.exceptions
import redis.exceptions
from sqlalchemy import exc as sa_exc


class PermanentError(Exception):
    """A payload that can never succeed (a required field is missing or malformed).

    The inbox row ends `failed` at once, with this message as its `last_error`.
    """


class LedgerKeyConflict(Exception):
    """A ledger entry with this idempotency key was committed concurrently.

    The caller's own idempotency check raced another transaction; the whole transaction rolls
    back and the retry finds the committed entry.
    """


class MissingBalance(LookupError):
    """A credit change named a `CreditBalance` that does not exist (or no longer does): a bug or
    a row deleted under the service, never retried."""


# Connection loss, serialization failures, deadlocks and lock timeouts (psycopg raises these as
# OperationalError subclasses), unique-key races between concurrent transactions, broker hiccups.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.IntegrityError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
    LedgerKeyConflict,
)


def describe(error: BaseException) -> str:
    """A one-line description for `last_error`; SQL parameters are already hidden by the engine."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:2000]
