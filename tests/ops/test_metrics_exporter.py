"""The Procfile's `metrics` exporter: gauges read from PostgreSQL and Redis at scrape time, on a
private address, never the webhook port."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text, update

from messaging.celery_config import REFUSED_USAGE_MESSAGES
from messaging.fallback_store import STREAM as FALLBACK_STREAM
from models.inbox import WebhookInbox
from models.usage import UsageRequest
from ops.local.servers import free_port
from tests.support.billing import add_user, asaas_event
from tests.support.inbox import deliver, payload, store
from tests.support.servers import procfile_command
from tests.support.usage import hold, make_user, release


@pytest.fixture
def exporter(settings, redis_urls, tmp_path):
    """The Procfile's `metrics` process, on a free port, reading the scratch Redis database as its
    broker (so the test owns the queue lengths)."""
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_urls["scratch"],
        "OPS_METRICS_PORT": str(port),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = tmp_path / "metrics.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            shlex.split(procfile_command("metrics")), env=env, cwd=tmp_path, stdout=out, stderr=out
        )
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url, timeout=2)
            break
        except httpx.TransportError:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
    yield url
    process.send_signal(signal.SIGTERM)
    process.wait(20)
    assert process.returncode == 0, log.read_text()


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _value(samples, name: str, **labels: str) -> float:
    return samples[(f"pedro_webhooks_{name}", tuple(sorted(labels.items())))]


def test_gauges_show_the_inbox_the_queues_and_debit_outcomes(exporter, session_factory, redis_client):
    add_user(session_factory)  # processed
    deliver(session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED"))  # needs_attention: no Plan
    deliver(session_factory, "clerk", {"type": "user.created", "data": {}})  # failed
    deliver(
        session_factory, "asaas", asaas_event("PAYMENT_CONFIRMED", externalReference="user_x", id="p2", event_id="e2")
    )
    old_pending = store(session_factory, "clerk", payload("clerk/user.deleted"))
    store(session_factory, "asaas", asaas_event("PAYMENT_CREATED"))
    with session_factory.begin() as session:
        session.execute(
            update(WebhookInbox)
            .where(WebhookInbox.id == old_pending)
            .values(received_at=text("now() - interval '10 minutes'"))
        )
        for key, status in [("a", "applied"), ("b", "applied"), ("c", "insufficient_credits")]:
            session.add(
                UsageRequest(idempotency_key=key, kind="debit", clerk_user_id="u", status=status, request={}, result={})
            )
    for _ in range(3):
        redis_client.lpush("webhooks", b"{}")
    redis_client.lpush("usage\x06\x163", b"{}")  # a message sent with a priority: its own list
    redis_client.hincrby(REFUSED_USAGE_MESSAGES, "billing", 2)  # as the workers count refusals
    seconds, _ = redis_client.time()  # two deliveries queued while PostgreSQL was down, one 5 minutes ago
    redis_client.xadd(FALLBACK_STREAM, {"f": "v"}, id=f"{(seconds - 300) * 1000}-0")
    redis_client.xadd(FALLBACK_STREAM, {"f": "v"})

    samples = _scrape(exporter)
    assert _value(samples, "database_up") == 1 and _value(samples, "redis_up") == 1
    rows = {
        status: _value(samples, "inbox_rows", source="clerk", status=status)
        for status in ("pending", "processed", "failed", "ignored", "unmatched", "needs_attention")
    }
    assert rows == {"pending": 1, "processed": 1, "failed": 1, "ignored": 0, "unmatched": 0, "needs_attention": 0}
    assert _value(samples, "inbox_rows", source="asaas", status="needs_attention") == 1
    assert _value(samples, "inbox_rows", source="asaas", status="unmatched") == 1
    assert _value(samples, "inbox_rows", source="asaas", status="pending") == 1
    assert 600 <= _value(samples, "inbox_oldest_age_seconds", source="clerk", status="pending") < 900
    assert _value(samples, "inbox_oldest_age_seconds", source="asaas", status="pending") < 120
    assert _value(samples, "inbox_oldest_age_seconds", source="asaas", status="unmatched") < 120
    assert ("pedro_webhooks_inbox_oldest_age_seconds", (("source", "clerk"), ("status", "processed"))) not in samples
    assert _value(samples, "queue_length", queue="webhooks") == 3
    assert _value(samples, "queue_length", queue="usage") == 1
    assert _value(samples, "usage_requests", kind="debit", status="applied") == 2
    assert _value(samples, "usage_requests", kind="debit", status="insufficient_credits") == 1
    assert _value(samples, "refused_usage_messages", service="billing") == 2
    assert _value(samples, "fallback_entries") == 2
    assert 300 <= _value(samples, "fallback_oldest_age_seconds") < 420

    redis_client.delete("webhooks", FALLBACK_STREAM)  # read at scrape time: nothing is cached
    samples = _scrape(exporter)
    assert _value(samples, "queue_length", queue="webhooks") == 0
    assert (_value(samples, "fallback_entries"), _value(samples, "fallback_oldest_age_seconds")) == (0, 0)


def test_the_exporter_binds_the_loopback_address_by_default(exporter):
    port = int(exporter.split(":")[2].split("/")[0])
    listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    local_addresses = [line.split()[3] for line in listening.splitlines()]  # State Recv-Q Send-Q Local Peer
    assert local_addresses == [f"127.0.0.1:{port}"]


def test_a_server_lost_after_start_up_is_a_zero_up_gauge_not_a_failed_scrape(settings, tmp_path):
    """Redis stops after the exporter started: the scrape still answers, redis_up 0."""
    redis_port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(redis_port), "--save", "", "--bind", "127.0.0.1"], stdout=subprocess.DEVNULL
    )
    try:
        client = redis.Redis(port=redis_port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        port = free_port()
        env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "OPS_METRICS_PORT": str(port)}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        exporter = subprocess.Popen(
            shlex.split(procfile_command("metrics")), env=env, cwd=tmp_path, stderr=subprocess.PIPE
        )
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    assert _value(_scrape(url), "redis_up") == 1
                    break
                except httpx.TransportError:
                    assert exporter.poll() is None and time.monotonic() < deadline
                    time.sleep(0.1)
            server.terminate()
            server.wait(10)
            samples = _scrape(url)
            assert _value(samples, "redis_up") == 0 and _value(samples, "database_up") == 1
            assert not any(name == "pedro_webhooks_queue_length" for name, _ in samples)
        finally:
            exporter.send_signal(signal.SIGTERM)
            exporter.wait(20)
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(10)


def test_gauges_show_the_open_holds(exporter, session_factory):
    make_user(session_factory)
    hold(session_factory, "open-1", credits=30, expires_in=600)
    hold(session_factory, "overdue-1", credits=5, expires_in=0.1)
    hold(session_factory, "ended-1", credits=7)
    release(session_factory, "ended-1")
    time.sleep(0.2)  # overdue-1 is past its expires_at; nothing has expired it
    samples = _scrape(exporter)
    assert _value(samples, "open_holds") == 2 and _value(samples, "held_credits") == 35
    assert _value(samples, "overdue_holds") == 1
    assert 0 < _value(samples, "open_hold_oldest_age_seconds") < 120
