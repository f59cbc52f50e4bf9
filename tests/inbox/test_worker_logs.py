"""The worker's log as production reads it (LOG_FORMAT=json): every line about an event carries
its inbox id, source, provider event id, type and task id, the last one its outcome; nothing
secret and no payload."""

from __future__ import annotations

import json
import time
import uuid

from tests.conftest import ASAAS_TEST_TOKEN, CLERK_TEST_SECRET
from tests.support.celery_worker import WorkerProcess
from tests.support.inbox import inbox_row, payload, store


def _events(path) -> list[dict]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue  # Celery's banner and warnings before logging is set up
    return lines


def test_every_line_about_an_event_carries_it_and_nothing_secret(settings, session_factory, producer, tmp_path):
    queue = f"logs-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    body = payload("clerk/user.created")
    inbox_id = store(session_factory, "clerk", body, external_id="msg_logtest")
    worker = WorkerProcess(
        producer, queues=queue, concurrency=1, env={"LOG_FORMAT": "json"}, loglevel="INFO", output=log
    )
    worker.start()
    try:
        result = producer.send_task("webhooks.process", kwargs={"inbox_id": inbox_id}, queue=queue)
        assert result.get(timeout=30) == {"inbox_id": inbox_id, "status": "processed"}
        deadline = time.monotonic() + 10
        while not any(e.get("event") == "task.finished" for e in _events(log)):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
    finally:
        worker.stop()
    assert inbox_row(session_factory, inbox_id).status == "processed"

    about_it = [e for e in _events(log) if e.get("inbox_id") == inbox_id]
    assert len(about_it) >= 2, log.read_text()[-3000:]  # Celery's "succeeded" line and task.finished
    for event in about_it:
        assert event["task_id"] == result.id and event["task"] == "webhooks.process"
        assert (event["source"], event["provider_event_id"], event["event_type"]) == (
            "clerk",
            "msg_logtest",
            "user.created",
        )
        assert {"timestamp", "level", "logger", "pid"} <= event.keys()
    [finished] = [e for e in about_it if e["event"] == "task.finished"]
    assert (finished["outcome"], finished["level"]) == ("processed", "info")
    assert any(e["logger"].startswith("celery") and "succeeded" in e["event"] for e in about_it)

    text = log.read_text()
    email = body["data"]["email_addresses"][0]["email_address"]
    for secret in (CLERK_TEST_SECRET, ASAAS_TEST_TOKEN, email, settings.database_url.get_secret_value()):
        assert secret not in text


def test_redaction_of_secret_looking_fields_and_url_passwords():
    from models.logs import REDACTED, redact

    event = redact(
        None,
        "info",
        {
            "event": "connecting to postgresql://app:hunter2@db:5432/x",
            "svix_signature": "v1,abc",
            "asaas_token": "t",
            "payload": {"a": 1},
            "inbox_id": 7,
        },
    )
    assert event == {
        "event": "connecting to postgresql://app:***@db:5432/x",
        "svix_signature": REDACTED,
        "asaas_token": REDACTED,
        "payload": REDACTED,
        "inbox_id": 7,
    }


def test_a_json_line_carries_the_traceback_as_text():
    """A library's `exc_info=True` (Celery's "Unrecoverable error", say) must reach the JSON line
    as a readable traceback, not as the reprs of the exc_info tuple."""
    import io
    import logging

    from models.logs import formatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter("json"))
    logger = logging.getLogger(f"test-traceback-{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise AttributeError("'NoneType' object has no attribute 'hostname'")
    except AttributeError:
        logger.critical("Unrecoverable error", exc_info=True)
    line = json.loads(stream.getvalue())
    assert line["event"] == "Unrecoverable error"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "AttributeError: 'NoneType' object has no attribute 'hostname'" in line["exception"]
    assert "exc_info" not in line
