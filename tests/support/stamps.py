"""Steps the node tests need once per change of their inputs (`npm ci`, `tsc`, `prisma generate`):
each runs when the digest of its input files differs from the one its stamp file holds, under a
lock file, so concurrent test processes run it once and the others find it done."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (made if missing, never truncated) for the block."""
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def run_if_changed(stamp: Path, inputs: Sequence[Path], root: Path, step: Callable[[], object]) -> float | None:
    """Run `step` when the files `inputs` (named relative to `root`) changed since `stamp` was
    written, then write it: the seconds the step took, or None when nothing had changed."""
    digest = _digest(inputs, root)
    if stamp.is_file() and stamp.read_text() == digest:
        return None
    started = time.monotonic()
    step()
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest)
    return round(time.monotonic() - started, 1)


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run a preparation command; its output in the error when it fails."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def _digest(paths: Sequence[Path], root: Path) -> str:
    hasher = hashlib.sha256()
    for path in paths:
        hasher.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return hasher.hexdigest()
