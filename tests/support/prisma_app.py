"""The Next.js app's own code (tests/app/) on the real Prisma client: installed with `npm ci`
and `prisma generate` when missing or stale, then run with tsx.

Prisma 6.19's generator is the Rust-free query compiler (`engineType = "client"`, WASM from
npm), so nothing is downloaded: the schema engine and query engine variables point at programs
that are never run, which keeps `prisma generate` from fetching them.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.servers import PROJECT_ROOT
from tests.support.stamps import locked, run, run_if_changed

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
    (they take turns on a lock file beside node_modules)."""
    app = PrismaApp(APP, node)
    lock_file = APP / "package-lock.json"
    steps = (
        ("npm ci", INSTALLED_STAMP, [lock_file], lambda: _npm_ci(npm)),
        ("prisma generate", GENERATED_STAMP, [lock_file, SCHEMA], lambda: _generate(node, scratch)),
    )
    with locked(APP / ".install.lock"):
        for name, stamp, inputs, step in steps:
            seconds = run_if_changed(stamp, inputs, APP, step)
            if seconds is not None:
                app.timings[name] = seconds
    return app


def _npm_ci(npm: str) -> None:
    # No install scripts: Prisma's would try to download engines (npm 11 skips them anyway;
    # Debian's npm 9 would run them). The client is generated below instead.
    run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"], APP)


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
    run([node, str(prisma), "generate", "--schema", str(SCHEMA)], APP, env)
