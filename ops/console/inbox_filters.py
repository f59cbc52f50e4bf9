"""The /inbox page's query string, as an `InboxQuery` (the CLI's `inbox list` takes the same).

Every parameter is optional; an empty one means "any". A value that cannot be a filter (an
unknown status, a date that is not one, an id beyond bigint) is a 400 that names it.
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.datastructures import MultiDict

from models.inbox import InboxStatus, Source
from ops.console.validation import MAX_ID, choice, moment, text_value, whole_number
from ops.queries.inbox_rows import InboxQuery

STATUSES = [status.value for status in InboxStatus]
SOURCES = [source.value for source in Source]
# The filters a page link carries on (the cursors and the page size are added per link).
FILTER_NAMES = ("source", "type", "status", "received_from", "received_to", "event_id", "user")
PER_PAGE = 50
MAX_PER_PAGE = 200


@dataclass(frozen=True)
class Filters:
    query: InboxQuery
    given: dict[str, list[str]]  # the filters as sent (non-empty values), to fill the form and links


def parse_filters(args: MultiDict[str, str] | dict[str, str]) -> Filters:
    values = args if isinstance(args, MultiDict) else MultiDict(args)
    statuses = tuple(choice("status", value, STATUSES) for value in _many(values, "status"))
    sources = tuple(choice("source", value, SOURCES) for value in _many(values, "source"))
    types = tuple(text_value("type", value, max_length=100) or "" for value in _many(values, "type"))
    query = InboxQuery(
        statuses=statuses,
        sources=sources,
        event_types=types,
        clerk_user_id=text_value("user", values.get("user"), max_length=200),
        since=moment("received_from", values.get("received_from")),
        until=moment("received_to", values.get("received_to")),
        external_id=text_value("event_id", values.get("event_id"), max_length=500),
        limit=whole_number("per_page", values.get("per_page"), low=1, high=MAX_PER_PAGE) or PER_PAGE,
        before_id=whole_number("before", values.get("before"), low=1, high=MAX_ID),
        after_id=whole_number("after", values.get("after"), low=0, high=MAX_ID),
    )
    given = {name: _many(values, name) for name in FILTER_NAMES if _many(values, name)}
    return Filters(query, given)


def _many(values: MultiDict[str, str], name: str) -> list[str]:
    return [value.strip() for value in values.getlist(name) if value.strip()]
