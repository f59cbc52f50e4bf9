"""A service spending credits as Pedro AI's do, through `pedro_credits.CreditsClient`.

Once a user's sign-up was answered 200 it sends that user's debits (explicit cost; some from two
threads at once with the same key) and holds, then ends each hold as the workload says (capture,
release, or never: the service expires it). A request without an answer after ANSWER_TIMEOUT
seconds is sent again with the same key; an answer to any of its sends is its final answer.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pedro_credits import CreditsClient
from pedro_credits.client import Pending

from tests.faults.workload import CAPTURED_CREDITS, DEBIT_OPERATION, Debit, Hold
from tests.support.usage import credits_client

ANSWER_TIMEOUT = 10.0  # a service's patience before it sends a request again
BROKER_DOWN_PAUSE = 0.2  # before sending again a request the broker did not take


@dataclass
class ServiceStats:
    sent: Counter[str] = field(default_factory=Counter)  # first sends, by kind
    resent: Counter[str] = field(default_factory=Counter)  # sends again after no answer, by kind
    concurrent: int = 0  # requests sent from two threads at once
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Request:
    """One request (a debit, a hold, a capture, a release) until its first answer."""

    kind: str
    key: str
    send: Callable[[CreditsClient], Pending]
    concurrent: bool = False
    pendings: list[Pending] = field(default_factory=list)
    last_sent: float = 0.0
    sends: int = 0


class CreditsService:
    def __init__(self, redis_url: str, debits: list[Debit], holds: list[Hold], give_up_after: float = 240) -> None:
        self.redis_url = redis_url
        self.debits, self.holds = debits, holds
        self.total = len(debits)
        self.give_up_after = give_up_after
        self.answers: dict[str, dict[str, Any]] = {}  # debit key -> its answer
        self.hold_answers: dict[str, dict[str, Any]] = {}  # hold key -> the hold's answer
        self.end_answers: dict[str, dict[str, Any]] = {}  # hold key -> its capture's or release's answer
        self.stats = ServiceStats()
        self.finished_at: float | None = None  # when the last answer came
        self._known: queue.Queue[str] = queue.Queue()
        self._requests: dict[tuple[str, str], Request] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def user_signed_up(self, clerk_user_id: str) -> None:
        self._known.put(clerk_user_id)

    def start(self) -> CreditsService:
        self._thread.start()
        return self

    def answered(self) -> bool:
        """Every debit, hold, capture and release that was or will be sent has its answer."""
        return len(self.answers) == self.total and all(self._hold_done(hold) for hold in self.holds)

    def _hold_done(self, hold: Hold) -> bool:
        answer = self.hold_answers.get(hold.key)
        if answer is None:
            return False
        return hold.end == "expire" or not is_held(answer) or hold.key in self.end_answers

    def applied_keys(self) -> set[str]:
        return {key for key, answer in self.answers.items() if is_applied(answer)}

    def resent(self) -> int:
        return sum(self.stats.resent.values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        clients = (credits_client(self.redis_url), credits_client(self.redis_url))
        deadline = time.monotonic() + self.give_up_after
        seen: set[str] = set()
        try:
            while not self._stop.is_set() and not self.answered() and time.monotonic() < deadline:
                while not self._known.empty():
                    user = self._known.get()
                    if user not in seen:
                        seen.add(user)
                        self._start_user(clients, user)
                self._collect(clients)
                time.sleep(0.05)
        finally:
            self._requests.clear()
            for client in clients:
                with contextlib.suppress(Exception):
                    client.close()

    def _start_user(self, clients: tuple[CreditsClient, CreditsClient], user: str) -> None:
        for debit in (debit for debit in self.debits if debit.clerk_user_id == user):
            send = _debit_sender(debit, self.give_up_after)
            self._start(clients, Request("debit", debit.key, send, debit.concurrent))
        for hold in (hold for hold in self.holds if hold.clerk_user_id == user):
            self._start(clients, Request("hold", hold.key, _hold_sender(hold, self.give_up_after)))

    def _start(self, clients: tuple[CreditsClient, CreditsClient], request: Request) -> None:
        self._requests[(request.kind, request.key)] = request
        self.stats.sent[request.kind] += 1
        if request.concurrent:
            self.stats.concurrent += 1
            self._send_concurrently(clients, request)
        else:
            self._send(clients[0], request)

    def _send(self, client: CreditsClient, request: Request) -> None:
        try:
            request.pendings.append(request.send(client))
        except Exception as exc:  # the broker is down: this is "no answer", tried again below
            self.stats.errors[type(exc).__name__] += 1
        request.last_sent = time.monotonic()
        request.sends += 1

    def _send_concurrently(self, clients: tuple[CreditsClient, CreditsClient], request: Request) -> None:
        """The same request from two threads (two clients) released at once by a barrier."""
        barrier = threading.Barrier(len(clients))

        def send(client: CreditsClient) -> None:
            barrier.wait(10)
            self._send(client, request)

        threads = [threading.Thread(target=send, args=(client,)) for client in clients]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    def _collect(self, clients: tuple[CreditsClient, CreditsClient]) -> None:
        for request in list(self._requests.values()):
            answer = self._first_answer(request)
            if answer is not None:
                del self._requests[(request.kind, request.key)]
                self._answered(clients, request, answer)
                continue
            waited = time.monotonic() - request.last_sent
            never_left = not request.pendings and waited > BROKER_DOWN_PAUSE
            if never_left or waited > ANSWER_TIMEOUT:
                self.stats.resent[request.kind] += 1
                self._send(clients[0], request)

    def _first_answer(self, request: Request) -> dict[str, Any] | None:
        """An answer to any of the request's sends (each send has its own task id)."""
        for pending in request.pendings:
            try:
                answer = pending.poll()
            except Exception as exc:  # the result backend (Redis) is down or was restarted
                self.stats.errors[type(exc).__name__] += 1
                continue
            if isinstance(answer, dict):
                return answer
        return None

    def _answered(self, clients: tuple[CreditsClient, CreditsClient], request: Request, answer: dict[str, Any]) -> None:
        if request.kind == "debit":
            self.answers[request.key] = answer
        elif request.kind == "hold":
            self.hold_answers[request.key] = answer
            hold = next(hold for hold in self.holds if hold.key == request.key)
            if is_held(answer) and hold.end == "capture":
                self._start(clients, Request("capture", hold.key, _capture_sender(hold)))
            elif is_held(answer) and hold.end == "release":
                self._start(clients, Request("release", hold.key, _release_sender(hold)))
        else:
            self.end_answers[request.key] = answer
        if self.answered():
            self.finished_at = time.monotonic()


