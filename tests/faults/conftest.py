"""Fixtures of the fault-injection suite: a migrated PostgreSQL cluster made once per run (with
the plan the workload's payments buy), copied for every scenario, and a scratch folder per test."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from models import migrate
from models.app import Plan
from models.db import make_engine
from models.settings import Settings
from ops.local.servers import LocalPostgres
from tests.faults.harness import SHORT_SWEEP, SweepSettings, cluster
from tests.faults.scenario import Scenario
from tests.faults.workload import USERS, Workload, build_workload, plan_row


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: fault-injection scenarios (own servers, the real Procfile processes); issue 9"
    )


@pytest.fixture(scope="session")
def fault_scratch() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="pw-faults-"))
    root.chmod(0o755)  # the database's OS user must reach the clusters inside
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_template(fault_scratch: Path) -> Iterator[LocalPostgres]:
    """A stopped cluster with the migrated schema and the `pro` plan: initdb and migrations run
    once per test run, and each scenario starts a copy of it on a port of its own."""
    # fsync off: these servers are thrown away and never survive a machine crash; a committed
    # transaction is still in the kernel's cache when the server itself is killed, the fault
    # these tests inject.
    server = LocalPostgres(fault_scratch / "template", settings={"fsync": "off", "full_page_writes": "off"})
    server.start()
    try:
        settings = Settings(database_url=server.url, redis_url="redis://127.0.0.1:1/0")
        migrate.upgrade(settings)
        engine = make_engine(settings)
        with Session(engine) as session, session.begin():
            session.add(Plan(**plan_row()))
        engine.dispose()
    finally:
        server.stop("fast")
    yield server


@pytest.fixture
def scenario_root(fault_scratch: Path, request: pytest.FixtureRequest) -> Path:
    """Where one scenario's servers, logs and temporary files live (removed by the cluster)."""
    folder = Path(tempfile.mkdtemp(prefix=re.sub(r"\W", "-", request.node.name)[:40] + "-", dir=fault_scratch))
    folder.chmod(0o755)
    return folder / "world"


@pytest.fixture
def make_scenario(
    scenario_root: Path, postgres_template: LocalPostgres, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., Scenario]]:
    """Builds the test's scenario: its cluster (servers started, processes defined), its workload
    (USERS users unless given) and its traffic; all stopped and removed at the end, also on failure."""
    with ExitStack() as stack:

        def make(
            name: str,
            sweep: SweepSettings = SHORT_SWEEP,
            workload: Workload | None = None,
            with_plugin: bool = False,
            redis_config: dict[str, str] | None = None,
            **env: str,
        ) -> Scenario:
            world = stack.enter_context(
                cluster(
                    scenario_root, postgres_template, sweep, with_plugin=with_plugin, redis_config=redis_config, **env
                )
            )
            scenario = Scenario(name, world, workload or build_workload(USERS, seed=name), capsys)
            stack.callback(scenario.stop_traffic)
            return scenario

        yield make
