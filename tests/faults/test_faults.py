"""Issues 9 and 26's fault-injection suite: the real Procfile processes (`web`, `worker`, `usage`,
`beat`) on a PostgreSQL and a Redis of each test's own, fed like production (each event sent once,
again only after a failure; a service re-sending requests that got no answer), while a fault hits
work in flight by construction (tests/faults/worker_plugin.py, held locks).

Each scenario asserts what the fault found (rows mid-run, messages queued, requests in flight)
and that the recovery its title names did the recovering; then the same promises for all
(tests/faults/checks.py). Each prints one line of figures (`fault <name>: sent=... converged_s=...`).
What each proves: docs/development.md ("The fault suite").
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from messaging.fallback_store import DRAIN_GROUP
from messaging.fallback_store import STREAM as FALLBACK_STREAM
from tests.faults import worker_plugin
from tests.faults.checks import inbox_rows
from tests.faults.harness import DEFAULT_SWEEP, SHORT_SWEEP, SweepSettings
from tests.faults.probes import (
    PROCESS_TASK,
    SWEEP_TASK,
    block_work,
    crashes_of,
    inbox_id,
    lock_waiters,
    messages_waiting,
    pending_and_attempts,
    plugin_records,
    rows_mid_run,
    sessions_blocked_by,
    status_of,
    wait_for_run,
    wait_until,
)
from tests.faults.providers import ProviderStream
from tests.faults.scenario import Scenario
from tests.faults.workload import (
    USERS,
    ProviderDelivery,
    asaas_payment_event,
    build_workload,
    user_created,
    with_deliveries,
)

pytestmark = pytest.mark.faults

MakeScenario = Callable[..., Scenario]  # the `make_scenario` fixture (tests/faults/conftest.py)

WORKER_CONCURRENCY = 2  # the scenarios' WORKER_CONCURRENCY (tests/faults/harness.py)
OUTAGE_SECONDS = 4  # how long PostgreSQL stays down: the fault's length, not a wait for a result


# --- 1. the worker SIGKILLed mid-stream, twice ---------------------------------------------------


def test_worker_sigkilled_twice_mid_stream(make_scenario: MakeScenario) -> None:
    """Both workers are SIGKILLed with work in flight, by construction (tests/faults/worker_plugin.py
    blocks runs mid-run and a usage batch mid-transaction until the kill): rows mid-run at each kill,
    recovered by the sweeper (a later run counts the crash); the killed batch's requests answered
    through the service's re-sends."""
    scenario = make_scenario("worker-sigkill", with_plugin=True)
    world = scenario.world
    world.start()
    scenario.start_traffic()
    mid_run: set[int] = set()
    usage_blocked = 0
    for point, runs, usage in ((0.3, 2, 1), (0.65, 1, 0)):
        scenario.stream.wait_for(point)
        blocked, usage_blocked = block_work(world, runs=runs, usage=usage, timeout=world.sweep.bound)
        at_kill = rows_mid_run(world)
        assert blocked - mid_run <= at_kill, f"blocked runs {blocked - mid_run} not mid-run at the kill: {at_kill}"
        mid_run |= blocked
        for name in ("worker", "usage"):  # both workers: webhooks and debits
            world.processes[name].kill()  # the whole process group: main process and pool, nothing acked
            world.restart(name)
    scenario.converge(
        fault_ended=time.monotonic(),
        measure=lambda: {"rows_mid_run_at_kills": len(mid_run), "usage_batches_killed": usage_blocked},
    )
    crashes = crashes_of(world, mid_run)
    not_counted = {row for row, count in crashes.items() if count < 1}
    assert not not_counted, (
        f"a killed run was not recovered as a crash: {crashes}; runs started"
        f" {plugin_records(world, worker_plugin.STARTS, not_counted)}, ended"
        f" {plugin_records(world, worker_plugin.RUNS, not_counted)}, crashes at their starts"
        f" {plugin_records(world, worker_plugin.CRASHES, not_counted)}"
    )
    assert world.recovered_by_sweeper() >= 1, "the sweeper re-enqueued nothing: something else recovered"
    assert scenario.service.resent() >= 1, "no request was sent again: the killed batch was not recovered"


