"""The TypeScript client (clients/typescript): its node tests against the session's worker, its
messages beside the Python client's `send_task` for the same calls (field by field), its npm
package, and the docs' `deductCredits` being the one its tests run."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from datetime import UTC, datetime
from typing import Any

import pytest
from pedro_credits import CreditsClient
from pedro_credits.signing import REQUEST, verify

from tests.conftest import USAGE_TEST_KEYS
from tests.support.servers import PROJECT_ROOT
from tests.support.tools import require_tool
from tests.support.typescript_client import (
    PACKAGE,
    SERVICE,
    USERS,
    database_problems,
    details,
    locked_balances,
    node_environment,
    open_balances,
    prepare,
    run_node_tests,
    tls_redis,
)

CALLS = json.loads((PACKAGE / "test" / "message-calls.json").read_text())["calls"]


@pytest.fixture(scope="module")
def node() -> str:
    """clients/typescript installed (`npm ci`, when package-lock.json changed) and built."""
    node = require_tool("node", "runs the TypeScript client's tests")
    npm = require_tool("npm", "installs the TypeScript client's pinned packages (package-lock.json)")
    timings = prepare(npm, node)
    print(f"clients/typescript prepared: {timings}")  # shown with -s
    return node


@pytest.mark.celery_worker
def test_the_node_tests_pass_against_a_real_worker(node, celery_worker, session_factory, redis_urls, tmp_path):
    openssl = require_tool("openssl", "makes the certificate of the Redis the TLS test connects to")
    open_balances(session_factory)
    with tls_redis(openssl, tmp_path / "tls") as tls, locked_balances(session_factory):
        env = node_environment(redis_urls["broker"], redis_urls["scratch"], tls)
        done = run_node_tests(node, env)
    totals = details(done)
    assert done.returncode == 0, f"{done.stdout[-20000:]}\n{done.stderr[-5000:]}"
    assert totals.get("fail") == 0 and totals.get("pass", 0) >= 25, totals
    # A node test that skips itself (or is only a todo) would pass as a skip: none may.
    assert totals.get("skipped") == 0 and totals.get("todo") == 0 and totals.get("cancelled") == 0, totals
    assert USERS["expected_balances"]["user_ts_race"] == 0
    assert database_problems(session_factory) == []


# What may differ between two messages of the same call: ids, times, origins and signatures.
PER_MESSAGE_HEADERS = {"id", "root_id", "origin", "expires"}
PER_MESSAGE_PROPERTIES = {"correlation_id", "reply_to", "delivery_tag", "expiration"}


def test_every_message_is_the_one_send_task_sends_for_the_same_call(node, redis_client, redis_urls):
    url = redis_urls["scratch"]
    python = CreditsClient(url, SERVICE, USAGE_TEST_KEYS[SERVICE])
    try:
        for call in CALLS:
            _python_call(python, call)
    finally:
        python.close()
    by_celery = _drain(redis_client)
    done = subprocess.run(
        [node, str(PACKAGE / "build" / "test" / "tools" / "send-messages.js")],
        env={**node_environment(url, url)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    ours = _drain(redis_client)

    assert len(by_celery) == len(CALLS) + 1  # and the settle's
    assert [m["headers"]["task"] for m in ours] == [m["headers"]["task"] for m in by_celery]
    differences = [
        difference
        for theirs, mine in zip(by_celery, ours, strict=True)
        for difference in _differences(_comparable(theirs), _comparable(mine), mine["headers"]["task"])
    ]
    assert differences == [], "\n".join(differences)
    for message in ours:
        _check_per_message_fields(message)
    # The settle carries the debit's own message: its task id and signed fields.
    debit, settle = ours[-2:]
    settled = _kwargs(settle)
    assert settled["task"] == "usage.debit" and settled["task_id"] == debit["headers"]["id"]
    assert {name: settled[name] for name in ("service", "request", "signature")} == _kwargs(debit)


def _python_call(client: CreditsClient, call: dict[str, Any]) -> None:
    name, args, options = call["call"], call["args"], call["options"]
    if name == "outcome":
        client._send("usage.outcome", {"idempotency_key": args[0]}, wait=10)  # what outcome() sends
    elif name == "settle":
        client.settle(client.send_debit(*args, **options, wait=0.01))
    else:
        getattr(client, f"send_{name}")(*args, **options)


def _drain(redis_client) -> list[dict[str, Any]]:
    messages = []
    while (raw := redis_client.rpop("usage")) is not None:
        messages.append(json.loads(raw))
    return messages


def _kwargs(message: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(message["body"]))[1]


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    """The message with its body decoded and what differs per message (ids, times, origins and
    signatures, wherever they appear: the kwargs, their repr, the signed request) blanked."""
    message = json.loads(json.dumps(message))
    message["body"] = json.loads(base64.b64decode(message["body"]))
    kwargs = message["body"][1]
    for name in PER_MESSAGE_HEADERS & message["headers"].keys():
        message["headers"][name] = f"<{name}>"
    for name in PER_MESSAGE_PROPERTIES & message["properties"].keys():
        message["properties"][name] = f"<{name}>"
    blanks = {kwargs["signature"]: "<signature>"}
    if "task_id" in kwargs:
        blanks[kwargs["task_id"]] = "<debit id>"
    if found := re.search(r'"not_after": ([0-9.e+-]+)', kwargs["request"]):
        blanks[found.group(1)] = "<time>"
    text = json.dumps(message)
    for value, blank in blanks.items():
        text = text.replace(value, blank)
    return json.loads(text)


def _differences(theirs: dict[str, Any], mine: dict[str, Any], task: str) -> list[str]:
    """Field by field: every header, property, body part and kwarg that is not the same."""
    found = []
    for part in ("headers", "properties"):
        for name in sorted(theirs[part].keys() | mine[part].keys()):
            if theirs[part].get(name, "<missing>") != mine[part].get(name, "<missing>"):
                found.append(f"{task} {part}.{name}: {theirs[part].get(name)!r} != {mine[part].get(name)!r}")
    parts = {"headers", "properties", "body"}
    for name in sorted(theirs.keys() - parts | mine.keys() - parts):
        if theirs.get(name) != mine.get(name):
            found.append(f"{task} {name}: {theirs.get(name)!r} != {mine.get(name)!r}")
    args, kwargs, embed = theirs["body"]
    my_args, my_kwargs, my_embed = mine["body"]
    if (args, embed) != (my_args, my_embed):
        found.append(f"{task} body args/embed: {(args, embed)!r} != {(my_args, my_embed)!r}")
    for name in sorted(kwargs.keys() | my_kwargs.keys()):
        if kwargs.get(name) != my_kwargs.get(name):
            found.append(f"{task} kwargs.{name}: {kwargs.get(name)!r} != {my_kwargs.get(name)!r}")
    if list(kwargs) != list(my_kwargs):
        found.append(f"{task} kwargs order: {list(kwargs)} != {list(my_kwargs)}")
    return found


def _check_per_message_fields(message: dict[str, Any]) -> None:
    """What was blanked is right in its own way: one id, a signature the service verifies, an
    `expires` and `expiration` that are the request's deadline."""
    headers, properties, kwargs = message["headers"], message["properties"], _kwargs(message)
    task_id = headers["id"]
    assert headers["root_id"] == properties["correlation_id"] == task_id
    assert re.fullmatch(r"gen\d+@.+", headers["origin"])
    signed_task = kwargs.get("task", headers["task"])
    signed_id = kwargs.get("task_id", task_id)
    keys = [USAGE_TEST_KEYS[SERVICE]]
    assert verify(keys, REQUEST, SERVICE, signed_task, signed_id, kwargs["request"], kwargs["signature"])
    request = json.loads(kwargs["request"])
    if headers["task"] in ("usage.debit", "usage.hold"):  # the requests with the caller's deadline
        expires = datetime.fromisoformat(headers["expires"])
        assert abs(expires.timestamp() - request["not_after"]) < 1e-5
        assert expires.tzinfo == UTC or expires.utcoffset().total_seconds() == 0
        assert 0 <= int(properties["expiration"]) <= 30_000
    else:
        assert headers["expires"] is None and "expiration" not in properties


