"""`/audit`: the audit log, newest first (keyset paging), as `pedro-webhooks audit` prints it."""

from __future__ import annotations

from flask import Blueprint, render_template, request, url_for

from ops.audit import recent_entries
from ops.console.resources import resources
from ops.console.validation import MAX_ID, whole_number

bp = Blueprint("audit", __name__)

PER_PAGE = 50


@bp.get("/audit")
def audit_log() -> str:
    before = whole_number("before", request.args.get("before"), low=1, high=MAX_ID)
    with resources().sessions() as session:
        entries = recent_entries(session, limit=PER_PAGE + 1, before_id=before)
        shown = entries[:PER_PAGE]
        older = url_for("audit.audit_log", before=shown[-1].id) if len(entries) > PER_PAGE else None
        return render_template("audit.html", entries=shown, older=older)
