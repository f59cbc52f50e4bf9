"""Loaded into a bench worker with `--include bench.trace_main_memory`: the main process traces
its allocations (tracemalloc) and, on SIGUSR2, writes to TRACE_MEMORY_FILE what grew since the
first snapshot (the 25 largest differences by line), for bench_memory.py --tracemalloc."""

from __future__ import annotations

import os
import signal
import tracemalloc
from typing import Any

from celery.signals import worker_ready

_first: list[tracemalloc.Snapshot] = []


@worker_ready.connect
def _trace(**_: Any) -> None:
    tracemalloc.start(10)
    signal.signal(signal.SIGUSR2, _write)


def _write(_signum: int, _frame: Any) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    if not _first:
        _first.append(snapshot)
        return
    lines = [str(stat) for stat in snapshot.compare_to(_first[0], "lineno")[:25]]
    details = []
    for stat in snapshot.compare_to(_first[0], "traceback")[:8]:
        details.append(f"{stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+d} blocks:")
        details += [f"    {line}" for line in stat.traceback.format(limit=6)]
    with open(os.environ["TRACE_MEMORY_FILE"], "a") as out:
        out.write("\n".join(["=== growth since the first snapshot", *lines, "--- where", *details, ""]))
