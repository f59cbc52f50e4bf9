"""Issue 9's fault-injection suite: the real Procfile processes (`web`, `worker`, `beat`) on a
PostgreSQL and a Redis of each test's own, fed like production (providers that re-send anything
but a 200, a service that re-sends a debit that got no answer), while a fault is injected.

After the fault every scenario checks the same promises (tests/faults/checks.py): each delivery
answered 200 is stored once and final within 2 x (sweep interval + pending age), balances are
what the events imply and match the ledger, one effect per event and per debit key. Each prints
one line of figures.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from tests.faults import worker_plugin
from tests.faults.checks import (
    Figures,
    assert_money,
    assert_stored_once_and_final,
    inbox_rows,
    print_figures,
    statuses,
    wait_for_answers,
    wait_until_final,
)
from tests.faults.harness import DEFAULT_SWEEP, SHORT_SWEEP, Cluster, SweepSettings, cluster, queue_names
from tests.faults.providers import DebitService, ProviderStream
from tests.faults.servers import LocalPostgres
from tests.faults.workload import (
    ProviderDelivery,
    Workload,
    asaas_payment_event,
    build_workload,
    user_created,
)
from tests.support.receiver_support import queued_tasks

USERS = 30
RATE = 50  # deliveries per second, all providers together: the stream lasts a few seconds
OUTAGE_SECONDS = 4  # how long PostgreSQL stays down: a fault's length, not a wait for a result
DEBITS_ANSWERED_WITHIN = 60  # a service's whole patience, re-sends included

pytestmark = pytest.mark.faults


class Scenario:
    """One run of the workload through a cluster, with a fault injected mid-stream."""

    def __init__(self, name: str, world: Cluster, workload: Workload, capsys: pytest.CaptureFixture[str]) -> None:
        self.name = name
        self.world = world
        self.workload = workload
        self.capsys = capsys
        self.figures = Figures(name)
        self.stack = ExitStack()
        self.debits = DebitService(world.redis_url, workload.debits)
        self.stream = ProviderStream(world.web_url, workload.sends, rate=RATE, on_accepted=self._accepted)

    def _accepted(self, delivery: ProviderDelivery) -> None:
        if delivery.event_type == "user.created":
            self.debits.user_signed_up(delivery.clerk_user_id)  # services spend only for signed-up users

    def start_traffic(self) -> None:
        self.stack.callback(self.stream.stop)
        self.stack.callback(self.debits.stop)
        self.debits.start()
        self.stream.start()

    def converge(
        self, fault_ended: float, *, bound: float | None = None, expected_status: dict[str, str] | None = None
    ) -> None:
        """Wait for the stream, then for every row to be final within the bound counted from
        the fault's end (or the stream's end, if it ended later); print the figures; check."""
        try:
            self.stream.join()
            assert self.stream.finished_at is not None
            since = max(fault_ended, self.stream.finished_at)
            bound = self.world.sweep.bound if bound is None else bound
            converged = wait_until_final(self.world, since, bound)
            if converged is not None:  # else the test fails below: no use waiting for the debits
                wait_for_answers(self.debits, DEBITS_ANSWERED_WITHIN)
            self.figures.values = {
                "sent": self.stream.stats.sent,
                "accepted": self.stream.stats.accepted,
                "resent": self.stream.stats.resent,
                "debits": self.debits.total,
                "debits_resent": self.debits.stats.resent,
                "recovered_by_sweeper": self.world.recovered_by_sweeper(),
                "converged_s": converged if converged is not None else f">{bound:g}",
                "bound_s": f"{bound:g}",
                **self.figures.values,
            }
            if converged is None:
                self.figures.values["statuses"] = dict(statuses(self.world))
            print_figures(self.capsys, self.figures)
            assert converged is not None, (
                f"rows still pending {bound:g} s after the fault ended: {self._pending_rows()}"
            )
            assert_stored_once_and_final(self.world, self.stream, expected_status)
            assert_money(self.world, self.workload, self.debits)
        finally:
            self.stack.close()

    def _pending_rows(self) -> list[tuple[object, ...]]:
        return [
            (row["id"], row["event_type"], row["attempts"], row["last_error"], row["detail"])
            for row in inbox_rows(self.world)
            if row["status"] == "pending"
        ]


def _workload(name: str, users: int = USERS) -> Workload:
    return build_workload(users, seed=name)


@pytest.fixture
def run(
    scenario_root: Path, postgres_template: LocalPostgres, capsys: pytest.CaptureFixture[str]
) -> Callable[..., Scenario]:
    """Builds a scenario's cluster (closed at the end of the test, also on failure)."""
    with ExitStack() as stack:

        def make(
            name: str,
            sweep: SweepSettings = SHORT_SWEEP,
            workload: Workload | None = None,
            with_plugin: bool = False,
            **env: str,
        ) -> Scenario:
            world = stack.enter_context(
                cluster(scenario_root, postgres_template, sweep, with_plugin=with_plugin, **env)
            )
            scenario = Scenario(name, world, workload or _workload(name), capsys)
            stack.callback(scenario.stack.close)
            return scenario

        yield make


