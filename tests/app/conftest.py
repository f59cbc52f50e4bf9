"""The Next.js app's own code on the real Prisma client (tests/support/prisma_app.py)."""

from __future__ import annotations

import pytest

from tests.support.prisma_app import PrismaApp, prepare
from tests.support.tools import require_tool


@pytest.fixture(scope="session")
def prisma_app(tmp_path_factory) -> PrismaApp:
    """tests/app installed (`npm ci`) and its client generated, once per run when stale."""
    node = require_tool("node", "runs the Next.js app's deductCredits through the real Prisma client")
    npm = require_tool("npm", "installs the pinned Prisma packages (tests/app/package-lock.json)")
    app = prepare(node, npm, tmp_path_factory.mktemp("prisma"))
    if app.timings:
        print(f"tests/app prepared: {app.timings}")  # shown with -s, and in the report's timings
    return app
