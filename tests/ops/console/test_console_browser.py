"""The console as the Procfile runs it (gunicorn), in Debian's Chromium: log in, search a
delivery by its provider id, open it, read its payload, replay it and see it processed; open the
user and see the balance chart drawn. A screenshot of each page is kept (the folder is printed):
CONSOLE_SCREENSHOTS_DIR, else the test's tmp_path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from models.inbox import WebhookInbox
from ops.actions.support import SupportRequest, change_credits
from ops.audit import Actor
from ops.local.servers import free_port
from tests.ops.cli.test_flower import CHROMIUM_ARGS
from tests.ops.console.conftest import LOGINS, OPERATOR
from tests.support.inbox import clerk_user_event, inbox_row, process, store
from tests.support.servers import PROJECT_ROOT, procfile_command
from tests.support.tools import require_tool

pytestmark = pytest.mark.celery_worker

USER = "user_2browserChart"
EVENT_ID = "msg_2browserSearch0001"
SERIES_COLOUR = (37, 99, 235)  # the balance line's stroke (static/balance_chart.js)


def _start_console(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(  # through the shell, as honcho runs it; a group of its own to stop
            procfile_command("console"),
            shell=True,
            env=env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _console_env(**changes: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CONSOLE_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **changes}


@pytest.fixture(scope="module")
def console(settings, celery_worker, tmp_path_factory) -> Iterator[str]:
    """The Procfile's `console` on a free port; yields its base URL once it answers."""
    port = free_port()
    env = _console_env(CONSOLE_BASIC_AUTH=LOGINS, CONSOLE_OPERATORS=OPERATOR[0], CONSOLE_PORT=str(port))
    log = tmp_path_factory.mktemp("console") / "console.log"
    process = _start_console(env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base, timeout=2).status_code == 401:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield base
    finally:
        _stop(process)
        assert OPERATOR[1] not in log.read_text()  # no password in its log


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({}, "CONSOLE_BASIC_AUTH (user:password) is not set: the console does not run without authentication"),
        ({"CONSOLE_BASIC_AUTH": "ana"}, "CONSOLE_BASIC_AUTH"),
        ({"CONSOLE_BASIC_AUTH": "ana:pw", "CONSOLE_OPERATORS": "bob"}, "CONSOLE_OPERATORS names ['bob']"),
    ],
)
def test_the_console_refuses_to_start_without_valid_logins(settings, changes, message):
    env = _console_env(CONSOLE_PORT=str(free_port()), **changes)
    result = subprocess.run(
        procfile_command("console"), shell=True, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    assert "pw" not in result.stderr.replace("password", "")


@pytest.fixture
def screenshots(tmp_path) -> Path:
    folder = Path(os.environ.get("CONSOLE_SCREENSHOTS_DIR") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {folder}")
    return folder


@pytest.fixture
def failed_delivery_of_a_user_with_history(session_factory) -> int:
    """USER with a ledger of several entries, and a `user.updated` of theirs left failed."""
    process(store(session_factory, "clerk", clerk_user_event("user.created", USER, 1, first_name="Bia")))
    for n, amount in enumerate((250, -120, 60, -90, 400)):
        request = SupportRequest(USER, amount, f"browser test {n}", f"browser-{n}")
        change_credits(session_factory, Actor.cli("tests"), request, max_amount=1000)
    inbox_id = store(
        session_factory, "clerk", clerk_user_event("user.updated", USER, 2, first_name="Beatriz"), external_id=EVENT_ID
    )
    with session_factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == inbox_id)
            .values(status="failed", attempts=4, crashes=4, last_error="runs died mid-task")
        )
    return inbox_id


def test_find_open_read_and_replay_a_delivery_then_see_the_users_chart(
    console, failed_delivery_of_a_user_with_history, session_factory, screenshots
):
    from playwright.sync_api import expect, sync_playwright

    inbox_id = failed_delivery_of_a_user_with_history
    chromium = require_tool("chromium", "the console's browser test drives Debian's Chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                http_credentials={"username": OPERATOR[0], "password": OPERATOR[1]},
                viewport={"width": 1400, "height": 1000},
            )
            page = context.new_page()
            page.goto(console, wait_until="load")
            assert page.get_by_role("heading", name="Alerts that would fire now").is_visible()
            assert "WebhookDeadLetters" in page.locator("ul.alerts").inner_text()  # the failed row
            page.screenshot(path=str(screenshots / "1-overview.png"), full_page=True)

            page.get_by_role("link", name="Deliveries").click()
            page.get_by_label("Provider event id").fill(EVENT_ID)
            page.get_by_role("button", name="Search").click()
            page.wait_for_url("**/inbox?**event_id=**")
            found = page.locator("table.rows tr", has_text=EVENT_ID)
            assert found.count() == 1 and "failed" in found.inner_text()
            page.screenshot(path=str(screenshots / "2-search-by-provider-id.png"), full_page=True)

            found.get_by_role("link", name=str(inbox_id)).click()
            page.wait_for_url(f"**/inbox/{inbox_id}")
            shown = json.loads(page.locator("#payload").text_content() or "")
            assert shown == inbox_row(session_factory, inbox_id).payload and shown["data"]["id"] == USER
            assert page.locator("#row-status").inner_text() == "failed"
            page.screenshot(path=str(screenshots / "3-delivery-failed.png"), full_page=True)

            page.get_by_role("button", name="Replay").click()
            page.get_by_text(f"Replayed: row {inbox_id} is back to pending").wait_for(timeout=10_000)
            # The page reloads itself while the row is pending, until the worker's outcome. (Locator
            # waits, not wait_for_function: the page's CSP forbids the eval that one uses.)
            expect(page.locator("#row-status")).to_have_text("processed", timeout=60_000)
            assert "put back to pending; now processed" in page.locator("body").inner_text()
            page.screenshot(path=str(screenshots / "4-delivery-replayed.png"), full_page=True)

            page.get_by_label("User").fill(USER)
            page.get_by_role("button", name="Open").click()
            page.wait_for_url(f"**/users/{USER}")
            page.wait_for_selector("#balance-chart canvas")
            page.wait_for_selector('#balance-chart[data-drawn="6"]')
            assert _pixels_of(page, SERIES_COLOUR) > 100, "the balance line is not drawn"
            assert "600 credits" in page.locator("#balance").inner_text()  # 100 + 250 - 120 + 60 - 90 + 400
            assert "= the ledger's sum" in page.locator("#balance").inner_text()
            page.screenshot(path=str(screenshots / "5-user-with-chart.png"), full_page=True)

            page.get_by_role("link", name="Audit log").click()
            assert "inbox.replay" in page.locator("table").inner_text()
            page.screenshot(path=str(screenshots / "6-audit-log.png"), full_page=True)
        finally:
            browser.close()
    assert sorted(path.name for path in screenshots.glob("*.png")) == [
        "1-overview.png",
        "2-search-by-provider-id.png",
        "3-delivery-failed.png",
        "4-delivery-replayed.png",
        "5-user-with-chart.png",
        "6-audit-log.png",
    ]


def _pixels_of(page, colour: tuple[int, int, int]) -> int:
    """How many pixels of the chart's canvas are (about) the given colour."""
    return page.evaluate(
        """([r, g, b]) => {
            const canvas = document.querySelector('#balance-chart canvas');
            const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
            let count = 0;
            for (let i = 0; i < data.length; i += 4) {
                if (Math.abs(data[i] - r) < 12 && Math.abs(data[i + 1] - g) < 12 && Math.abs(data[i + 2] - b) < 12
                    && data[i + 3] > 200) count++;
            }
            return count;
        }""",
        list(colour),
    )
