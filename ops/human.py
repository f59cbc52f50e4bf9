"""Times and ages as a person reads them, for the CLI's tables and the console's pages alike."""

from __future__ import annotations

from datetime import UTC, datetime


def age(seconds: float | None) -> str:
    """'3d', '4h', '12m', '40s': how long, for a person."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if whole >= size:
            return f"{whole // size}{unit}"
    return f"{max(whole, 0)}s"


def when(moment: datetime | None) -> str:
    """`2026-11-28 10:00:00` in UTC (a naive time is Prisma's, already UTC); '-' for none."""
    if moment is None:
        return "-"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")
