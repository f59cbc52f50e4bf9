"""The README's two commands are the ones CI and people actually run; every command the README and
docs/ show exists; the README stays a five-minute read that links to every page of docs/."""

from __future__ import annotations

import re

import click
import pytest

from tests.support.servers import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()
DOCS = sorted((PROJECT_ROOT / "docs").glob("*.md"))
OPERATING = (PROJECT_ROOT / "docs" / "operating.md").read_text()
README_MAX_LINES = 200


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


def test_the_readme_is_short_and_links_to_every_doc():
    assert len(README.splitlines()) <= README_MAX_LINES
    assert DOCS, "docs/ holds no page"
    for page in DOCS:
        assert f"](docs/{page.name})" in README, f"README.md does not link to docs/{page.name}"


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_the_operating_section_explains_every_inbox_status():
    from models.inbox import InboxStatus

    table = _section(OPERATING, "What each inbox status means")
    documented = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert documented == [status.value for status in InboxStatus]


def test_the_sample_alert_rules_use_gauges_the_exporter_serves(settings, redis_client, engine):
    from ops.queries.metrics import OpsCollector

    served = {family.name for family in OpsCollector(engine, redis_client, ["webhooks", "usage"]).collect()}
    rules = _section(OPERATING, "Alerts").split("```yaml", 1)[1].split("```", 1)[0]
    used = set(re.findall(r"\b(pedro_webhooks_\w+)\b", rules))
    assert used and used <= served, used - served
    for required in ('{status="pending"}) > 300', '{status="failed"}', '{status="unmatched"}) > 3600', "queue_length"):
        assert required in rules


# Words of a command line: whole lower-case words separated by one space. What follows them (an
# option, an id such as user_demo, an event type such as user.created, `# a comment`, a closing
# backtick) ends the command.
_WORD = r"[a-z][a-z-]*(?![\w.:=/-])"
_WORDS = rf"{_WORD}(?: {_WORD})*"
# The token after them, kept: after a group it must name one of its subcommands
# (`pedro-webhooks inbox lisst_all` is no command, though `inbox` alone is a group).
_NEXT = r"[^\s`]+"


def _shown_commands(text: str) -> set[str]:
    """`pedro-webhooks WORDS ...` anywhere, and code spans that start with a command's name
    (docs/operating.md writes `inbox list ...` without the program's name)."""
    from ops.cli import main

    shown = {"".join(found) for found in re.findall(rf"(?:\.venv/bin/)?pedro-webhooks ({_WORDS})( {_NEXT})?", text)}
    for span in re.findall(r"`([^`\n]+)`", text):
        # Whole words only: `user:password`, `inbox.sweep`, `send_after_commit` are not commands.
        words = re.match(rf"({_WORDS})( {_NEXT})?", span)
        if words and words.group(1).split(" ")[0] in main.commands:
            shown.add(words.group(0))
    return {words.strip() for words in shown}


def _resolve(words: str) -> click.Command:
    """The command `pedro-webhooks WORDS` names. Each word under a group must be one of its
    subcommands; the words after a command that is not a group are its arguments, or prose
    ("run uses the servers ...")."""
    from ops.cli import main

    command: click.Command = main
    for word in words.split(" "):
        if not isinstance(command, click.Group) or not word[0].isalnum():
            break  # a command's arguments, or an option, a placeholder (`<id>`), punctuation
        sub = command.commands.get(word)
        if sub is None:
            raise LookupError(f"{word!r} is not a subcommand of {command.name!r}")
        command = sub
    return command


SHOWN = {
    page: sorted(_shown_commands(text))
    for page, text in [("README.md", README), *((f"docs/{path.name}", path.read_text()) for path in DOCS)]
}


def test_the_readme_and_the_docs_show_commands():
    assert len({words for shown in SHOWN.values() for words in shown}) > 20
    assert SHOWN["README.md"] and SHOWN["docs/operating.md"]


@pytest.mark.parametrize(
    ("page", "words"), [(page, words) for page, shown in SHOWN.items() for words in shown], ids=lambda value: value
)
def test_the_commands_the_readme_shows_exist(page, words):
    try:
        _resolve(words)
    except LookupError as exc:
        pytest.fail(f"{page} shows `pedro-webhooks {words}`, which is not a command: {exc}")


def test_a_made_up_subcommand_is_not_a_command():
    with pytest.raises(LookupError):
        _resolve("inbox nosuch")
    with pytest.raises(LookupError):
        _resolve("nosuch")
    for text in ("pedro-webhooks inbox list_all --status x", "`inbox lisst2`", "pedro-webhooks user nosuch"):
        (shown,) = _shown_commands(text)
        with pytest.raises(LookupError):  # not the group `inbox` (or `user`) and its --help
            _resolve(shown)
    for text in ("pedro-webhooks inbox --help", "pedro-webhooks inbox`", "pedro-webhooks user show user_demo"):
        (shown,) = _shown_commands(text)
        assert _resolve(shown).name in ("inbox", "show")
    assert _resolve("run uses the servers").name == "run"
    assert _resolve("inbox list").name == "list"
