"""One scenario: the workload's traffic through a cluster, a fault, then convergence, the checks
and one line of figures."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack

import pytest

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
from tests.faults.harness import Cluster
from tests.faults.providers import DebitService, ProviderStream
from tests.faults.workload import ProviderDelivery, Workload

RATE = 50  # deliveries per second, all providers together: the stream lasts a few seconds
DEBITS_ANSWERED_WITHIN = 60  # a service's whole patience, re-sends included


class Scenario:
    def __init__(self, name: str, world: Cluster, workload: Workload, capsys: pytest.CaptureFixture[str]) -> None:
        self.name = name
        self.world = world
        self.workload = workload
        self.capsys = capsys
        self.figures = Figures(name)
        self.debits = DebitService(world.redis_url, workload.debits)
        self.stream = ProviderStream(world.web_url, workload.sends, rate=RATE, on_accepted=self._accepted)
        self._traffic = ExitStack()
        self._created_at = time.monotonic()

    def _accepted(self, delivery: ProviderDelivery) -> None:
        if delivery.event_type == "user.created":
            self.debits.user_signed_up(delivery.clerk_user_id)  # services spend only for signed-up users

    def start_traffic(self) -> None:
        self._traffic.callback(self.stream.stop)
        self._traffic.callback(self.debits.stop)
        self.debits.start()
        self.stream.start()

    def stop_traffic(self) -> None:
        self._traffic.close()

    def converge(
        self,
        fault_ended: float,
        *,
        bound: float | None = None,
        expected_status: dict[str, str] | None = None,
        measure: Callable[[], dict[str, object]] | None = None,
    ) -> None:
        """Wait for the stream to end, then for every inbox row to be final within `bound`
        (default: the sweep settings' bound) counted from the fault's end, or from the stream's
        end if that came later; then for the debits' answers. Print the figures (with what
        `measure` adds), then check stored-once/final and the money."""
        try:
            self.stream.join()
            assert self.stream.finished_at is not None
            since = max(fault_ended, self.stream.finished_at)
            bound = self.world.sweep.bound if bound is None else bound
            converged = wait_until_final(self.world, since, bound)
            if converged is not None:  # else the test fails below: no use waiting for the debits
                wait_for_answers(self.debits, DEBITS_ANSWERED_WITHIN)
            debits_done = self.debits.finished_at
            self.figures.values = {
                "sent": self.stream.stats.sent,
                "accepted": self.stream.stats.accepted,
                "resent": self.stream.stats.resent,
                "debits": self.debits.total,
                "debits_resent": self.debits.stats.resent,
                "recovered_by_sweeper": self.world.recovered_by_sweeper(),
                "converged_s": converged if converged is not None else f">{bound:g}",
                "bound_s": f"{bound:g}",
                "debits_answered_s": round(max(0.0, debits_done - since), 1) if debits_done else None,
                **self.figures.values,
                **(measure() if measure else {}),
                "scenario_s": round(time.monotonic() - self._created_at, 1),
            }
            if converged is None:
                self.figures.values["statuses"] = dict(statuses(self.world))
            print_figures(self.capsys, self.figures)
            assert converged is not None, f"rows still pending {bound:g} s after the fault ended: {self._pending()}"
            assert_stored_once_and_final(self.world, self.stream, expected_status)
            assert_money(self.world, self.workload, self.debits)
        finally:
            self.stop_traffic()

    def _pending(self) -> list[tuple[object, ...]]:
        return [
            (row["id"], row["event_type"], row["attempts"], row["last_error"], row["detail"])
            for row in inbox_rows(self.world)
            if row["status"] == "pending"
        ]
