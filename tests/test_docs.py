"""docs/ stays true to the code: every setting is documented, the statuses are written in one place,
and module docstrings say what a module promises in at most 10 lines."""

from __future__ import annotations

import ast
import inspect
import re

import pytest
from pydantic_settings import BaseSettings

from tests.support.servers import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()

# The trees whose module docstrings are held to the limit: the service's packages, the client
# package, the tests and the benchmarks.
DOCSTRING_TREES = (
    "receiver",
    "worker",
    "models",
    "messaging",
    "celery_ext",
    "ops",
    "migrations",
    "clients/python",
    "tests",
    "bench",
)
MAX_DOCSTRING_LINES = 10


def _settings_classes() -> list[type[BaseSettings]]:
    from models import settings

    return [
        value
        for value in vars(settings).values()
        if inspect.isclass(value) and issubclass(value, BaseSettings) and value is not BaseSettings
    ]


def _documented_variables() -> set[str]:
    """The variables named in the first column of a table in docs/configuration.md."""
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", CONFIGURATION, re.M))


def test_the_settings_classes_are_found():
    names = {cls.__name__ for cls in _settings_classes()}
    assert {"Settings", "DatabaseSettings", "WebhookSecrets"} <= names


@pytest.mark.parametrize("settings_class", _settings_classes(), ids=lambda cls: cls.__name__)
def test_every_settings_field_is_in_the_configuration_table(settings_class):
    documented = _documented_variables()
    missing = sorted(name.upper() for name in settings_class.model_fields if name.upper() not in documented)
    assert missing == [], f"docs/configuration.md has no row for {missing}"


def _variables_read_outside_the_settings() -> set[str]:
    """Variables the Procfile expands and the code reads by name (os.environ, gunicorn's
    configuration helpers, click's `envvar=`)."""
    found = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (PROJECT_ROOT / "Procfile").read_text()))
    found |= set(re.findall(r"\$([A-Z][A-Z0-9_]*)", (PROJECT_ROOT / "Procfile").read_text()))
    patterns = (
        r"os\.environ(?:\.get)?[(\[]\s*[\"']([A-Z][A-Z0-9_]*)[\"']",
        r"_from_env\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']",
        r"envvar=[\"']([A-Z][A-Z0-9_]*)[\"']",
    )
    for package in ("receiver", "worker", "models", "messaging", "celery_ext", "ops", "migrations"):
        for path in (PROJECT_ROOT / package).rglob("*.py"):
            source = path.read_text()
            for pattern in patterns:
                found |= set(re.findall(pattern, source))
    return found - {"PATH", "TMPDIR"}  # the system's own, not ours (TMPDIR: see RUNTIME_DIR)


def test_every_variable_the_procfile_and_the_code_read_is_documented():
    read = _variables_read_outside_the_settings()
    assert {"WEB_CONCURRENCY", "WORKER_CONCURRENCY", "FLOWER_BASIC_AUTH", "RUNTIME_DIR", "RECEIVER_URL"} <= read
    assert sorted(read - _documented_variables()) == []


def _module_docstring_lines(path) -> int:
    docstring = ast.get_docstring(ast.parse(path.read_text(), filename=str(path)))
    return len(docstring.splitlines()) if docstring else 0


def test_module_docstrings_say_what_a_module_promises_in_at_most_10_lines():
    too_long = {}
    for tree in DOCSTRING_TREES:
        for path in sorted((PROJECT_ROOT / tree).rglob("*.py")):
            name = str(path.relative_to(PROJECT_ROOT))
            if ".egg-info" in name:
                continue
            lines = _module_docstring_lines(path)
            if lines > MAX_DOCSTRING_LINES:
                too_long[name] = lines
    assert too_long == {}, "move measurements and history to BENCHMARKS.md or docs/design.md"


def test_the_usage_statuses_are_written_only_in_the_usage_api():
    # The statuses only a caller of the usage API meets; the client's docstrings link to the page.
    statuses = ("insufficient_credits", "unknown_user", "unknown_debit", "over_refund", "already_deleted")
    usage_api = (DOCS / "usage-api.md").read_text()
    assert all(f"`{status}`" in usage_api for status in statuses)
    client = PROJECT_ROOT / "clients" / "python" / "pedro_credits"
    for path in client.rglob("*.py"):
        source = path.read_text()
        assert not [status for status in statuses if status in source], path
        assert "docs/usage-api.md" in source, f"{path.name} does not link to the usage API"
    for page in DOCS.glob("*.md"):
        if page.name != "usage-api.md":
            assert not [status for status in statuses if status in page.read_text()], page.name


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_links_between_pages_resolve():
    pages = [PROJECT_ROOT / "README.md", PROJECT_ROOT / "BENCHMARKS.md", *DOCS.glob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", page.read_text()):
            path, anchor = target
            if path.startswith(("http://", "https://")):
                continue
            linked = (page.parent / path).resolve() if path else page
            assert linked.is_file(), f"{page.name} links to {path}, which does not exist"
            if anchor:
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                assert anchor in {_anchor(heading) for heading in headings}, f"{page.name}: no #{anchor} in {path}"
