"""The Next.js app's own code (tests/app/) on the real Prisma client: installed with `npm ci`
and `prisma generate` when missing or stale, then run with tsx.

Prisma 6.19's generator is the Rust-free query compiler (`engineType = "client"`, WASM from
npm), so nothing is downloaded: the schema engine and query engine variables point at programs
that are never run, which keeps `prisma generate` from fetching them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import PROJECT_ROOT

APP = PROJECT_ROOT / "tests" / "app"
SCHEMA = APP / "prisma" / "schema.prisma"
INSTALLED_STAMP = APP / "node_modules" / ".pedro-webhooks-installed"  # sha256 of package-lock.json
GENERATED_STAMP = APP / "node_modules" / ".pedro-webhooks-generated"  # ... and of the schema


@dataclass
class PrismaApp:
    folder: Path
    node: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step that ran

    def command(self, script: str) -> list[str]:
        """Run a TypeScript file of the app with tsx (Node cannot run .ts itself before 22)."""
        return [self.node, str(self.folder / "node_modules" / "tsx" / "dist" / "cli.mjs"), script]


def prepare(node: str, npm: str, scratch: Path) -> PrismaApp:
    """Install and generate what is missing or stale, once even for concurrent test processes
    (xdist workers take turns on a lock file beside node_modules)."""
    app = PrismaApp(APP, node)
    with _locked(APP / ".install.lock"):
        if _stamp_of(INSTALLED_STAMP) != _digest(APP / "package-lock.json"):
            app.timings["npm ci"] = _timed(_npm_ci, npm)
            INSTALLED_STAMP.write_text(_digest(APP / "package-lock.json"))
        if _stamp_of(GENERATED_STAMP) != _digest(APP / "package-lock.json", SCHEMA):
            app.timings["prisma generate"] = _timed(_generate, node, scratch)
            GENERATED_STAMP.write_text(_digest(APP / "package-lock.json", SCHEMA))
    return app


def _npm_ci(npm: str) -> None:
    # No install scripts: Prisma's would try to download engines (npm 11 skips them anyway;
    # Debian's npm 9 would run them). The client is generated below instead.
    _run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], os.environ)


def _generate(node: str, scratch: Path) -> None:
    never_loaded = scratch / "no-query-engine"
    never_loaded.write_bytes(b"")
    env = {
        **os.environ,
        "PRISMA_SCHEMA_ENGINE_BINARY": shutil.which("false") or "/bin/false",
        "PRISMA_QUERY_ENGINE_LIBRARY": str(never_loaded),
        "CHECKPOINT_DISABLE": "1",  # Prisma's update check (a request to its servers)
        "PRISMA_HIDE_UPDATE_MESSAGE": "1",
    }
    prisma = APP / "node_modules" / "prisma" / "build" / "index.js"
    _run([node, str(prisma), "generate", "--schema", str(SCHEMA)], env)


def _run(command: list[str], env: os._Environ[str] | dict[str, str]) -> None:
    done = subprocess.run(command, cwd=APP, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")


def _timed(step: Callable[..., None], *args: object) -> float:
    started = time.monotonic()
    step(*args)
    return round(time.monotonic() - started, 1)


def _digest(*paths: Path) -> str:
    hasher = hashlib.sha256()
    for path in paths:
        hasher.update(path.read_bytes())
    return hasher.hexdigest()


def _stamp_of(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
