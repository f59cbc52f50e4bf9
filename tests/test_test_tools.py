"""A program a test needs is a skip on a developer's machine without it, a failure in CI."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.servers import PROJECT_ROOT
from tests.support.tools import REQUIRE_TOOLS_VARIABLE, require_tool

MISSING = "pedro-webhooks-no-such-program"


def test_a_present_tool_is_found_by_path():
    assert require_tool("sh", "the test") == shutil.which("sh")


def test_a_missing_tool_skips_the_test(monkeypatch):
    monkeypatch.delenv(REQUIRE_TOOLS_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match=f"`{MISSING}` is not on PATH: runs the thing"):
        require_tool(MISSING, "runs the thing")


def test_a_missing_tool_fails_the_test_where_tools_are_required(monkeypatch):
    monkeypatch.setenv(REQUIRE_TOOLS_VARIABLE, "1")
    with pytest.raises(
        pytest.fail.Exception, match=f"`{MISSING}` is not on PATH: runs the thing .*REQUIRE_TEST_TOOLS=1"
    ):
        require_tool(MISSING, "runs the thing")


# How a test can skip itself besides `require_tool`.
_SKIPS = re.compile(r"pytest\.skip\(|mark\.skip(if)?\b|importorskip\(|raise\s+[\w.]*SkipTest")


def test_no_test_skips_but_through_require_tool():
    """Any other skip would pass silently in CI, where REQUIRE_TEST_TOOLS=1 must fail instead."""
    here = Path(__file__).resolve()
    allowed = {here, (here.parent / "support" / "tools.py").resolve()}
    skipping = [
        f"{path.relative_to(PROJECT_ROOT)}:{n}"
        for path in sorted((PROJECT_ROOT / "tests").rglob("*.py"))
        if path.resolve() not in allowed
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if _SKIPS.search(line)
    ]
    assert skipping == [], "use tests.support.tools.require_tool instead"


PROGRAMS = {"chromium": "chromium", "pgbouncer": "pgbouncer", "node": "nodejs", "npm": "npm", "openssl": "openssl"}
INSTALL_SCRIPT = PROJECT_ROOT / ".ci" / "install-test-tools"


def _machine(tmp_path: Path, present: set[str], apt_get: str) -> tuple[Path, Path]:
    """A PATH holding only the programs `present` and an `apt-get` that runs `apt_get` (sh);
    the file where it logs its arguments."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "apt-get.calls"
    bin_dir.mkdir()
    for program in present:
        _executable(bin_dir / program, "exit 0")
    _executable(bin_dir / "apt-get", f'echo "$*" >> {calls}\n{apt_get}')
    return bin_dir, calls


def _executable(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _install(bin_dir: Path) -> subprocess.CompletedProcess:
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run([bash, str(INSTALL_SCRIPT)], env={"PATH": str(bin_dir)}, capture_output=True, text=True)


def test_ci_stops_when_apt_get_cannot_install_a_missing_program(tmp_path):
    bin_dir, calls = _machine(tmp_path, set(PROGRAMS) - {"openssl"}, apt_get="exit 100")
    done = _install(bin_dir)
    assert done.returncode == 1
    assert "could not install openssl" in done.stderr
    assert calls.read_text().splitlines() == ["update -q"]  # asked for nothing else


def test_ci_stops_when_a_program_is_still_missing_after_the_install(tmp_path):
    """apt-get said yes and installed nothing (another package name, a broken mirror)."""
    bin_dir, calls = _machine(tmp_path, set(), apt_get="exit 0")
    done = _install(bin_dir)
    assert done.returncode == 1
    assert f"install -y -q {' '.join(PROGRAMS.values())}" in calls.read_text()
    for program, package in PROGRAMS.items():
        assert f"{program} is still missing after installing {package}" in done.stderr


def test_ci_installs_what_is_missing_and_goes_on(tmp_path):
    bin_dir = tmp_path / "bin"  # _machine's: this apt-get installs npm (a copy of the stub node)
    installs_npm = f'[ "$1" != install ] || /bin/cp {bin_dir / "node"} {bin_dir / "npm"}'
    bin_dir, calls = _machine(tmp_path, set(PROGRAMS) - {"npm"}, apt_get=installs_npm)
    done = _install(bin_dir)
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == ["update -q", "install -y -q npm"]


def test_ci_leaves_apt_get_alone_when_every_program_is_there(tmp_path):
    bin_dir, calls = _machine(tmp_path, set(PROGRAMS), apt_get="exit 100")
    assert _install(bin_dir).returncode == 0
    assert not calls.exists()


# What `.ci/run` itself calls besides the test programs, apt-get and python3 (the README command).
_CI_RUN_NEEDS = ("bash", "dirname", "ls", "head", "seq", "sleep", "rm")


def _ci_run(tmp_path: Path, present: set[str]) -> tuple[subprocess.CompletedProcess, Path]:
    """`.ci/run`, copied into a checkout of its own (its `rm -rf .venv` and the README command run
    there), on a PATH holding `present`, an apt-get that installs nothing, and a `python3` that
    logs that the README command started, with REQUIRE_TEST_TOOLS, and fails (exit 3)."""
    checkout = tmp_path / "checkout"
    (checkout / ".ci").mkdir(parents=True)
    for script in ("run", "install-test-tools"):
        shutil.copy2(PROJECT_ROOT / ".ci" / script, checkout / ".ci" / script)
    bin_dir, _ = _machine(tmp_path, present, apt_get="exit 100")
    for program in _CI_RUN_NEEDS:
        real = shutil.which(program)
        assert real is not None, program
        (bin_dir / program).symlink_to(real)
    started = tmp_path / "suite-started"
    _executable(
        bin_dir / "python3", f'echo "$* {REQUIRE_TOOLS_VARIABLE}=${REQUIRE_TOOLS_VARIABLE}" >> {started}\nexit 3'
    )
    done = subprocess.run(
        [str(bin_dir / "bash"), str(checkout / ".ci" / "run")],
        env={"PATH": str(bin_dir)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done, started


def test_ci_fails_before_the_suite_when_a_program_cannot_be_installed(tmp_path):
    """The whole `.ci/run`: a program missing and apt-get unable to install it stops CI with a
    failure, and the suite (where its tests would only have been skipped by hand) never starts."""
    done, started = _ci_run(tmp_path, set(PROGRAMS) - {"chromium"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "could not install chromium" in done.stderr
    assert not started.exists()


def test_ci_runs_the_readme_command_after_the_programs_with_skips_as_failures(tmp_path):
    done, started = _ci_run(tmp_path, set(PROGRAMS))
    assert done.returncode == 3  # the README command's failure is CI's
    assert started.read_text().splitlines() == [f"-m venv .venv {REQUIRE_TOOLS_VARIABLE}=1"]
