"""What the scenarios look at while a fault is in place: inbox rows, who waits for which lock,
the broker's queues, the worker plugin's record of runs. Every wait polls to a deadline."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import redis

from tests.faults import worker_plugin
from tests.faults.harness import Cluster, queue_names
from tests.support.receiver_support import queued_tasks

PROCESS_TASK = "webhooks.process"
SWEEP_TASK = "inbox.sweep"


def wait_until(condition: Callable[[], bool], failure: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def inbox_id(world: Cluster, event_id: str) -> int | None:
    with world.connect() as conn:
        row = conn.execute("SELECT id FROM ingest.webhook_inbox WHERE external_id = %s", (event_id,)).fetchone()
    return None if row is None else int(row[0])


def status_of(world: Cluster, event_id: str) -> str | None:
    with world.connect() as conn:
        row = conn.execute("SELECT status FROM ingest.webhook_inbox WHERE external_id = %s", (event_id,)).fetchone()
    return None if row is None else str(row[0])


def sessions_blocked_by(world: Cluster, holder: psycopg.Connection[tuple[Any, ...]]) -> int:
    """How many sessions wait for a lock that the holder's transaction holds."""
    with world.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder.info.backend_pid,)
        ).fetchone()
    return int(row[0]) if row else 0


def lock_waiters(world: Cluster) -> int:
    """Sessions of the scenario's database waiting for any lock (row, transaction, advisory)."""
    with world.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def pending_and_attempts(world: Cluster) -> tuple[int, int]:
    """Rows still pending, and the runs that did work so far (sum of `attempts`)."""
    with world.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'pending'), coalesce(sum(attempts), 0) FROM ingest.webhook_inbox"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def messages_waiting(world: Cluster) -> Counter[str]:
    """Messages waiting in every queue of the broker, by task name, and `duplicates`: process
    messages beyond the first for one inbox row."""
    client = world.redis_client()
    try:
        tasks = [task for name in queue_names() for task in queued_tasks(client, name)]
    finally:
        client.close()
    counts = Counter(task.task for task in tasks)
    per_row = Counter(task.kwargs.get("inbox_id") for task in tasks if task.task == PROCESS_TASK)
    counts["duplicates"] = sum(count - 1 for count in per_row.values())
    return counts


def wait_for_run(client: redis.Redis, inbox_id: int, timeout: float = 60) -> dict[str, object]:
    """The first `webhooks.process` run of this row that ended (the worker plugin records each)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        popped = client.blpop([worker_plugin.RUNS], timeout=1)
        if popped is not None:
            record: dict[str, object] = json.loads(popped[1])
            if record["inbox_id"] == inbox_id:
                return record
    raise AssertionError(f"no run of inbox row {inbox_id} ended within {timeout} s")


def rows_mid_run(world: Cluster) -> set[int]:
    """Pending rows whose run recorded its start and has not ended (`running_since` set)."""
    with world.connect() as conn:
        rows = conn.execute(
            "SELECT id FROM ingest.webhook_inbox WHERE status = 'pending' AND running_since IS NOT NULL"
        ).fetchall()
    return {int(row[0]) for row in rows}


def crashes_of(world: Cluster, ids: set[int]) -> dict[int, int]:
    """How many runs of each blocked row a later run found dead (`crashes`): the most the row held
    when any of its runs had started (the worker plugin records it for blocked rows) or holds now.
    A replay (a payment that waited `unmatched` for its user) starts a row's count again from 0."""
    with world.connect() as conn:
        rows = conn.execute("SELECT id, crashes FROM ingest.webhook_inbox WHERE id = ANY(%s)", (list(ids),)).fetchall()
    counts = {int(row_id): int(crashes) for row_id, crashes in rows}
    for started in plugin_records(world, worker_plugin.CRASHES, set(counts)):
        counts[started["inbox_id"]] = max(counts[started["inbox_id"]], int(started["crashes"]))
    return counts


def plugin_records(world: Cluster, key: str, ids: set[int]) -> list[dict[str, Any]]:
    """What the worker plugin recorded (its STARTS, RUNS or CRASHES) about these rows, in order."""
    client = world.redis_client()
    try:
        records = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
    finally:
        client.close()
    return [record for record in records if record["inbox_id"] in ids]


def block_work(world: Cluster, *, runs: int = 0, usage: int = 0, timeout: float = 60) -> tuple[set[int], int]:
    """Arm the worker plugin to block the next `runs` webhooks.process runs mid-run and `usage`
    usage batches mid-transaction; wait until they all are, then disarm (a restarted worker
    blocks nothing). The inbox ids of the runs blocked so far, and the
    usage batches blocked so far."""
    client = world.redis_client()
    try:
        runs_before, usage_before = client.llen(worker_plugin.BLOCKED), client.llen(worker_plugin.BLOCKED_USAGE)
        client.set(worker_plugin.BLOCK_RUNS, runs)
        client.set(worker_plugin.BLOCK_USAGE, usage)
        wait_until(
            lambda: (
                client.llen(worker_plugin.BLOCKED) >= runs_before + runs
                and client.llen(worker_plugin.BLOCKED_USAGE) >= usage_before + usage
            ),
            f"no work to block ({runs} runs, {usage} usage batches asked for)",
            timeout=timeout,
        )
        return blocked_runs(client), int(client.llen(worker_plugin.BLOCKED_USAGE))
    finally:
        client.delete(worker_plugin.BLOCK_RUNS, worker_plugin.BLOCK_USAGE)
        client.close()


def blocked_runs(client: redis.Redis) -> set[int]:
    return {int(raw) for raw in client.lrange(worker_plugin.BLOCKED, 0, -1)}
