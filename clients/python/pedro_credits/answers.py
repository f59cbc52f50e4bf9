"""Waiting for a stored answer on Redis: subscribed to its key's channel (Celery's result backend
publishes each result there), confirmed, then the key read, so an answer stored before or while
the client subscribed is found, and one published later is received. One subscriber connection
per thread, kept between waits (a fresh one per wait cost more than the rest of the wait). What
the answers say: docs/usage-api.md of the service's repository.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.client import PubSub

_T = TypeVar("_T")

# How long one read of the subscriber blocks (the deadline is checked between reads).
_READ_SECONDS = 1.0
# After a dropped connection (Redis restarted), how long before subscribing again.
_RECONNECT_PAUSE_SECONDS = 0.1


class AnswerWaiter:
    def __init__(self, results: redis.Redis) -> None:
        self._results = results
        self._local = threading.local()

    def wait(self, key: str, until: float, accept: Callable[[Any], _T | None]) -> _T | None:
        """The first value stored at `key` or published on its channel that `accept` turns into
        an answer (None: not an answer, ignored), waited for until `until` (time.monotonic())."""
        while time.monotonic() < until:
            subscriber = self._subscriber()
            try:
                self._subscribe(subscriber, key, until)
                try:
                    return self._receive(subscriber, key, until, accept)
                finally:
                    subscriber.unsubscribe(key)
            except (redis.ConnectionError, redis.TimeoutError):
                self.close()
                time.sleep(_RECONNECT_PAUSE_SECONDS)  # subscribe and read again
        return None

    def _receive(self, subscriber: PubSub, key: str, until: float, accept: Callable[[Any], _T | None]) -> _T | None:
        found = accept(self._results.get(key))
        while found is None and (left := until - time.monotonic()) > 0:
            message = subscriber.get_message(timeout=min(left, _READ_SECONDS))
            if _published_on(message, key):
                found = accept(message["data"])
        return found

    def _subscribe(self, subscriber: PubSub, key: str, until: float) -> None:
        """Subscribe and wait for Redis to confirm: only then can a read of the key not miss an
        answer published between the read and the subscription. A message of an earlier wait
        still on the connection is skipped (another key's, or an unsubscription's)."""
        subscriber.subscribe(key)
        while (left := until - time.monotonic()) > 0:
            message = subscriber.get_message(ignore_subscribe_messages=False, timeout=min(left, _READ_SECONDS))
            if message is not None and message.get("type") == "subscribe" and _channel(message) == key:
                return

    def _subscriber(self) -> PubSub:
        """This thread's subscriber (a new one in a forked child: the parent's socket is not its)."""
        mine: tuple[int, PubSub] | None = getattr(self._local, "subscriber", None)
        if mine is None or mine[0] != os.getpid():
            mine = (os.getpid(), self._results.pubsub())
            self._local.subscriber = mine
        return mine[1]

    def close(self) -> None:
        """Close this thread's subscriber (others close with their threads' connections); the
        next wait on this thread opens another."""
        mine: tuple[int, PubSub] | None = getattr(self._local, "subscriber", None)
        self._local.subscriber = None
        if mine is not None and mine[0] == os.getpid():
            with contextlib.suppress(redis.RedisError):  # the connection is gone already
                mine[1].close()


def _published_on(message: dict[str, Any] | None, key: str) -> bool:
    return message is not None and message.get("type") == "message" and _channel(message) == key


def _channel(message: dict[str, Any]) -> str:
    channel = message.get("channel")
    return channel.decode() if isinstance(channel, bytes) else str(channel)
