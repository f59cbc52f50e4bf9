"""`send` against a running receiver (the Procfile's gunicorn) and a real worker: the first five
minutes of the README (`dev seed` -> `send` -> `user show`), as an operator runs them, with the
local secrets `run` leaves in .local/local-secrets.env; any other secret only when told
`--i-know-this-is-real`, and every delivery marked for `reconcile` and `user show`."""

from __future__ import annotations

import filecmp
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.inbox import WebhookInbox
from ops import sample_deliveries
from ops.local.local_env import SECRETS_ENV, write_env_file
from tests.conftest import ASAAS_TEST_TOKEN, CLERK_TEST_SECRET
from tests.support.billing import asaas_event, balance
from tests.support.cli import invoke, run_command
from tests.support.inbox import deliver
from tests.support.receiver_support import inbox_rows, unused_port
from tests.support.servers import PROJECT_ROOT

FIXTURES = PROJECT_ROOT / "tests" / "fixtures" / "payloads"
USER = "user_sendtest"
SECRET_VARIABLES = ("CLERK_WEBHOOK_SIGNING_SECRET", "ASAAS_WEBHOOK_TOKEN")


def _local_secrets(folder: Path, clerk: str = CLERK_TEST_SECRET, asaas: str = ASAAS_TEST_TOKEN) -> Path:
    """What `run` leaves for the commands beside it: the webhook secrets in local-secrets.env."""
    write_env_file(folder / SECRETS_ENV, {"CLERK_WEBHOOK_SIGNING_SECRET": clerk, "ASAAS_WEBHOOK_TOKEN": asaas})
    return folder


@pytest.fixture(scope="module")
def local_dir(tmp_path_factory) -> Path:
    return _local_secrets(tmp_path_factory.mktemp("local"))


def _env_without_secrets() -> dict[str, str]:
    """The operator's shell in a second terminal: no webhook secret exported (the receiver, a
    process of its own, keeps the run's)."""
    return {name: value for name, value in os.environ.items() if name not in SECRET_VARIABLES}


def _procfile(name: str) -> list[str]:
    for line in (PROJECT_ROOT / "Procfile").read_text().splitlines():
        process, _, command = line.partition(":")
        if process.strip() == name:
            return shlex.split(command)
    raise AssertionError(f"the Procfile has no {name} process")


@pytest.fixture(scope="module")
def receiver_url(settings, tmp_path_factory):
    """The Procfile's `web` on a free port, on the run's database and broker."""
    port = unused_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("metrics")),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    log = tmp_path_factory.mktemp("web") / "web.log"
    with log.open("wb") as out:
        process = subprocess.Popen(_procfile("web"), env=env, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "Booting worker" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)