# --- 1. the worker SIGKILLed mid-stream, twice --------------------------------------------------


def test_worker_sigkilled_twice_mid_stream(run):
    scenario = run("worker-sigkill")
    world = scenario.world
    world.start()
    scenario.start_traffic()
    for point in (0.3, 0.65):
        scenario.stream.wait_for(point)
        world.worker.kill()  # the whole process group: main process and pool, no ack
        world.restart("worker")
    scenario.converge(fault_ended=time.monotonic())


# --- 2. Redis killed and restarted empty --------------------------------------------------------


def test_redis_killed_and_restarted_empty(run):
    scenario = run("redis-restart-empty")
    world = scenario.world
    world.start()
    scenario.start_traffic()
    scenario.stream.wait_for(0.5)
    world.redis.kill()  # queued messages, unacked sets and results: all gone
    world.redis.start()  # same port, nothing persisted: empty
    scenario.converge(fault_ended=time.monotonic())


# --- 3. PostgreSQL stopped for a few seconds ----------------------------------------------------


@pytest.mark.parametrize("sweep", [SHORT_SWEEP, DEFAULT_SWEEP], ids=["short-sweep", "default-sweep"])
def test_postgres_stopped_for_seconds(run, sweep):
    scenario = run("postgres-stop" + ("" if sweep == SHORT_SWEEP else "-default-sweep"), sweep)
    world = scenario.world
    world.start()
    scenario.start_traffic()
    scenario.stream.wait_for(0.3)
    world.postgres.stop("immediate")  # connections cut, crash recovery on the next start
    time.sleep(OUTAGE_SECONDS)
    world.postgres.start()
    scenario.converge(fault_ended=time.monotonic())


# --- 4. web SIGKILLed mid-stream ----------------------------------------------------------------


def test_web_sigkilled_mid_stream(run):
    scenario = run("web-sigkill")
    world = scenario.world
    world.start()
    scenario.start_traffic()
    scenario.stream.wait_for(0.4)
    world.web.kill()  # gunicorn's master and workers, requests in flight included
    world.restart("web")
    scenario.converge(fault_ended=time.monotonic())


# --- 5. a poison task: its processing kills its pool process every time it runs ------------------

POISON_USER = "user_poisonpill0001"  # no workload id contains it: only its own run is killed


def test_poison_task_is_dead_lettered(run):
    base = _workload("poison")
    poison = user_created(POISON_USER)
    workload = replace(base, deliveries=[*base.deliveries, poison])
    workload = replace(workload, sends=_shuffled_in(base.sends, [poison, poison], seed="poison"))
    scenario = run("poison", workload=workload, with_plugin=True)
    world = scenario.world
    redis = world.redis_client()
    redis.sadd(worker_plugin.POISON_MARKERS, POISON_USER)
    world.start()
    scenario.start_traffic()
    try:
        scenario.converge(fault_ended=time.monotonic(), expected_status={poison.event_id: "failed"})
    finally:
        kills = int(redis.get(worker_plugin.POISON_KILLS) or 0)
        _print_extra(scenario, poison_kills=kills)
    [row] = [row for row in inbox_rows(world) if row["external_id"] == poison.event_id]
    assert re.search(r"died|killed|crash", row["last_error"] or row["detail"] or "", re.I), row
    # Dead-lettered means left alone: no run (and no kill) after it, sweeps included.
    _wait_for_sweeps(world, 2)
    assert int(redis.get(worker_plugin.POISON_KILLS) or 0) == kills


# --- 6. workers stopped for several sweep intervals while deliveries arrive (the storm) ----------

STORM_SWEEP = SweepSettings(interval=1, pending_after=3)
STOPPED_FOR_INTERVALS = 8