# --- 2. Redis killed and restarted empty ---------------------------------------------------------


def test_redis_killed_and_restarted_empty(make_scenario: MakeScenario) -> None:
    """Redis is killed with messages queued, by construction: the worker plugin blocks both pool
    processes mid-run (and a usage batch), so process messages wait in the queue. The rows whose
    messages Redis lost come back through the sweeper; the requests whose messages or answers
    it lost, through the service's re-sends."""
    scenario = make_scenario("redis-restart-empty", with_plugin=True)
    world = scenario.world
    world.start()
    scenario.start_traffic()
    scenario.stream.wait_for(0.3)
    block_work(world, runs=WORKER_CONCURRENCY, usage=1, timeout=world.sweep.bound)
    wait_until(lambda: messages_waiting(world)[PROCESS_TASK] > 0, "no process message queued behind the blocked runs")
    queued = messages_waiting(world)
    world.redis.kill()  # queued messages, unacked sets and results: all gone
    world.redis.start()  # same port, nothing persisted: empty
    world.release_blocked()
    scenario.converge(fault_ended=time.monotonic(), measure=lambda: {"queued_at_kill": queued[PROCESS_TASK]})
    assert queued[PROCESS_TASK] > 0, queued
    assert world.recovered_by_sweeper() >= 1, "the sweeper re-enqueued nothing: something else recovered"
    assert scenario.service.resent() >= 1, "no request was sent again: nothing lost with Redis was recovered"


# --- 3. PostgreSQL stopped for a few seconds (also on the default sweep settings) -----------------


@pytest.mark.parametrize("sweep", [SHORT_SWEEP, DEFAULT_SWEEP], ids=["short-sweep", "default-sweep"])
def test_postgres_stopped_for_seconds(make_scenario: MakeScenario, sweep: SweepSettings) -> None:
    scenario = make_scenario("postgres-stop" + ("-default-sweep" if sweep == DEFAULT_SWEEP else ""), sweep)
    world = scenario.world
    world.start()
    scenario.start_traffic()
    scenario.stream.wait_for(0.3)
    world.postgres.stop("immediate")  # every connection cut; crash recovery on the next start
    time.sleep(OUTAGE_SECONDS)
    world.postgres.start()
    scenario.converge(fault_ended=time.monotonic())


# --- 3b. PostgreSQL stopped, with a durable Redis: deliveries wait in the fallback store -----------

DURABLE_REDIS = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}
_DRAIN_RESULT = re.compile(r"inbox\.drain_fallback\[[^\]]*\] succeeded in [0-9.e-]+s: (\{[^{}]*\})")


def _receiver_answers(world, outcome: str) -> int:
    """How many deliveries the `web` process answered with `outcome` (its own metrics)."""
    text = httpx.get(f"http://127.0.0.1:{world.env['RECEIVER_METRICS_PORT']}/metrics", timeout=10).text
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "webhook_deliveries_total" and sample.labels.get("outcome") == outcome
        )
    )


def _drained(world) -> Counter[str]:
    """What every `inbox.drain_fallback` run did (from the worker's INFO log), summed."""
    total: Counter[str] = Counter()
    for match in _DRAIN_RESULT.findall(world.worker.log_text()):
        total.update(ast.literal_eval(match))
    return total


def _taken(drained: Counter[str]) -> int:
    return drained["stored"] + drained["duplicates"]


