"""Provider times, as naive UTC with millisecond precision (what TIMESTAMP(3) columns hold).

Asaas writes local São Paulo time without an offset: the envelope's `dateCreated` as
`YYYY-MM-DD HH:MM:SS`, payment objects' dates as `YYYY-MM-DD` and subscription objects' as
`dd/MM/yyyy`. Clerk writes epoch integers: milliseconds as documented, seconds in some examples.

Each parser answers None for a value it cannot read, including one out of datetime's range (a
Clerk timestamp of 10**20, an Asaas date in the year 9999 that São Paulo's offset pushes past
it): the caller falls back to when the delivery was received.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

SAO_PAULO = ZoneInfo("America/Sao_Paulo")
_ASAAS_DATE_FORMATS = ("%Y-%m-%d", "%d/%m/%Y")  # payment objects, subscription objects
# Epoch values below this are seconds: in milliseconds it would be March 1973.
_EPOCH_SECONDS_BELOW = 100_000_000_000


def naive_utc(moment: datetime) -> datetime:
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


def asaas_timestamp(value: object) -> datetime | None:
    """An envelope `dateCreated` (São Paulo wall time) in UTC, or None if absent or malformed."""
    if not isinstance(value, str):
        return None
    try:
        local = datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S")
        return naive_utc(local.replace(tzinfo=SAO_PAULO))
    except (ValueError, OverflowError):
        return None


def asaas_date(value: object) -> datetime | None:
    """A payment (`YYYY-MM-DD`) or subscription (`dd/MM/yyyy`) date: São Paulo midnight, in UTC."""
    if not isinstance(value, str):
        return None
    for date_format in _ASAAS_DATE_FORMATS:
        try:
            local = datetime.strptime(value.strip(), date_format)
        except ValueError:
            continue
        try:
            return naive_utc(local.replace(tzinfo=SAO_PAULO))
        except OverflowError:
            return None
    return None


def clerk_epoch(value: object) -> datetime | None:
    """A Clerk epoch integer (milliseconds, or seconds in some examples) in UTC, or None if absent,
    malformed or out of range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    try:
        seconds = value if value < _EPOCH_SECONDS_BELOW else value / 1000
        return naive_utc(datetime.fromtimestamp(seconds, UTC))
    except (OverflowError, OSError, ValueError):  # beyond a float, time_t or the year 9999; NaN
        return None
