"""Each start-up error names its variable in one line, with host, port and cause, exit code 2,
and never the password: the CLI, `run`, the worker, beat, gunicorn and the Procfile's Flower."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ops.local.servers import free_port
from tests.support.cli import COMMAND, run_command
from tests.support.servers import PROJECT_ROOT, procfile_command

PASSWORD = "s3cr3t-pw"


def _down_database_url() -> tuple[str, int]:
    port = free_port()
    return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/app", port


def _down_redis_url() -> tuple[str, int]:
    port = free_port()
    return f"redis://:{PASSWORD}@127.0.0.1:{port}/0", port


def _env(**changes: str) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("LOG_LEVEL", None)
    return {**env, **changes}


def _assert_one_line(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == [expected], result.stderr
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["inbox", "list"],
        ["inbox", "show", "1"],
        ["inbox", "prune", "--older-than", "90d"],
        ["user", "show", "user_x"],
        ["reconcile"],
        ["report", "operations"],
        ["dev", "seed"],
        ["db", "current"],
        ["credits", "grant", "--user", "u", "--amount", "1", "--reason", "r", "--key", "k"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_every_database_command_names_an_unreachable_database_url(args, tmp_path):
    url, port = _down_database_url()
    result = run_command(*args, env=_env(DATABASE_URL=url), cwd=tmp_path)
    _assert_one_line(result, f"Error: DATABASE_URL: cannot reach PostgreSQL at 127.0.0.1:{port}: Connection refused")


def test_a_refusing_database_says_why(tmp_path, admin_url):
    from sqlalchemy.engine import make_url

    admin = make_url(admin_url)
    url = f"postgresql://postgres@{admin.host}:{admin.port}/no_such_database_{free_port()}"
    result = run_command("inbox", "list", env=_env(DATABASE_URL=url), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"Error: DATABASE_URL: cannot reach PostgreSQL at {admin.host}:{admin.port}: ")
    assert "does not exist" in result.stderr


@pytest.mark.parametrize("args", [["inbox", "replay", "1"], ["sweep"], ["check"], ["metrics"]], ids=" ".join)
def test_every_command_that_enqueues_names_an_unreachable_redis_url(args, tmp_path, settings):
    url, port = _down_redis_url()
    result = run_command(*args, env=_env(REDIS_URL=url), cwd=tmp_path)
    _assert_one_line(result, f"Error: REDIS_URL: cannot reach Redis at 127.0.0.1:{port}: Connection refused")


def test_read_commands_need_no_redis_url(settings, tmp_path):
    env = _env()
    env.pop("REDIS_URL")
    result = run_command("inbox", "list", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    status = run_command("status", env=env, cwd=tmp_path)
    assert status.returncode == 2 and "Redis      not set" in status.stdout  # shown, not a crash


def test_status_shows_an_unreachable_redis_and_exits_2(settings, tmp_path):
    url, port = _down_redis_url()
    result = run_command("status", env=_env(REDIS_URL=url), cwd=tmp_path)
    assert result.returncode == 2
    assert f"Redis      unreachable: Connection refused redis://:***@127.0.0.1:{port}/0" in result.stdout
    assert "queues: unknown" in result.stdout and PASSWORD not in result.stdout


def test_debug_shows_the_traceback(tmp_path):
    url, _ = _down_database_url()
    result = subprocess.run(
        [str(COMMAND), "--debug", "inbox", "list"],
        env=_env(DATABASE_URL=url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" in result.stderr and "ServerUnreachable" in result.stderr


@pytest.mark.parametrize("process", ["worker", "beat", "web"])
def test_service_processes_refuse_to_start_without_their_servers(process, settings, tmp_path):
    db_url, db_port = _down_database_url()
    env = _env(DATABASE_URL=db_url, PORT=str(free_port()), RUNTIME_DIR=str(tmp_path))
    result = subprocess.run(  # through the shell, as honcho runs a Procfile line
        procfile_command(process), shell=True, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    _assert_one_line(result, f"Error: DATABASE_URL: cannot reach PostgreSQL at 127.0.0.1:{db_port}: Connection refused")

    redis_url, redis_port = _down_redis_url()
    env = _env(REDIS_URL=redis_url, PORT=str(free_port()), RUNTIME_DIR=str(tmp_path))
    result = subprocess.run(  # through the shell, as honcho runs a Procfile line
        procfile_command(process), shell=True, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    _assert_one_line(result, f"Error: REDIS_URL: cannot reach Redis at 127.0.0.1:{redis_port}: Connection refused")


def test_the_worker_names_a_missing_variable(tmp_path):
    env = _env()
    env.pop("DATABASE_URL", None)
    result = subprocess.run(
        procfile_command("worker"), shell=True, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    _assert_one_line(result, "Error: configuration error: DATABASE_URL is not set")


def test_flower_refuses_to_start_without_its_broker(settings, tmp_path):
    url, port = _down_redis_url()
    env = _env(REDIS_URL=url, FLOWER_BASIC_AUTH="ops:pw", FLOWER_PORT=str(free_port()))
    result = subprocess.run(
        procfile_command("flower"), shell=True, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    _assert_one_line(result, f"Error: REDIS_URL: cannot reach Redis at 127.0.0.1:{port}: Connection refused")


def test_run_refuses_a_database_it_cannot_reach(tmp_path, redis_urls):
    url, port = _down_database_url()
    result = subprocess.run(
        [sys.executable, "-m", "ops.cli", "run", "--data-dir", str(tmp_path / "local")],
        env=_env(DATABASE_URL=url, REDIS_URL=redis_urls["scratch"]),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _assert_one_line(result, f"Error: DATABASE_URL: cannot reach PostgreSQL at 127.0.0.1:{port}: Connection refused")