def test_postgres_stopped_with_a_durable_redis_queues_in_the_fallback_store(make_scenario: MakeScenario) -> None:
    """The fault Redis persists every write (appendonly yes, appendfsync always): during the
    outage deliveries are answered 200 `queued` into the fallback store, and the drain, not the
    providers' re-sends, brings each of them into the inbox once."""
    scenario = make_scenario("postgres-stop-durable-redis", redis_config=DURABLE_REDIS)
    world = scenario.world
    world.start()
    scenario.start_traffic()
    scenario.stream.wait_for(0.3)
    world.postgres.stop("immediate")
    time.sleep(OUTAGE_SECONDS)
    world.postgres.start()
    fault_ended = time.monotonic()
    scenario.stream.join()
    queued = _receiver_answers(world, "queued")  # the stream has ended: final
    with world.redis_client() as client:
        # Drained within the drain interval of PostgreSQL's return (beat's drain; a nudge sooner),
        # and every drain run that did it has logged its result.
        wait_until(
            lambda: client.xlen(FALLBACK_STREAM) == 0 and _taken(_drained(world)) >= queued,
            "the fallback store was not drained",
            timeout=60,
        )
        drained = _drained(world)
        figures = {"queued": queued, "drained_stored": drained["stored"], "drained_dup": drained["duplicates"]}
        scenario.converge(fault_ended=fault_ended, measure=lambda: figures)
        assert queued > 0, "no delivery was answered 200 queued during the outage: the fallback path never ran"
        # Every queued entry was taken by a drain and committed (stored, or found stored by a
        # re-send that reached PostgreSQL first) before it left the store: none lost.
        assert drained["stored"] > 0 and _taken(drained) == queued, drained
        assert (drained["refused"], drained["failed"]) == (0, 0), drained
        assert client.xlen(FALLBACK_STREAM) == 0
        assert client.xpending(FALLBACK_STREAM, DRAIN_GROUP)["pending"] == 0


# --- 4. web SIGKILLed mid-stream -----------------------------------------------------------------


def test_web_sigkilled_mid_stream(make_scenario: MakeScenario) -> None:
    """The web process is SIGKILLed with requests in flight, by construction: the test holds a
    lock that keeps the receiver's INSERT waiting. Each request in flight at the kill ends
    stored once through its provider's re-send."""
    scenario = make_scenario("web-sigkill")
    world = scenario.world
    world.start()
    scenario.start_traffic()
    scenario.stream.wait_for(0.4)
    with world.connect() as holder:
        holder.autocommit = False
        holder.execute("LOCK TABLE ingest.webhook_inbox IN SHARE MODE")  # INSERTs wait; reads go on
        wait_until(
            lambda: sessions_blocked_by(world, holder) >= 1 and bool(scenario.stream.requests_in_flight()),
            "no request reached the held lock",
        )
        in_flight = scenario.stream.requests_in_flight()
        world.web.kill()  # gunicorn's master and workers, requests in flight included
        holder.rollback()
    world.restart("web")
    scenario.converge(fault_ended=time.monotonic(), measure=lambda: {"requests_in_flight_at_kill": len(in_flight)})
    not_resent = {event: scenario.stream.attempts[event] for event in in_flight if scenario.stream.attempts[event] < 2}
    assert not_resent == {}, f"requests in flight at the kill that no provider sent again: {not_resent}"


# --- 5. a poison task: its processing kills its pool process every time it runs -------------------

POISON_USER = "user_poisonpill0001"  # no workload id contains it: only this delivery's runs die
# Dead-lettering takes several runs that die, and the worker notices a killed pool process (and
# only then gives its message back) seconds later: 10-20 s on a loaded 2-core machine, whatever
# the sweep settings. So this scenario's pending age is longer (the defaults' bound is 180 s).
POISON_SWEEP = SweepSettings(interval=2, pending_after=14)