def test_workers_stopped_under_load_do_not_storm(run):
    scenario = run("storm", sweep=STORM_SWEEP)
    world = scenario.world
    world.start()
    scenario.start_traffic()
    scenario.stream.wait_for(0.2)
    world.worker.stop()  # warm shutdown: the messages it had reserved go back to the queue
    stopped_at = time.monotonic()
    scenario.stream.join()  # deliveries keep arriving while no worker runs
    # The outage's length (a fault parameter): several sweep intervals.
    time.sleep(max(0.0, stopped_at + STOPPED_FOR_INTERVALS * STORM_SWEEP.interval - time.monotonic()))
    waiting = _messages_waiting(world)
    pending, attempts_before = _pending_and_attempts(world)
    world.restart("worker")
    restarted_at = time.monotonic()
    try:
        scenario.converge(fault_ended=restarted_at)
    finally:
        since_restart = time.monotonic() - restarted_at
        log = world.worker.log_since_start()
        sweeps_run = len(re.findall(r"inbox\.sweep\[[^\]]+\] succeeded", log))
        runs = len(re.findall(r"Task webhooks\.process\[[^\]]+\] received", log))
        wasted = runs - (_pending_and_attempts(world)[1] - attempts_before)
        _print_extra(
            scenario,
            pending_at_restart=pending,
            process_messages_waiting=waiting["webhooks.process"],
            sweeps_waiting=waiting["inbox.sweep"],
            sweeps_run_after_restart=sweeps_run,
            seconds_after_restart=round(since_restart, 1),
            process_runs_after_restart=runs,
            runs_with_nothing_to_do=wasted,
        )
    # While the workers were down: about one message per pending row, none twice.
    assert waiting["webhooks.process"] <= pending, waiting
    assert waiting["duplicates"] == 0, waiting
    # Back up: sweeps run about once per interval (those that waited expired), not all at once...
    assert sweeps_run <= since_restart / STORM_SWEEP.interval + 2, f"{sweeps_run} sweeps in {since_restart:.1f} s"
    # ... and re-enqueue each waiting row at most once: at most one wasted run per pending row.
    assert wasted <= pending, f"{wasted} runs found nothing to do, for {pending} pending rows"


# --- 7. the unmatched race, forced ---------------------------------------------------------------

RACE_USER = "user_raceuser0001"


def test_unmatched_race_ends_processed(run):
    """Worker A processes the payment and finds no user; while A's transaction is still open,
    worker B processes `user.created` (and its replay, which cannot see A's row as unmatched);
    then A commits `unmatched`. The test holds A open with a row lock on what A writes after it
    looked for the user (its `user_plans` row), and releases it once B has committed or is
    waiting for A."""
    base = _workload("unmatched-race")
    signup, payment = user_created(RACE_USER), asaas_payment_event("PAYMENT_CONFIRMED", RACE_USER, 10_000)
    workload = replace(
        base,
        users=[*base.users, RACE_USER],
        deliveries=[*base.deliveries, signup, payment],
        sends=[payment, signup, *base.sends],
        debits=base.debits,
    )
    # Long lock waits: A must wait on the test's lock, not time out and retry.
    scenario = run("unmatched-race", workload=workload, DB_LOCK_TIMEOUT_MS="60000")
    world = scenario.world
    world.start()
    with world.connect() as holder:
        holder.autocommit = False
        holder.execute(
            "INSERT INTO ingest.user_plans (clerk_user_id, plan_id, provider, status, occurred_at) "
            "VALUES (%s, NULL, 'asaas', 'held by the test', now())",
            (RACE_USER,),
        )
        _send_until_200(world, payment)
        _wait_until(lambda: _blocked_by(world, holder) >= 1, "the payment never reached the held lock")
        _send_until_200(world, signup)
        _wait_until(
            lambda: _status_of(world, signup.event_id) not in (None, "pending") or _lock_waiters(world) >= 2,
            "user.created neither committed nor waited for the payment",
        )
        holder.rollback()
    released_at = time.monotonic()
    scenario.start_traffic()  # the rest of the workload, as usual
    scenario.converge(fault_ended=released_at)
    [row] = [row for row in inbox_rows(world) if row["external_id"] == payment.event_id]
    assert row["attempts"] >= 2, f"the payment did not go through `unmatched` first: {row}"


# --- 8. a retry that meets its own lock ------------------------------------------------------------

# The sweeper never helps here (pending age 10 min): the row must be re-driven by its own retry.
NO_SWEEPER_HELP = SweepSettings(interval=2, pending_after=600)
RETRY_BOUND = 20  # seconds after the lock is released; far below the pending age


