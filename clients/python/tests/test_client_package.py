"""What a service installs with `pip install ./clients/python`: Celery with Redis and the signing
library, nothing of the service (no Flask, SQLAlchemy, gunicorn ...)."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, distribution

SERVICE_ONLY = {"flask", "werkzeug", "sqlalchemy", "psycopg", "gunicorn", "flower", "alembic", "pedro-webhooks"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _extras(requirement: str) -> frozenset[str]:
    inner = re.search(r"\[([\w,\s-]+)\]", requirement.partition(";")[0])
    return frozenset(inner.group(1).replace(" ", "").split(",")) if inner else frozenset()


def _wanted(requirement: str, extras: frozenset[str]) -> bool:
    """Whether an installed requirement applies: its extra asked for, or no extra at all."""
    extra = re.search(r"extra\s*==\s*['\"]([\w-]+)['\"]", requirement.partition(";")[2])
    return extra is None or extra.group(1) in extras


def _closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution `name` pulls in (as installed here), itself included."""
    seen: set[str] = set()
    todo = [(name, extras)]
    while todo:
        current, wanted = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            requires = distribution(current).requires or []
        except PackageNotFoundError:
            continue
        todo += [(_name(r), _extras(r)) for r in requires if _wanted(r, wanted)]
    return seen


def test_the_client_package_pulls_in_nothing_of_the_service():
    pulled = _closure("pedro-credits")
    assert {"celery", "kombu", "redis", "itsdangerous"} <= pulled
    assert pulled & SERVICE_ONLY == set(), pulled & SERVICE_ONLY