def test_poison_task_is_dead_lettered(make_scenario: MakeScenario) -> None:
    """The worker runs with tests/faults/worker_plugin.py (`--include`): any run of this user's
    `user.created` SIGKILLs its pool process mid-handler. The row must end `failed` saying its
    runs died, within the bound, and be left alone from then on; everything else converges."""
    poison = user_created(POISON_USER)
    workload = with_deliveries(build_workload(USERS, seed="poison"), [poison])
    scenario = make_scenario("poison", sweep=POISON_SWEEP, workload=workload, with_plugin=True)
    world = scenario.world
    redis = world.redis_client()
    redis.sadd(worker_plugin.POISON_MARKERS, POISON_USER)
    world.start()
    scenario.start_traffic()

    def kills() -> int:
        return int(redis.get(worker_plugin.POISON_KILLS) or 0)

    def poison_runs(key: str) -> list[dict[str, object]]:
        row_id = inbox_id(world, poison.event_id)
        return [run for run in map(json.loads, redis.lrange(key, 0, -1)) if run["inbox_id"] == row_id]

    scenario.converge(
        fault_ended=time.monotonic(),
        expected_status={poison.event_id: "failed"},
        measure=lambda: {
            "poison_runs_started": len(poison_runs(worker_plugin.STARTS)),
            "poison_kills": kills(),
            # How the runs that were not killed ended: e.g. RETRY (its lock was busy), SUCCESS.
            "poison_runs_ended": ",".join(str(run["state"]) for run in poison_runs(worker_plugin.RUNS)) or "none",
        },
    )
    [row] = [row for row in inbox_rows(world) if row["external_id"] == poison.event_id]
    assert re.search(r"died|killed|crash", f"{row['last_error']} {row['detail']}", re.IGNORECASE), row
    # Dead-lettered means left alone: no run (and no kill) after it, over two more sweeps.
    killed, sweeps = kills(), len(world.sweeps())
    wait_until(lambda: len(world.sweeps()) >= sweeps + 2, "fewer than 2 sweeps ran", timeout=30)
    assert kills() == killed


# --- 6. workers stopped for several sweep intervals while deliveries arrive (the storm) ------------

STORM_SWEEP = SweepSettings(interval=1, pending_after=7)
STOPPED_FOR_INTERVALS = 6


def test_workers_stopped_under_load_do_not_storm(make_scenario: MakeScenario) -> None:
    scenario = make_scenario("storm", sweep=STORM_SWEEP)
    world = scenario.world
    world.start()
    scenario.start_traffic()
    scenario.stream.wait_for(0.2)
    world.worker.stop()  # warm shutdown: the messages it had reserved go back to the queue
    stopped_at = time.monotonic()
    scenario.stream.join()  # deliveries keep arriving while no worker runs
    # The outage's length (a fault parameter): several sweep intervals.
    time.sleep(max(0.0, stopped_at + STOPPED_FOR_INTERVALS * STORM_SWEEP.interval - time.monotonic()))
    waiting = messages_waiting(world)
    pending, attempts_before = pending_and_attempts(world)
    world.restart("worker")
    restarted_at = time.monotonic()
    after: dict[str, float] = {}

    def measure_the_restart() -> dict[str, object]:
        log = world.worker.log_since_start()
        after["seconds"] = round(time.monotonic() - restarted_at, 1)
        after["sweeps"] = len(re.findall(rf"{re.escape(SWEEP_TASK)}\[[^\]]+\] succeeded", log))
        runs = len(re.findall(rf"Task {re.escape(PROCESS_TASK)}\[[^\]]+\] received", log))
        # Runs that did work count an attempt; the rest found their row final (a duplicate message).
        after["wasted"] = runs - (pending_and_attempts(world)[1] - attempts_before)
        return {
            "pending_at_restart": pending,
            "process_messages_waiting": waiting[PROCESS_TASK],
            "sweep_messages_waiting": waiting[SWEEP_TASK],
            "sweeps_run_after_restart": after["sweeps"],
            "seconds_after_restart": after["seconds"],
            "process_runs_after_restart": runs,
            "runs_with_nothing_to_do": after["wasted"],
            "redundant_reenqueues": world.recovered_by_sweeper() - (pending - waiting[PROCESS_TASK]),
        }

    scenario.converge(fault_ended=restarted_at, measure=measure_the_restart)
    # While the workers were down: about one message per pending row, none twice.
    assert waiting[PROCESS_TASK] <= pending and waiting["duplicates"] == 0, waiting
    # Back up: about one sweep per interval (those that waited had expired), not all at once...
    assert after["sweeps"] <= after["seconds"] / STORM_SWEEP.interval + 2, after
    # ... and they re-enqueued exactly the rows that had no message (those the stop lost), none
    # whose message waited in the queue (the queue probe): no redundant message, no wasted run.
    redundant = world.recovered_by_sweeper() - (pending - waiting[PROCESS_TASK])
    assert redundant == 0, f"{redundant} redundant re-enqueues ({world.recovered_by_sweeper()} in all)"
    assert after["wasted"] == 0, after


