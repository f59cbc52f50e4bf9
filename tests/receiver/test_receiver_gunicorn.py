"""The receiver as production runs it: the Procfile's `web` command (gunicorn, several worker
processes) over real HTTP: chunked bodies, metrics added up across workers, logging."""

from __future__ import annotations

import http.client
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ASAAS_TEST_TOKEN, CLERK_TEST_SECRET
from tests.support.receiver_support import (
    asaas_headers,
    clerk_headers,
    inbox_rows,
    json_body,
    payload_bytes,
    queued_tasks,
    unused_port,
)
from tests.support.servers import PROJECT_ROOT

LIMIT = 4096
WORKERS = 2
BODY_TIMEOUT = 1  # seconds a body may take to arrive (BODY_READ_TIMEOUT_SECONDS)


def _procfile_web_command() -> list[str]:
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        if name.strip() == "web":
            return shlex.split(command)
    raise AssertionError("the Procfile has no web process")


class Server:
    def __init__(self, port: int, metrics_port: int, log_path: Path, process: subprocess.Popen) -> None:
        self.port = port
        self.metrics_port = metrics_port
        self.log_path = log_path
        self.process = process

    def request(self, method: str, path: str, body=None, headers=None, *, chunked: bool = False, port=None):
        connection = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict]:
        """The log's lines, each a JSON object (a line being written is left out)."""
        found = []
        for line in self.log().splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found