def _debit_sender(debit: Debit, deadline: float) -> Callable[[CreditsClient], Pending]:
    # Its deadline (`wait`) is the service's whole patience: re-sends of the same key inside it
    # may still apply; past it the worker would take nothing (`expired`).
    return lambda client: client.send_debit(
        debit.clerk_user_id, DEBIT_OPERATION, debit.key, cost=debit.cost, wait=deadline
    )


def _hold_sender(hold: Hold, deadline: float) -> Callable[[CreditsClient], Pending]:
    return lambda client: client.send_hold(
        hold.clerk_user_id, DEBIT_OPERATION, hold.key, credits=hold.credits, expires_in=hold.expires_in, wait=deadline
    )


def _capture_sender(hold: Hold) -> Callable[[CreditsClient], Pending]:
    details = {"fault": "captured"}
    return lambda client: client.send_capture(hold.key, CAPTURED_CREDITS, details=details)


def _release_sender(hold: Hold) -> Callable[[CreditsClient], Pending]:
    return lambda client: client.send_release(hold.key)


def _is(answer: dict[str, Any], status: str) -> bool:
    return answer.get("status") == status or (
        answer.get("status") == "duplicate" and answer.get("original_status") == status
    )


def is_applied(answer: dict[str, Any]) -> bool:
    return _is(answer, "applied")


def is_held(answer: dict[str, Any]) -> bool:
    return _is(answer, "held")


def is_refused(answer: dict[str, Any]) -> bool:
    return _is(answer, "insufficient_credits")


def final_status(answer: dict[str, Any]) -> str:
    """The status an answer reports, a duplicate's original one included."""
    return str(answer.get("original_status") if answer.get("status") == "duplicate" else answer.get("status"))