def _send(receiver_url: str, local_dir: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + 20
    while True:  # the gunicorn worker may still be loading the app
        result = run_command(
            "send",
            source,
            *args,
            "--url",
            f"{receiver_url}/webhooks/{source}",
            env=_env_without_secrets(),
            local_dir=local_dir,
        )
        if result.returncode != 2 or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def _final_row(session_factory, event_id: str, timeout: float = 30) -> WebhookInbox:
    deadline = time.monotonic() + timeout
    while True:
        rows = [row for row in inbox_rows(session_factory) if row.external_id == event_id]
        if rows and rows[0].status != "pending":
            return rows[0]
        assert time.monotonic() < deadline, f"{event_id} never left pending: {rows}"
        time.sleep(0.1)


def _event_id(output: str) -> str:
    # "clerk user.created msg_... -> http://...: 200 {...}"
    return output.split()[2]


def test_seed_then_send_grants_the_demo_plan_and_user_show_explains_it(
    celery_worker, receiver_url, local_dir, session_factory
):
    seeded = invoke("dev", "seed")
    assert seeded.exit_code == 0 and "Plan 'demo': created" in seeded.output
    assert "Plan 'demo': already there" in invoke("dev", "seed").output

    created = _send(receiver_url, local_dir, "clerk", "user.created", "--user", USER)
    assert created.returncode == 0, created.stderr
    assert ": 200 " in created.stdout and '"status":"accepted"' in created.stdout
    row = _final_row(session_factory, _event_id(created.stdout))
    assert (row.status, row.detail) == ("processed", "user created with 100 signup credits")
    assert row.payload[sample_deliveries.SENT_BY_FIELD] == "pedro-webhooks send"

    paid = _send(receiver_url, local_dir, "asaas", "PAYMENT_CONFIRMED", "--user", USER, "--payment", "pay_sendtest")
    assert paid.returncode == 0, paid.stderr
    row = _final_row(session_factory, _event_id(paid.stdout))
    assert row.status == "processed" and row.detail.startswith("granted 500 credits of plan demo"), row.detail
    again = _send(receiver_url, local_dir, "asaas", "PAYMENT_RECEIVED", "--user", USER, "--payment", "pay_sendtest")
    assert _final_row(session_factory, _event_id(again.stdout)).detail.startswith(
        "asaas payment pay_sendtest already granted"
    )
    assert balance(session_factory, USER) == 600

    attempt = _send(receiver_url, local_dir, "clerk", "paymentAttempt.updated", "--user", USER)
    assert _final_row(session_factory, _event_id(attempt.stdout)).detail.startswith("granted 500 credits of plan demo")

    refund = _send(receiver_url, local_dir, "asaas", "PAYMENT_REFUNDED", "--user", USER, "--payment", "pay_sendtest")
    assert _final_row(session_factory, _event_id(refund.stdout)).status == "processed"
    shown = json.loads(invoke("user", "show", USER, "--json").output)
    assert (shown["balance"], shown["balance_matches_ledger"]) == (600, True)
    assert [e["kind"] for e in shown["ledger"]] == ["reversal", "grant", "grant", "signup"]
    _assert_flagged_as_sent(shown, reconciled=json.loads(invoke("reconcile", "--user", USER, "--json").output))


def _assert_flagged_as_sent(shown: dict, reconciled: list[dict]) -> None:
    """Every entry came from a delivery `send` made: `user show` and `reconcile` say so."""
    assert [e["sent_by_send"] for e in shown["ledger"]] == [True, True, True, True]
    sent = {(d["source"], d["event_type"]): d["ledger_entry_ids"] for d in shown["sent_by_send"]}
    ids = {e["kind"]: e["id"] for e in reversed(shown["ledger"])}  # the first grant is the Asaas one
    assert sent[("clerk", "user.created")] == [ids["signup"]]
    assert ids["reversal"] in sent[("asaas", "PAYMENT_REFUNDED")]
    assert {d["check"] for d in reconciled} == {"sent_by_send"}
    assert sorted(
        d["found"] for d in reconciled if d["subject"] == f"inbox row {shown['sent_by_send'][0]['inbox_id']}"
    ) == [100]
    assert all("was sent by `pedro-webhooks send`" in d["detail"] for d in reconciled)
    printed = invoke("user", "show", USER).output
    assert "deliveries sent by `pedro-webhooks send` (test deliveries, not the provider's):" in printed
    assert invoke("reconcile", "--user", USER).exit_code == 1


def test_a_delivery_the_provider_sent_is_not_flagged(celery_worker, receiver_url, local_dir, session_factory):
    """Only what `send` made is flagged: a provider's delivery (unmarked) for the same user is not."""
    invoke("dev", "seed")
    created = _send(receiver_url, local_dir, "clerk", "user.created", "--user", "user_mixed")
    _final_row(session_factory, _event_id(created.stdout))
    real = asaas_event("PAYMENT_CONFIRMED", id="pay_real", externalReference="user_mixed|demo", event_id="evt_real")
    assert deliver(session_factory, "asaas", real).status == "processed"
    shown = json.loads(invoke("user", "show", "user_mixed", "--json").output)
    assert [(e["kind"], e["sent_by_send"]) for e in shown["ledger"]] == [("grant", False), ("signup", True)]
    reconciled = json.loads(invoke("reconcile", "--user", "user_mixed", "--json").output)
    assert [(d["check"], d["found"]) for d in reconciled] == [("sent_by_send", 100)]


def test_send_refuses_a_secret_that_is_not_the_local_one_and_says_why(
    receiver_url, local_dir, tmp_path, session_factory
):
    """A production shell: a secret exported that is not the local one `run` made, or no local
    secrets at all (a server has no .local/)."""
    url = f"{receiver_url}/webhooks/asaas"
    production = {**os.environ, "ASAAS_WEBHOOK_TOKEN": "prod-token-0123456789"}
    for env, folder in ((production, local_dir), (dict(os.environ), tmp_path)):
        result = run_command("send", "asaas", "PAYMENT_CONFIRMED", "--url", url, env=env, local_dir=folder)
        assert (result.returncode, result.stdout) == (2, "")
        [line] = result.stderr.splitlines()
        assert line == (
            f"Error: ASAAS_WEBHOOK_TOKEN is not the local secret `run` keeps in {folder / SECRETS_ENV} (it is "
            "set in the environment, maybe production's, and the delivery would pass for a real one): "
            "pass --i-know-this-is-real to sign with it anyway"
        )
        assert env["ASAAS_WEBHOOK_TOKEN"] not in result.stderr
    assert inbox_rows(session_factory) == []  # nothing was sent


def test_send_signs_with_another_secret_when_told_and_marks_the_delivery(receiver_url, session_factory):
    result = run_command(
        "send", "asaas", "PAYMENT_CREATED", "--url", f"{receiver_url}/webhooks/asaas", "--i-know-this-is-real"
    )
    assert result.returncode == 0 and ": 200 " in result.stdout, result.stderr
    assert result.stderr.strip() == "signing with ASAAS_WEBHOOK_TOKEN from the environment (--i-know-this-is-real)"
    assert ASAAS_TEST_TOKEN not in result.stdout + result.stderr
    [row] = inbox_rows(session_factory)
    assert row.payload[sample_deliveries.SENT_BY_FIELD] == "pedro-webhooks send"


def test_the_local_secret_exported_in_the_shell_is_still_the_local_one(receiver_url, local_dir, session_factory):
    """`source .local/local-secrets.env`, or a process `run` started: the same values, accepted."""
    result = run_command(
        "send", "clerk", "user.created", "--url", f"{receiver_url}/webhooks/clerk", local_dir=local_dir
    )
    assert result.returncode == 0 and ": 200 " in result.stdout, result.stderr
    assert result.stderr == ""


def test_a_wrong_secret_is_refused_and_says_which_check(receiver_url, tmp_path):
    wrong = _local_secrets(tmp_path, clerk="whsec_" + "c29tZSBvdGhlciBzZWNyZXQ=")
    url = f"{receiver_url}/webhooks/clerk"
    result = run_command("send", "clerk", "user.created", "--url", url, env=_env_without_secrets(), local_dir=wrong)
    assert result.returncode == 1
    assert ": 401 " in result.stdout and '"error":"bad_signature"' in result.stdout


def test_an_unreachable_receiver_is_one_line_and_exit_code_2(local_dir):
    url = f"http://127.0.0.1:{unused_port()}/webhooks/asaas"
    result = run_command(
        "send", "asaas", "PAYMENT_CREATED", "--url", url, env=_env_without_secrets(), local_dir=local_dir
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"Error: cannot reach the receiver at {url}: [Errno 111] Connection refused"


def test_the_shipped_examples_are_the_documented_ones():
    """`send` builds from copies of the example deliveries (the package never reads tests/)."""
    shipped = sample_deliveries.FOLDER
    for source in ("clerk", "asaas"):
        names = sorted(path.name for path in (FIXTURES / source).glob("*.json"))
        assert sorted(path.name for path in (shipped / source).glob("*.json")) == names
        _match, mismatch, errors = filecmp.cmpfiles(FIXTURES / source, shipped / source, names, shallow=False)
        assert (mismatch, errors) == ([], [])


@pytest.mark.parametrize("event_type", sample_deliveries.CLERK_EVENTS)
def test_every_clerk_event_is_signed_as_svix_signs_it(event_type):
    from svix.webhooks import Webhook

    from tests.conftest import CLERK_TEST_SECRET

    other = "whsec_" + "b3RoZXItc2VjcmV0LWZvci1yb3RhdGlvbi10ZXN0cw=="
    body = sample_deliveries.clerk_delivery(event_type, sample_deliveries.Options(user=USER))
    signed = sample_deliveries.sign_clerk(body, [other, CLERK_TEST_SECRET])  # during a rotation: both
    for secret in (other, CLERK_TEST_SECRET):
        Webhook(secret).verify(signed.body, signed.headers)  # raises if not
    assert json.loads(signed.body)["type"] == event_type


@pytest.mark.parametrize("event_type", sample_deliveries.ASAAS_EVENT_TYPES)
def test_every_asaas_event_names_the_user_and_plan(event_type):
    body = sample_deliveries.asaas_delivery(event_type, sample_deliveries.Options(user=USER, plan="pro"))
    obj = next(body[kind] for kind in ("payment", "subscription", "checkout") if kind in body)
    assert (body["event"], obj["externalReference"]) == (event_type, f"{USER}|pro")
    assert sample_deliveries.sign_asaas(body, ["old", "new"]).headers["asaas-access-token"] == "new"
