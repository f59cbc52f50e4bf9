"""Flower, as the Procfile runs it (with FLOWER_BASIC_AUTH), against the test broker and a real
worker: its API and its pages in a real headless Chromium show the worker and a processed task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ops.local.servers import free_port
from tests.support.inbox import inbox_row, payload, store
from tests.support.servers import PROJECT_ROOT, procfile_command
from tests.support.tools import require_tool
from tests.support.usage import credits_client, make_user

USER, PASSWORD = "ops", "flower-test-password"
# As this machine runs Chromium: no sandbox as root, no background traffic to the (closed) network.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def flower(celery_worker, tmp_path_factory):
    """The Procfile's `flower` on a free port; yields its base URL once it answers."""
    port = free_port()
    env = {
        **os.environ,
        "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}",
        "FLOWER_PORT": str(port),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = tmp_path_factory.mktemp("flower") / "flower.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # through the shell, as honcho runs it; a group of its own to stop
            procfile_command("flower"),
            shell=True,
            env=env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _poll(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"Flower never showed {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def processed_task(flower, celery_worker, settings, engine):
    """A webhook processed by the worker while Flower watches; (task id, worker name)."""
    from models.db import make_session_factory
    from tests.support.databases import truncate_all

    factory = make_session_factory(engine)
    auth = (USER, PASSWORD)
    # Flower knows the worker (its events or a live inspect) before the task is sent.
    _poll(
        lambda: celery_worker.name in httpx.get(f"{flower}/api/workers?refresh=1", auth=auth, timeout=20).json(),
        "the worker",
    )
    inbox_id = store(factory, "clerk", payload("clerk/user.created"))
    result = celery_worker.producer.send_task("webhooks.process", kwargs={"inbox_id": inbox_id})
    assert result.get(timeout=30) == {"inbox_id": inbox_id, "status": "processed"}
    assert inbox_row(factory, inbox_id).status == "processed"
    # And debits: each batch of them shows as one `usage.batch` task.
    make_user(factory, "user_flower")
    client = credits_client(celery_worker.producer.conf.broker_url)
    try:
        sent = [client.send_debit("user_flower", "AI_TEXT_CHAT", f"flower-{n}", cost=1) for n in range(5)]
        assert {pending.answer()["status"] for pending in sent} == {"applied"}
    finally:
        client.close()
    yield result.id, celery_worker.name
    truncate_all(engine, settings.service_schema)


def test_flower_api_needs_the_login_and_shows_the_worker_and_the_processed_task(flower, processed_task):
    task_id, worker_name = processed_task
    assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401  # no credentials
    assert httpx.get(f"{flower}/api/workers", auth=(USER, "wrong"), timeout=10).status_code == 401
    auth = (USER, PASSWORD)
    workers = httpx.get(f"{flower}/api/workers", auth=auth, timeout=20).json()
    assert worker_name in workers
    assert {"webhooks", "usage"} <= {queue["name"] for queue in workers[worker_name]["active_queues"]}
    task = _poll(
        lambda: (
            httpx.get(f"{flower}/api/task/info/{task_id}", auth=auth, timeout=10).json()
            if httpx.get(f"{flower}/api/task/info/{task_id}", auth=auth, timeout=10).status_code == 200
            else None
        ),
        "the task",
    )
    assert (task["name"], task["state"], task["worker"]) == ("webhooks.process", "SUCCESS", worker_name)
    listed = httpx.get(f"{flower}/api/tasks", params={"state": "SUCCESS"}, auth=auth, timeout=10).json()
    assert task_id in listed
    batches = _poll(lambda: _batches(flower, auth), "a debit batch")
    assert sum(int(batch["args"].strip("(,)")) for batch in batches) == 5  # every debit in some batch
    assert all("'applied'" in batch["result"] and batch["worker"] == worker_name for batch in batches)
    assert all(batch["runtime"] is not None for batch in batches)


def _batches(flower: str, auth: tuple[str, str]) -> list[dict]:
    tasks = httpx.get(f"{flower}/api/tasks", params={"taskname": "usage.batch"}, auth=auth, timeout=10).json()
    return [task for task in tasks.values() if task["state"] == "SUCCESS"]


def test_flower_pages_show_the_worker_and_the_task_in_a_real_browser(flower, processed_task, tmp_path):
    from playwright.sync_api import sync_playwright

    task_id, worker_name = processed_task
    executable = require_tool("chromium", "the Flower page test drives Debian's Chromium (.ci/run installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
            page = context.new_page()
            page.goto(f"{flower}/workers", wait_until="networkidle")
            shown = page.get_by_text(worker_name).first
            shown.wait_for(timeout=30_000)
            # text_content: the DOM's text (inner_text follows the layout, which may break a long name)
            assert shown.is_visible() and (shown.text_content() or "").strip() == worker_name
            worker_row = page.locator("tr", has=shown)
            assert "Online" in worker_row.inner_text()
            page.screenshot(path=str(tmp_path / "workers.png"))

            page.goto(f"{flower}/tasks", wait_until="networkidle")
            page.get_by_text(task_id).first.wait_for(timeout=30_000)
            row = page.locator("tr", has_text=task_id).first
            assert row.is_visible()
            assert "webhooks.process" in (row.text_content() or "") and "SUCCESS" in (row.text_content() or "")
            page.screenshot(path=str(tmp_path / "tasks.png"))

            page.goto(f"{flower}/task/{task_id}", wait_until="networkidle")
            body = page.locator("body").text_content() or ""
            assert "SUCCESS" in body and worker_name in body

            page.goto(f"{flower}/tasks", wait_until="networkidle")
            batch = page.locator("tr", has_text="usage.batch").first
            batch.wait_for(timeout=30_000)
            assert "SUCCESS" in (batch.text_content() or "")
            [shown_batch, *_] = _batches(flower, (USER, PASSWORD))  # its own page: its size and outcomes
            page.goto(f"{flower}/task/{shown_batch['uuid']}", wait_until="networkidle")
            body = page.locator("body").text_content() or ""
            assert "usage.batch" in body and "'applied'" in body and "usage.debit" in body
            page.screenshot(path=str(tmp_path / "debit-batch.png"))
        finally:
            browser.close()
