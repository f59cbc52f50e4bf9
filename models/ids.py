"""cuid-style ids, made in Python as Prisma's `@default(cuid())` makes them client-side."""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import time

_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"
_counter = itertools.count(secrets.randbelow(36**4))


def base36(number: int, width: int) -> str:
    """The last `width` base-36 digits of `number`, zero-padded."""
    digits = []
    while number:
        number, rem = divmod(number, 36)
        digits.append(_BASE36[rem])
    return "".join(reversed(digits)).rjust(width, "0")[-width:]


def _fingerprint() -> str:
    host = sum(socket.gethostname().encode()) + 36
    return base36(os.getpid(), 2) + base36(host, 2)


def cuid() -> str:
    """25 characters: 'c', time (ms), counter, host fingerprint, randomness, as cuid v1 lays them out."""
    return (
        "c"
        + base36(int(time.time() * 1000), 8)
        + base36(next(_counter), 4)
        + _fingerprint()
        + base36(secrets.randbits(64), 8)
    )
