"""One scenario: the workload's traffic through a cluster, a fault, then convergence, the checks
and one line of figures. Every bound comes from the settings and the scenario's own timeline:
inbox rows final within the sweep bound of the fault's (or the stream's) end; the service's
requests answered within answers_bound() of the rows being final; holds nobody ends expired
within their expiry plus two sweep intervals of their answer."""

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
    open_holds,
    print_figures,
    statuses,
    wait_for_answers,
    wait_until_final,
    wait_until_holds_ended,
)
from tests.faults.harness import Cluster
from tests.faults.providers import ProviderStream
from tests.faults.services import ANSWER_TIMEOUT, CreditsService, is_refused
from tests.faults.workload import ABANDONED_EXPIRES_IN, ProviderDelivery, Workload

RATE = 50  # deliveries per second, all providers together: the stream lasts a few seconds


def answers_bound(world: Cluster) -> float:
    """Once every inbox row is final (users known) and the fault is over, a request whose send
    was lost is sent again within ANSWER_TIMEOUT and answered by the next batch; twice that
    covers a send lost by the fault's very end, and a sweep interval a hold's follow-up."""
    return 2 * ANSWER_TIMEOUT + world.sweep.interval


class Scenario:
    def __init__(self, name: str, world: Cluster, workload: Workload, capsys: pytest.CaptureFixture[str]) -> None:
        self.name = name
        self.world = world
        self.workload = workload
        self.capsys = capsys
        self.figures = Figures(name)
        self.service = CreditsService(world.redis_url, workload.debits, workload.holds)
        self.stream = ProviderStream(world.web_url, workload.sends, rate=RATE, on_accepted=self._accepted)
        self._traffic = ExitStack()
        self._created_at = time.monotonic()

    def _accepted(self, delivery: ProviderDelivery) -> None:
        if delivery.event_type == "user.created":
            self.service.user_signed_up(delivery.clerk_user_id)  # services spend only for signed-up users

    def start_traffic(self) -> None:
        self._traffic.callback(self.stream.stop)
        self._traffic.callback(self.service.stop)
        self.service.start()
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
        end if that came later; then for the service's answers and the holds' ends. Print the
        figures (with what `measure` adds), then check stored-once/final and the money."""
        try:
            self.stream.join()
            assert self.stream.finished_at is not None
            since = max(fault_ended, self.stream.finished_at)
            bound = self.world.sweep.bound if bound is None else bound
            converged = wait_until_final(self.world, since, bound)
            answered, holds_ended = None, False
            if converged is not None:  # else the test fails below: no use waiting for the rest
                answered = wait_for_answers(self.service, since + converged + answers_bound(self.world))
                holds_ended = wait_until_holds_ended(
                    self.world, (answered or time.monotonic()) + ABANDONED_EXPIRES_IN + 2 * self.world.sweep.interval
                )
            self.figures.values = {
                "sent": self.stream.stats.sent,
                "accepted": self.stream.stats.accepted,
                "resent": self.stream.stats.resent,
                "debits": self.service.total,
                "holds": len(self.workload.holds),
                "requests_resent": self.service.resent(),
                "sent_concurrently": self.service.stats.concurrent,
                "refused": sum(1 for answer in self.service.answers.values() if is_refused(answer)),
                "recovered_by_sweeper": self.world.recovered_by_sweeper(),
                "converged_s": converged if converged is not None else f">{bound:g}",
                "bound_s": f"{bound:g}",
                "answered_s": round(max(0.0, answered - since), 1) if answered else None,
                "answers_bound_s": f"{converged or 0:g}+{answers_bound(self.world):g}",
                **self.figures.values,
                **(measure() if measure else {}),
                "scenario_s": round(time.monotonic() - self._created_at, 1),
            }
            if converged is None:
                self.figures.values["statuses"] = dict(statuses(self.world))
            print_figures(self.capsys, self.figures)
            assert converged is not None, f"rows still pending {bound:g} s after the fault ended: {self._pending()}"
            assert_stored_once_and_final(self.world, self.stream, expected_status)
            assert answered is not None, (
                f"requests unanswered {answers_bound(self.world):g} s after the rows were final"
            )
            assert holds_ended, f"{open_holds(self.world)} holds still open past their expiry"
            assert_money(self.world, self.workload, self.service)
        finally:
            self.stop_traffic()

    def _pending(self) -> list[tuple[object, ...]]:
        return [
            (row["id"], row["event_type"], row["attempts"], row["last_error"], row["detail"])
            for row in inbox_rows(self.world)
            if row["status"] == "pending"
        ]
