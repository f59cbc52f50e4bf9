"""Clients that behave like the providers (Clerk, Asaas).

- Clerk (Svix-signed) and Asaas (`asaas-access-token`) deliveries over real HTTP: anything but
  a 200, a refused connection and a dropped one included, is sent again after a short pause,
  as the providers do (Svix keeps the svix-id on every retry; Asaas the event id).

The service spending credits: tests/faults/services.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from tests.faults.workload import ProviderDelivery
from tests.support.receiver_support import asaas_headers, clerk_headers

log = logging.getLogger(__name__)

RESEND_PAUSE = 0.2  # seconds a provider waits before sending a failed delivery again
REQUEST_TIMEOUT = 10.0


@dataclass
class StreamStats:
    sent: int = 0  # deliveries the providers set out to send (each event once)
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
        self.in_flight: set[str] = set()  # event ids of the requests awaiting an answer now
        self.attempts: Counter[str] = Counter()  # attempts per event id

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

    def requests_in_flight(self) -> set[str]:
        with self._lock:
            return set(self.in_flight)

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
            with self._lock:
                self.in_flight.add(delivery.event_id)
                self.attempts[delivery.event_id] += 1
            try:
                outcome = self._attempt(client, delivery)
            finally:
                with self._lock:
                    self.in_flight.discard(delivery.event_id)
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
