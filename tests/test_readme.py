"""The README's two commands are the ones CI and people actually run."""

from __future__ import annotations

import re

from tests.support.servers import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def _command_after(label: str) -> str:
    match = re.search(rf"{label}.*?```(?:sh|bash)?\n(.+?)\n```", README, re.S)
    assert match, f"README has no command block after {label!r}"
    return match.group(1).strip()


def test_readme_opens_with_the_run_and_test_commands():
    head = README[:1500]
    assert "pedro-webhooks run" in _command_after("Run the service") and "Run the service" in head
    assert "pytest" in _command_after("Run the tests") and "Run the tests" in head


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert _command_after("Run the tests") in ci.splitlines()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_the_operating_section_explains_every_inbox_status():
    from models.inbox import InboxStatus

    table = _section("Operating").split("### What each inbox status means", 1)[1].split("###", 1)[0]
    documented = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert documented == [status.value for status in InboxStatus]


def test_the_sample_alert_rules_use_gauges_the_exporter_serves(settings, redis_client, engine):
    from ops.queries.metrics import OpsCollector

    served = {family.name for family in OpsCollector(engine, redis_client, ["webhooks", "usage"]).collect()}
    rules = _section("Operating").split("```yaml", 1)[1].split("```", 1)[0]
    used = set(re.findall(r"\b(pedro_webhooks_\w+)\b", rules))
    assert used and used <= served, used - served
    for required in ('{status="pending"}) > 300', '{status="failed"}', '{status="unmatched"}) > 3600', "queue_length"):
        assert required in rules


def test_the_commands_the_readme_shows_exist():
    import shlex

    from click.testing import CliRunner

    from ops.cli import main

    shown = re.findall(r"(?:\.venv/bin/)?pedro-webhooks ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)", README)
    # The Operating section names subcommands without the program's name: `inbox list ...`.
    shown += re.findall(r"`((?:inbox|user|report|credits|dev|send|db) [a-z][a-z-]*)", _section("Operating"))
    assert len(set(shown)) > 20
    for words in sorted(set(shown)):
        args = shlex.split(words)
        result = CliRunner().invoke(main, [*args, "--help"])
        if result.exit_code != 0:  # "inbox list" is a command; "run uses": a command and prose
            result = CliRunner().invoke(main, [args[0], "--help"])
        assert result.exit_code == 0, f"`pedro-webhooks {words}` in the README is not a command"
