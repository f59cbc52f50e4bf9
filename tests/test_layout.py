"""The layout's rules hold: import contracts that refuse what nobody allowed, Celery's internals
reached from one package only."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import PROJECT_ROOT

SERVICE_PACKAGES = ("receiver", "worker", "models", "messaging", "celery_ext", "ops", "migrations")
INTERNALS = ("celery.worker", "celery.backends", "kombu.transport", "billiard")


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _reaches_internals(module: str) -> bool:
    return any(module == internal or module.startswith(f"{internal}.") for internal in INTERNALS)


def test_only_celery_ext_imports_celery_kombu_and_billiard_internals():
    offenders = {}
    roots = [PROJECT_ROOT / package for package in SERVICE_PACKAGES] + [PROJECT_ROOT / "clients" / "python"]
    for root in roots:
        for path in root.rglob("*.py"):
            if path.is_relative_to(PROJECT_ROOT / "celery_ext"):
                continue
            reached = sorted(name for name in _imported_modules(path) if _reaches_internals(name))
            if reached:
                offenders[str(path.relative_to(PROJECT_ROOT))] = reached
    assert offenders == {}


# An import each contract must refuse, placed in a copy of the tree: (file, line, the contract
# that must name it). The first two are the probes that passed the old forbidden-lists.
PROBES = [
    ("receiver/health.py", "from worker import lifecycle  # noqa", "worker-importers"),
    ("worker/credits/ledger.py", "from ops.local import local_env  # noqa", "ops-importers"),
    ("models/db.py", "import messaging.celery_config  # noqa", "top-layers"),
    ("worker/credits/ledger.py", "from worker.usage import debits  # noqa", "worker-layers"),
    ("worker/usage/costs.py", "from worker import task_base  # noqa", "celery-runtime-importers"),
    ("worker/users/clerk_user_events.py", "import flask  # noqa", "web-stack-importers"),
]


def _contract_names() -> dict[str, str]:
    import tomllib

    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    return {contract["id"]: contract["name"] for contract in config["tool"]["importlinter"]["contracts"]}


@pytest.mark.parametrize(("path", "line", "contract"), PROBES, ids=[f"{p[0]}:{p[2]}" for p in PROBES])
def test_lint_imports_refuses_a_probe_import(tmp_path, path, line, contract):
    tree = tmp_path / "tree"
    shutil.copytree(
        PROJECT_ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv", ".local", "node_modules", "__pycache__")
    )
    target = tree / path
    target.write_text(target.read_text() + f"\n{line}\n")
    lint_imports = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        # All contracts: `--contract` fails in import-linter 2.17 ('root_package').
        [str(lint_imports), "--no-cache"],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    report = _flat(done.stdout)
    assert done.returncode == 1, f"lint-imports did not refuse `{line}` in {path}:\n{done.stdout}{done.stderr}"
    assert f"{_flat(_contract_names()[contract])}BROKEN" in report, f"{contract!r} did not name it:\n{done.stdout}"


def _flat(text: str) -> str:
    """Without white space: lint-imports wraps contract names at 80 columns."""
    return "".join(text.split())