# --- 7. the unmatched race, forced ---------------------------------------------------------------

RACE_USER = "user_raceuser0001"


def test_unmatched_race_ends_processed(make_scenario: MakeScenario) -> None:
    """Worker A processes the payment and finds no user; while A's transaction is still open,
    worker B processes the user's `user.created` (whose replay cannot see A's row as unmatched
    yet); then A commits `unmatched`. The test holds A open with a row lock on what A writes
    after it looked for the user (the user's `user_plans` row, uncommitted in the test's
    transaction) and releases it once B has committed or waits for A. The payment must end
    `processed` with its grant."""
    signup, payment = user_created(RACE_USER), asaas_payment_event("PAYMENT_CONFIRMED", RACE_USER, 10_000)
    workload = with_deliveries(
        build_workload(USERS, seed="unmatched-race"), [payment, signup], sends=1, users=[RACE_USER]
    )
    # Long lock waits: A must wait on the test's lock, not time out and retry.
    scenario = make_scenario("unmatched-race", workload=workload, DB_LOCK_TIMEOUT_MS="60000")
    world = scenario.world
    world.start()
    with world.connect() as holder:
        holder.autocommit = False
        holder.execute(
            "INSERT INTO ingest.user_plans (clerk_user_id, plan_id, provider, status, occurred_at) "
            "VALUES (%s, NULL, 'asaas', 'held by the test', now())",
            (RACE_USER,),
        )
        _send_once(world.web_url, payment)
        wait_until(lambda: sessions_blocked_by(world, holder) >= 1, "the payment never reached the held lock")
        _send_once(world.web_url, signup)
        wait_until(
            lambda: status_of(world, signup.event_id) not in (None, "pending") or lock_waiters(world) >= 2,
            "user.created neither committed nor waited for the payment",
        )
        holder.rollback()
    released_at = time.monotonic()
    scenario.start_traffic()  # then the whole workload, as usual
    scenario.converge(fault_ended=released_at)
    [row] = [row for row in inbox_rows(world) if row["external_id"] == payment.event_id]
    assert row["attempts"] >= 2, f"the payment did not go through `unmatched` first: {row}"


# --- 8. a retry that meets its own lock ------------------------------------------------------------

# The sweeper cannot help here (pending age 10 min): the row must come back through its own retry.
NO_SWEEPER_HELP = SweepSettings(interval=2, pending_after=600)
RETRY_BOUND = 20  # seconds after the lock is released; far below the pending age


def test_retry_that_meets_its_own_lock_tries_again(make_scenario: MakeScenario) -> None:
    """Every row waits with its message (no worker yet); the test holds one row's locks (the row
    itself and the run's advisory lock on it) while the worker starts and runs that message once,
    then releases them. The row must end processed, through a retry, without the sweeper."""
    scenario = make_scenario("retry-lock", sweep=NO_SWEEPER_HELP, with_plugin=True, DB_LOCK_TIMEOUT_MS="2000")
    world = scenario.world
    world.start("web", "usage", "beat")
    scenario.start_traffic()
    scenario.stream.join()
    held = inbox_id(world, scenario.workload.deliveries[0].event_id)  # the first user's user.created
    assert held is not None
    with world.connect() as holder:
        holder.autocommit = False
        holder.execute("SELECT id FROM ingest.webhook_inbox WHERE id = %s FOR UPDATE", (held,))
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"inbox:{held}",))
        world.restart("worker")
        first_run = wait_for_run(world.redis_client(), held)
        holder.rollback()
    released_at = time.monotonic()
    scenario.converge(
        fault_ended=released_at,
        bound=RETRY_BOUND,
        measure=lambda: {"first_run": f"{first_run['state']}:{first_run['result']}".replace(" ", "")},
    )
    assert world.recovered_by_sweeper() == 0, "the sweeper re-enqueued rows: this scenario must not need it"


def _send_once(base_url: str, delivery: ProviderDelivery) -> None:
    """One delivery, sent as a provider sends it (again until answered 200)."""
    stream = ProviderStream(base_url, [delivery], rate=1000, threads=1).start()
    stream.join(60)
    assert stream.stats.accepted == 1, stream.stats
