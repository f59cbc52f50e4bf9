"""What a client sends, checked before it reaches a query: anything else is a 400 or a 404.

PostgreSQL's text cannot hold a NUL character and its ids are 64-bit: a value that breaks
either would be a database error (a 500), so it is refused here with a message that says why.
"""

from __future__ import annotations

from datetime import UTC, datetime

from werkzeug.exceptions import BadRequest, NotFound

MAX_ID = 2**63 - 1  # bigint


def text_value(name: str, value: str | None, *, max_length: int) -> str | None:
    """Stripped; None when empty. 400 when too long or holding a NUL character."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > max_length:
        raise BadRequest(f"{name} is longer than {max_length} characters")
    if "\x00" in value:
        raise BadRequest(f"{name} holds a NUL character")
    return value


def choice(name: str, value: str, allowed: list[str]) -> str:
    if value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}")
    return value


def whole_number(name: str, value: str | None, *, low: int, high: int) -> int | None:
    text = text_value(name, value, max_length=25)
    if text is None:
        return None
    try:
        number = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not low <= number <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return number


def moment(name: str, value: str | None) -> datetime | None:
    """An ISO date or date and time (the form's datetime-local), UTC unless it names a zone."""
    text = text_value(name, value, max_length=40)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name} must be a date and time like 2026-11-28T10:00 (UTC)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def row_id(inbox_id: int) -> int:
    """A path's id: beyond bigint, there is no such row."""
    if not 1 <= inbox_id <= MAX_ID:
        raise NotFound(f"no inbox row {inbox_id}")
    return inbox_id


def clerk_id(value: str) -> str:
    checked = text_value("clerk user id", value, max_length=200)
    if checked is None:
        raise NotFound("no user")
    return checked
