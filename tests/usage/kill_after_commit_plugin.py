"""Loaded into a real test worker with `--include`: a pool process dies (SIGKILL) after it COMMITs
a transaction whose statements named a key of KILL_AFTER_COMMIT_KEYS (`key:seconds`, the seconds
it lingers first), once per key (a marker file in KILL_MARKER_DIR): the work is committed, its
answer never stored, its message never acked."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

_named: set[str] = set()  # the listed keys the transaction in progress touched


def _delays() -> dict[str, float]:
    entries = (entry.partition(":") for entry in os.environ.get("KILL_AFTER_COMMIT_KEYS", "").split(",") if entry)
    return {key: float(seconds or 0) for key, _, seconds in entries}


def _keys() -> set[str]:
    return set(_delays())


@event.listens_for(Engine, "before_cursor_execute")
def _note_keys(_conn: Any, _cursor: Any, _statement: str, parameters: Any, *_: Any) -> None:
    values = parameters.values() if isinstance(parameters, dict) else parameters or ()
    _named.update(value for value in values if isinstance(value, str) and value in _keys())


@event.listens_for(Session, "after_commit")
def _die_after_the_commit(_session: Session) -> None:
    named, marker_dir = set(_named), Path(os.environ.get("KILL_MARKER_DIR", "/nonexistent"))
    _named.clear()
    fresh = [key for key in named if not (marker_dir / key).exists()]
    if fresh:
        for key in fresh:
            (marker_dir / key).touch()
        time.sleep(max(_delays()[key] for key in fresh))
        os.kill(os.getpid(), signal.SIGKILL)


@event.listens_for(Session, "after_rollback")
def _forget(_session: Session) -> None:
    _named.clear()
