"""`/inbox` (the deliveries, filtered, newest first, keyset paging) and `/inbox/<id>` (one
delivery: payload, attempts, what it changed, its replays). The queries are the CLI's
`inbox list` and `inbox show`."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, abort, render_template, request, url_for

from ops.actions.replay import replays_of
from ops.console.inbox_filters import SOURCES, STATUSES, parse_filters
from ops.console.resources import resources
from ops.console.validation import row_id
from ops.queries.inbox_rows import effects_of, get_row, inbox_page
from worker.inbox.replay import REPLAYABLE

bp = Blueprint("inbox", __name__)

# A pending row's page reloads itself (no script needed) until the row reaches its outcome.
PENDING_REFRESH_SECONDS = 2


@bp.get("/inbox")
def inbox_list() -> str:
    filters = parse_filters(request.args)
    with resources().sessions() as session:
        page = inbox_page(session, filters.query)
        return render_template(
            "inbox_list.html",
            rows=page.rows,
            given=filters.given,
            statuses=STATUSES,
            sources=SOURCES,
            older=_link(filters.given, before=page.older) if page.older else None,
            newer=_link(filters.given, after=page.newer) if page.newer else None,
        )


def _link(given: dict[str, list[str]], **cursor: int) -> str:
    # url_for repeats a parameter for each value of a list (status=a&status=b).
    arguments: dict[str, Any] = {**given, **cursor}
    return url_for("inbox.inbox_list", **arguments)


@bp.get("/inbox/<int:inbox_id>")
def inbox_row(inbox_id: int) -> str:
    with resources().sessions() as session:
        row = get_row(session, row_id(inbox_id))
        if row is None:
            abort(404, description=f"No inbox row {inbox_id}.")
        return render_template(
            "inbox_row.html",
            row=row,
            payload=json.dumps(row.payload, indent=2, ensure_ascii=False),
            effects=effects_of(session, row),
            replays=replays_of(session, row.id),
            # By id, any row but a pending one may be replayed (`inbox replay ID`).
            replayable=row.status != "pending",
            waits_for_a_person=row.status in {status.value for status in REPLAYABLE},
            refresh=PENDING_REFRESH_SECONDS if row.status == "pending" else None,
        )
