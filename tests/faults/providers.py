"""Clients that behave like the providers and the services.

- Clerk (Svix-signed) and Asaas (`asaas-access-token`) deliveries over real HTTP: anything but
  a 200, a refused connection and a dropped one included, is sent again after a short pause,
  as the providers do (Svix keeps the svix-id on every retry; Asaas the event id).
- A service spending credits: `usage.debit` through `pedro_credits.CreditsClient`, and a debit
  that got no answer in time is sent again with the same idempotency key.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from pedro_credits import CreditsClient

from tests.faults.workload import DEBIT_OPERATION, Debit, ProviderDelivery
from tests.support.receiver_support import asaas_headers, clerk_headers
from tests.support.usage import credits_client

log = logging.getLogger(__name__)

RESEND_PAUSE = 0.2  # seconds a provider waits before sending a failed delivery again
REQUEST_TIMEOUT = 10.0
DEBIT_ANSWER_TIMEOUT = 10.0  # a service's patience before it sends a debit again


@dataclass
class StreamStats:
    sent: int = 0  # deliveries the providers set out to send (each event twice)
    accepted: int = 0  # of those, answered 200 in the end
    resent: int = 0  # attempts after a failed one (not 200, refused, dropped)
    failures: Counter[str] = field(default_factory=Counter)  # why attempts failed


class ProviderStream:
    """Sends `sends` in order at about `rate` per second from `threads` threads, each until it
    is answered 200. `on_accepted` is called (from a sending thread) with every 200."""

    def __init__(
        self,
        base_url: str,
        sends: list[ProviderDelivery],
        *,
        rate: float,
        threads: int = 4,
        on_accepted: Callable[[ProviderDelivery], None] | None = None,
        give_up_after: float = 180,
    ) -> None:
        self.base_url = base_url
        self.sends = sends
        self.rate = rate
        self.threads = threads
        self.on_accepted = on_accepted
        self.give_up_after = give_up_after
        self.stats = StreamStats()
        self.finished_at: float | None = None
        self._next = 0
        self._done = 0
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._started_at = 0.0

    def start(self) -> ProviderStream:
        self._started_at = time.monotonic()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for thread in self._threads:
            thread.start()
        return self

    def done(self) -> int:
        with self._lock:
            return self._done

    def wait_for(self, fraction: float, timeout: float = 120) -> None:
        """Until `fraction` of the sends are answered 200 (a point mid-stream)."""
        wanted = int(len(self.sends) * fraction)
        deadline = time.monotonic() + timeout
        while self.done() < wanted:
            assert time.monotonic() < deadline, f"stream stuck at {self.done()}/{len(self.sends)}"
            time.sleep(0.02)

    def join(self, timeout: float = 180) -> None:
        for thread in self._threads:
            thread.join(max(0.0, timeout))
        assert not any(thread.is_alive() for thread in self._threads), "a provider is still sending"

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)

    def _take(self) -> tuple[int, ProviderDelivery] | None:
        with self._lock:
            if self._next >= len(self.sends):
                return None
            index = self._next
            self._next += 1
            self.stats.sent += 1
            return index, self.sends[index]

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=REQUEST_TIMEOUT) as client:
            while not self._stop.is_set() and (taken := self._take()) is not None:
                index, delivery = taken
                # Paced: send number i is due i/rate seconds into the stream.
                delay = self._started_at + index / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if self._deliver(client, delivery):
                    with self._lock:
                        self.stats.accepted += 1
                        self._done += 1
                        self.finished_at = time.monotonic()
                    if self.on_accepted is not None:
                        self.on_accepted(delivery)

    def _deliver(self, client: httpx.Client, delivery: ProviderDelivery) -> bool:
        deadline = time.monotonic() + self.give_up_after
        first = True
        while not self._stop.is_set() and time.monotonic() < deadline:
            if not first:
                with self._lock:
                    self.stats.resent += 1
                time.sleep(RESEND_PAUSE)
            first = False
            outcome = self._attempt(client, delivery)
            if outcome == "200":
                return True
            with self._lock:
                self.stats.failures[outcome] += 1
        return False

    @staticmethod
    def _attempt(client: httpx.Client, delivery: ProviderDelivery) -> str:
        if delivery.source == "clerk":
            headers = clerk_headers(delivery.body, msg_id=delivery.event_id)  # signed now, as Svix does
        else:
            headers = asaas_headers()
        try:
            response = client.post(delivery.path, content=delivery.body, headers=headers)
        except httpx.TransportError as exc:
            return type(exc).__name__  # refused, reset, timed out: sent again
        return str(response.status_code)


@dataclass
class DebitStats:
    sent: int = 0
    resent: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class DebitService:
    """A service spending credits: once a user's sign-up was delivered, it sends that user's
    debits (`CreditsClient.debit`, explicit cost) and waits for each answer; a debit without an
    answer after DEBIT_ANSWER_TIMEOUT seconds is sent again with the same key."""

    def __init__(self, redis_url: str, debits: list[Debit], give_up_after: float = 240) -> None:
        self.redis_url = redis_url
        self.debits_by_user: dict[str, list[Debit]] = {}
        for debit in debits:
            self.debits_by_user.setdefault(debit.clerk_user_id, []).append(debit)
        self.total = len(debits)
        self.give_up_after = give_up_after
        self.answers: dict[str, dict[str, Any]] = {}
        self.stats = DebitStats()
        self.finished_at: float | None = None  # when the last answer came
        self._known: queue.Queue[str] = queue.Queue()
        self._in_flight: dict[str, tuple[Debit, Any, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def user_signed_up(self, clerk_user_id: str) -> None:
        self._known.put(clerk_user_id)

    def start(self) -> DebitService:
        self._thread.start()
        return self

    def answered(self) -> bool:
        return len(self.answers) == self.total

    def applied_keys(self) -> set[str]:
        return {key for key, answer in self.answers.items() if is_applied(answer)}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        client = credits_client(self.redis_url)
        deadline = time.monotonic() + self.give_up_after
        seen: set[str] = set()
        try:
            while not self._stop.is_set() and not self.answered() and time.monotonic() < deadline:
                while not self._known.empty():
                    user = self._known.get()
                    if user not in seen:
                        seen.add(user)
                        for debit in self.debits_by_user.get(user, []):
                            self._send(client, debit)
                self._collect(client)
                time.sleep(0.05)
        finally:
            # Release every result while this scenario's Redis still runs: a Celery result
            # unsubscribes from its channel when it is collected, and would otherwise retry a
            # dead Redis for seconds from whatever test the garbage collector runs in.
            self._in_flight.clear()
            gc.collect()
            with contextlib.suppress(Exception):
                client.close()

    def _send(self, client: CreditsClient, debit: Debit, again: bool = False) -> None:
        try:
            # Its deadline (`wait`) is the service's whole patience: re-sends of the same key inside
            # it may still apply; past it the worker would take nothing (`expired`).
            result = client.send_debit(
                debit.clerk_user_id, DEBIT_OPERATION, debit.key, cost=debit.cost, wait=self.give_up_after
            )
        except Exception as exc:  # the broker is down: this is "no answer", tried again below
            self.stats.errors[type(exc).__name__] += 1
            result = None
        if again:
            self.stats.resent += 1
        else:
            self.stats.sent += 1
        self._in_flight[debit.key] = (debit, result, time.monotonic())

    def _collect(self, client: CreditsClient) -> None:
        for key, (debit, result, sent_at) in list(self._in_flight.items()):
            answer = None
            try:
                if result is not None:
                    answer = result.poll()
            except Exception as exc:  # the result backend (Redis) is down or was restarted
                self.stats.errors[type(exc).__name__] += 1
            waited = time.monotonic() - sent_at
            if isinstance(answer, dict):
                self.answers[key] = answer
                del self._in_flight[key]
                if self.answered():
                    self.finished_at = time.monotonic()
            elif (
                (result is None and waited > RESEND_PAUSE)  # it never left: the broker was down
                or waited > DEBIT_ANSWER_TIMEOUT  # no answer in time
            ):
                self._send(client, debit, again=True)


def is_applied(answer: dict[str, Any]) -> bool:
    return answer.get("status") == "applied" or (
        answer.get("status") == "duplicate" and answer.get("original_status") == "applied"
    )