def test_retry_that_meets_its_own_lock_tries_again(run):
    scenario = run("retry-lock", sweep=NO_SWEEPER_HELP, with_plugin=True, DB_LOCK_TIMEOUT_MS="2000")
    world = scenario.world
    world.start("web", "beat")  # no worker yet: every row waits with its message
    scenario.start_traffic()
    scenario.stream.join()
    held = scenario.workload.deliveries[0]  # the first user's user.created
    inbox_id = _inbox_id(world, held.event_id)
    redis = world.redis_client()
    with world.connect() as holder:
        holder.autocommit = False
        # What a run of this row holds: the row itself, and the run's advisory lock on it.
        holder.execute("SELECT id FROM ingest.webhook_inbox WHERE id = %s FOR UPDATE", (inbox_id,))
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"inbox:{inbox_id}",))
        world.restart("worker")
        first_run = _wait_for_run(redis, inbox_id)
        holder.rollback()
    released_at = time.monotonic()
    scenario.figures.values["first_run"] = f"{first_run['state']}:{first_run['result']}".replace(" ", "")
    scenario.converge(fault_ended=released_at, bound=RETRY_BOUND)
    assert world.recovered_by_sweeper() == 0, "the sweeper re-enqueued rows: this scenario must not need it"


# --- helpers -----------------------------------------------------------------------------------


def _shuffled_in(sends: list[ProviderDelivery], extra: list[ProviderDelivery], seed: str) -> list[ProviderDelivery]:
    import random

    merged = [*sends, *extra]
    random.Random(seed).shuffle(merged)
    return merged


def _print_extra(scenario: Scenario, **values: object) -> None:
    """Figures measured after the common line was printed, on a line of their own."""
    extra = " ".join(f"{key}={value}" for key, value in values.items())
    with scenario.capsys.disabled():
        print(f"fault {scenario.name} (more): {extra}", flush=True)


def _wait_until(condition: Callable[[], bool], failure: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def _wait_for_sweeps(world: Cluster, count: int, timeout: float = 60) -> None:
    seen = len(world.sweeps())
    _wait_until(lambda: len(world.sweeps()) >= seen + count, f"fewer than {count} sweeps ran", timeout)


def _send_until_200(world: Cluster, delivery: ProviderDelivery) -> None:
    stream = ProviderStream(world.web_url, [delivery], rate=1000, threads=1).start()
    stream.join(60)
    assert stream.stats.accepted == 1, stream.stats


def _status_of(world: Cluster, event_id: str) -> str | None:
    with world.connect() as conn:
        row = conn.execute("SELECT status FROM ingest.webhook_inbox WHERE external_id = %s", (event_id,)).fetchone()
    return None if row is None else str(row[0])


def _inbox_id(world: Cluster, event_id: str) -> int:
    with world.connect() as conn:
        row = conn.execute("SELECT id FROM ingest.webhook_inbox WHERE external_id = %s", (event_id,)).fetchone()
    assert row is not None, f"{event_id} was not stored"
    return int(row[0])


def _blocked_by(world: Cluster, holder: psycopg.Connection) -> int:
    """How many sessions wait for a lock the holder's transaction holds."""
    with world.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (holder.info.backend_pid,)
        ).fetchone()
    return int(row[0]) if row else 0


def _lock_waiters(world: Cluster) -> int:
    with world.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_for_run(redis_client, inbox_id: int, timeout: float = 60) -> dict[str, object]:
    """The first `webhooks.process` run of this row that ended (the worker plugin's probe)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        popped = redis_client.blpop([worker_plugin.RUNS], timeout=1)
        if popped is not None:
            record = json.loads(popped[1])
            if record["inbox_id"] == inbox_id:
                return record
    raise AssertionError(f"no run of inbox row {inbox_id} ended within {timeout} s")


def _messages_waiting(world: Cluster) -> Counter[str]:
    """Messages in the broker's queues by task name, and rows with more than one process message."""
    client = world.redis_client()
    tasks = [task for name in queue_names() for task in queued_tasks(client, name)]
    counts = Counter(task.task for task in tasks)
    per_row = Counter(task.kwargs.get("inbox_id") for task in tasks if task.task == "webhooks.process")
    counts["duplicates"] = sum(count - 1 for count in per_row.values() if count > 1)
    return counts


def _pending_and_attempts(world: Cluster) -> tuple[int, int]:
    with world.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'pending'), coalesce(sum(attempts), 0) FROM ingest.webhook_inbox"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])
