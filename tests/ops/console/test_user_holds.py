"""A user's console page shows the credit holds still open, and flags one past its expiry."""

from __future__ import annotations

import time

from tests.ops.console.conftest import READER
from tests.support.usage import capture, hold, make_user


def _open_holds_section(page: str) -> str:
    assert 'id="open-holds"' in page, "the page has no open-holds section"
    return page.split('id="open-holds"', 1)[1].split("</table>", 1)[0]


def test_the_user_page_lists_open_holds_and_flags_overdue_ones(client, session_factory):
    make_user(session_factory)
    hold(session_factory, "render-7", credits=30, expires_in=600)
    hold(session_factory, "render-8", credits=5, expires_in=0.1)
    hold(session_factory, "render-9", credits=10)
    capture(session_factory, "render-9", 4)
    time.sleep(0.2)  # render-8 is past its expiry; no beat runs here, so it stays open

    page = client.get("/users/user_a", auth=READER)
    assert page.status_code == 200
    assert "35 more held by 2 open hold(s)" in page.text
    section = _open_holds_section(page.text)
    assert "render-7" in section and "render-8" in section and "render-9" not in section
    rows = section.split("<tr")[2:]
    assert [("overdue" in row) for row in rows] == [False, True]


def test_a_user_without_open_holds_has_no_section(client, session_factory):
    make_user(session_factory)
    hold(session_factory, "render-1", credits=10)
    capture(session_factory, "render-1", 10)
    page = client.get("/users/user_a", auth=READER)
    assert page.status_code == 200 and 'id="open-holds"' not in page.text and "held by" not in page.text