def test_npm_pack_ships_the_compiled_package_and_its_declarations(node):
    npm = require_tool("npm", "packs the TypeScript client")
    command = [npm, "pack", "--dry-run", "--json", "--ignore-scripts"]
    done = subprocess.run(command, cwd=PACKAGE, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (packed,) = json.loads(done.stdout)
    files = {entry["path"] for entry in packed["files"]}
    for module in ("index", "client", "answer-board", "message", "signing", "python", "answers", "errors", "edge"):
        assert {f"dist/{module}.js", f"dist/{module}.d.ts"} <= files, module
    assert not [path for path in files if path.startswith(("src/", "test/", "build/", "node_modules/"))]
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert list(manifest["dependencies"]) == ["@redis/client"]  # the one runtime dependency
    assert manifest["name"] == "@pedro-ai/credits" and manifest["type"] == "module"


def test_the_docs_show_the_deduct_credits_the_tests_run():
    """docs/usage-api.md's replacement of the app's `deductCredits` is test/app/deduct-credits.ts,
    imports aside (the app's own paths in the docs, the test's stand-ins in the file)."""
    docs = (PROJECT_ROOT / "docs" / "usage-api.md").read_text()
    section = docs[docs.index("\n## The Next.js app's own writes\n") :]
    tested = (PACKAGE / "test" / "app" / "deduct-credits.ts").read_text()
    body = tested[tested.index("\nexport class") :]
    assert body.strip() in section
    for line in ("import { sharedCreditsClient", "from '@/lib/credits/errors';", "export const runtime = 'nodejs';"):
        assert line in section, line