@pytest.fixture(scope="module")
def server(settings, redis_urls, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gunicorn")
    port, metrics_port = unused_port(), unused_port()
    env = {
        **os.environ,  # DATABASE_URL and the webhook secrets: the test run's (see conftest)
        # The scratch Redis database: a session-wide celery worker may be consuming the broker's.
        "REDIS_URL": redis_urls["scratch"],
        "PORT": str(port),
        "WEB_CONCURRENCY": str(WORKERS),
        "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
        "MAX_BODY_BYTES": str(LIMIT),
        "RECEIVER_METRICS_PORT": str(metrics_port),
        "BODY_READ_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        "LOG_FORMAT": "json",  # as in production: one JSON object per line
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log_path = folder / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            _procfile_web_command(), env=env, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    running = Server(port, metrics_port, log_path, process)
    try:
        _wait_until_up(process, running)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(process: subprocess.Popen, server: Server, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {process.returncode}:\n{server.log()}")
        try:
            if server.request("GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"gunicorn did not answer in time:\n{server.log()}")


def test_deliveries_over_http_are_accepted(server, session_factory, redis_client):
    body = payload_bytes("clerk/user.created")
    status, answer = server.request("POST", "/webhooks/clerk", body, clerk_headers(body))
    assert status == 200, answer
    [row] = inbox_rows(session_factory)
    assert json.loads(answer) == {"status": "accepted", "inbox_id": row.id}
    assert [task.kwargs for task in queued_tasks(redis_client)] == [{"inbox_id": row.id}]


def test_a_chunked_body_is_read_whole(server, session_factory, redis_client):
    body = json_body({"id": "evt_chunked&1", "event": "PAYMENT_CREATED", "pad": "x" * (LIMIT - 200)})
    chunks = (body[i : i + 500] for i in range(0, len(body), 500))
    status, answer = server.request("POST", "/webhooks/asaas", chunks, asaas_headers(), chunked=True)
    assert status == 200, answer
    [row] = inbox_rows(session_factory)
    assert row.payload == json.loads(body)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_oversized_body_is_a_413(server, session_factory, redis_client, chunked):
    body = json_body({"id": "evt_big&1", "event": "PAYMENT_CREATED", "pad": "x" * LIMIT})
    payload = (body[i : i + 1000] for i in range(0, len(body), 1000)) if chunked else body
    status, answer = server.request("POST", "/webhooks/asaas", payload, asaas_headers(), chunked=chunked)
    assert status == 413
    assert json.loads(answer)["error"] == "too_large"
    assert inbox_rows(session_factory) == []


def test_gunicorn_drops_a_token_header_spelt_with_underscores(server, session_factory, redis_client):
    # "asaas_access_token" and "asaas-access-token" are one name to WSGI; gunicorn drops the
    # underscore spelling (header_map="drop") so a proxy's check cannot be bypassed with it.
    body = payload_bytes("asaas/PAYMENT_CREATED")
    status, _ = server.request("POST", "/webhooks/asaas", body, {"asaas_access_token": ASAAS_TEST_TOKEN})
    assert status == 401


def test_metrics_add_up_every_worker_process(server, session_factory, redis_client):
    def deliver(number: int) -> int:
        body = json_body({"id": f"evt_metrics&{number}", "event": "PAYMENT_CREATED"})
        return server.request("POST", "/webhooks/asaas", body, asaas_headers())[0]

    before = _accepted(server)
    sent = 0
    # Concurrent batches until more than one worker process has served some (a worker still
    # loading the app right after start-up serves none).
    while len(_accepting_pids(server)) < WORKERS and sent < 400:
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(deliver, range(sent, sent + 40))) == {200}
        sent += 40
    assert len(_accepting_pids(server)) == WORKERS
    # Without multiprocess mode a scrape would show the count of the one worker answering it.
    assert _accepted(server) - before == sent


def _accepting_pids(server: Server) -> set[int]:
    return {
        event["pid"]
        for event in server.events()
        if event.get("logger") == "gunicorn.access" and '"POST /webhooks/asaas" 200' in event["event"]
    }


def _accepted(server: Server) -> float:
    status, text = server.request("GET", "/metrics", port=server.metrics_port)
    assert status == 200
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            if sample.name == "webhook_deliveries_total" and sample.labels == {
                "source": "asaas",
                "outcome": "accepted",
            }:
                return sample.value
    raise AssertionError("no webhook_deliveries_total{source=asaas,outcome=accepted} sample")


def _access_lines_once_logged(server: Server, *requests: str, timeout: float = 10) -> list[dict]:
    """The access log's lines as soon as it has one for each of `requests`, e.g.
    '"POST /webhooks/clerk" 200' (polled until `timeout`: it is written after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        access = [event for event in server.events() if event.get("logger") == "gunicorn.access"]
        if missing := [r for r in requests if not any(r in event["event"] for event in access)]:
            assert time.monotonic() < deadline, f"{missing} never reached the log:\n{server.log()[-3000:]}"
            time.sleep(0.05)
            continue
        return access


def test_the_log_names_events_and_holds_no_secret(server, session_factory, redis_client):
    body = payload_bytes("clerk/user.created")
    headers = clerk_headers(body)
    server.request("POST", "/webhooks/clerk", body, headers)
    server.request("POST", "/webhooks/clerk", body, {**headers, "svix-signature": "v1,Zm9yZ2Vk"})
    server.request("POST", "/webhooks/asaas", body, asaas_headers("a-wrong-token-value"))
    access = _access_lines_once_logged(
        server, '"POST /webhooks/clerk" 200', '"POST /webhooks/clerk" 401', '"POST /webhooks/asaas" 401'
    )
    log, events = server.log(), server.events()
    row = next(row for row in inbox_rows(session_factory) if row.external_id == headers["svix-id"])
    # The request's line (the access log's) carries the event: inbox id, source, provider event
    # id, type, outcome; and no query string or header.
    [accepted] = [e for e in access if e.get("provider_event_id") == headers["svix-id"]]
    assert '"POST /webhooks/clerk" 200' in accepted["event"]
    assert {key: accepted.get(key) for key in ("inbox_id", "source", "provider_event_id", "event_type", "outcome")} == {
        "inbox_id": row.id,
        "source": "clerk",
        "provider_event_id": headers["svix-id"],
        "event_type": "user.created",
        "outcome": "accepted",
    }
    assert accepted["level"] == "info"
    rejected = [e for e in events if e["event"].startswith("webhook.rejected source=clerk")]
    assert ("bad_signature", "warning") in {(e["outcome"], e["level"]) for e in rejected}
    for secret in (
        CLERK_TEST_SECRET,
        CLERK_TEST_SECRET.removeprefix("whsec_"),
        ASAAS_TEST_TOKEN,
        "a-wrong-token-value",
        headers["svix-signature"],
        "Zm9yZ2Vk",
        "example@example.org",  # the payload's content: never logged
    ):
        assert secret not in log


def test_metrics_are_served_on_their_own_loopback_port_only(server, session_factory, redis_client):
    status, body = server.request("GET", "/metrics")
    assert status == 404 and json.loads(body)["error"] == "not_found"  # not on the webhook port
    status, body = server.request("GET", "/metrics", port=server.metrics_port)
    assert status == 200 and b"webhook_deliveries_total" in body
    listening = {
        (connection.laddr.ip, connection.laddr.port)
        for connection in psutil.Process(server.process.pid).net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN
    }
    assert ("127.0.0.1", server.metrics_port) in listening  # the master serves them, on loopback
    assert ("0.0.0.0", server.metrics_port) not in listening


def test_a_body_that_stops_arriving_is_a_408_and_frees_the_worker(server, session_factory, redis_client):
    """A client that sends its headers and part of its body, then nothing: the worker answers
    408 after BODY_READ_TIMEOUT_SECONDS instead of waiting for it."""
    body = payload_bytes("asaas/PAYMENT_CREATED")
    head = (
        "POST /webhooks/asaas HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"asaas-access-token: {ASAAS_TEST_TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as slow:
        slow.sendall(head.encode() + body[:10])  # ... and the rest never comes
        received = b""
        while chunk := slow.recv(65536):  # the server closes the connection after its answer
            received += chunk
    answer = received.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 408"), answer
    assert '"error":"timeout"' in answer.replace(" ", "")
    assert inbox_rows(session_factory) == []
    assert server.request("GET", "/healthz")[0] == 200
