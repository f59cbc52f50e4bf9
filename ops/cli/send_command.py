"""`pedro-webhooks send clerk|asaas EVENT`: a realistic delivery, signed as the provider signs
it, posted to the receiver (like `stripe trigger`).

It signs only with the local secrets `run` made (.local/local-secrets.env) unless told
`--i-know-this-is-real`: run in a production shell, it would otherwise grant real credits for a
fake payment. Every delivery it sends is marked (`SENT_BY_FIELD`) for `reconcile` and `user show`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import click

from models.settings import load_webhook_secrets
from ops import sample_deliveries as samples
from ops.cli.context import CliContext, pass_context
from ops.local.local_env import SECRETS_ENV
from ops.queries.status import DEFAULT_RECEIVER_URL

_T = TypeVar("_T")


def _receiver_url(source: str, url: str | None) -> str:
    if url:
        return url
    base = os.environ.get("RECEIVER_URL") or (
        f"http://127.0.0.1:{os.environ['PORT']}" if os.environ.get("PORT") else DEFAULT_RECEIVER_URL
    )
    return f"{base.rstrip('/')}/webhooks/{source}"


_common = [
    click.option("--user", default=samples.DEFAULT_USER, show_default=True, help="The Clerk user id the event names."),
    click.option("--plan", default=samples.DEFAULT_PLAN, show_default=True, help="Plan key (see `dev seed`)."),
    click.option("--payment", help="Reuse a payment id (Asaas pay_...) or payment attempt id (Clerk cpa_...)."),
    click.option("--email", help="The user's email (default <user>@example.org)."),
    click.option("--url", help="Receiver endpoint (default: the local one `run` started)."),
    click.option("--show", is_flag=True, help="Print the delivery's body."),
    click.option(
        "--i-know-this-is-real",
        "real_secrets",
        is_flag=True,
        help="Sign with secrets that are not the local ones `run` made (e.g. production's).",
    ),
]

# The variable each source signs with.
_SECRET_OF = {"clerk": "CLERK_WEBHOOK_SIGNING_SECRET", "asaas": "ASAAS_WEBHOOK_TOKEN"}


class RefusedToSign(click.ClickException):
    """Nothing was sent: exit code 2, as for every refusal before the command does anything."""

    exit_code = 2


def _only_local_secrets(cli: CliContext, source: str, real_secrets: bool) -> None:
    """Refuse to sign with a secret that is not the local one, unless --i-know-this-is-real.
    (An unset one is left to the signing step, which says so.) Names the variable, never its value."""
    variable = _SECRET_OF[source]
    if not os.environ.get(variable) or cli.local.holds_local_secret(variable):
        return
    if not real_secrets:
        raise RefusedToSign(
            f"{variable} is not the local secret `run` keeps in {cli.local.folder / SECRETS_ENV} (it is set "
            "in the environment, maybe production's, and the delivery would pass for a real one): "
            "pass --i-know-this-is-real to sign with it anyway"
        )
    click.echo(f"signing with {variable} from the environment (--i-know-this-is-real)", err=True)


def _with_common(function: Any) -> Any:
    for option in reversed(_common):
        function = option(function)
    return function


@click.group()
def send() -> None:
    """Send a test delivery to a receiver, signed with the local secret or token `run` made
    (others only with --i-know-this-is-real), marked as sent by this command.

    \b
    pedro-webhooks send clerk user.created --user user_demo
    pedro-webhooks send asaas PAYMENT_CONFIRMED --user user_demo      # grants the demo plan
    pedro-webhooks send asaas PAYMENT_REFUNDED --user user_demo --payment pay_...
    """


@send.command()
@click.argument("event_type", type=click.Choice(samples.CLERK_EVENTS))
@_with_common
@click.option("--status", default="paid", show_default=True, help="paymentAttempt.updated: the attempt's status.")
@pass_context
def clerk(cli: CliContext, event_type: str, status: str, **options: Any) -> None:
    """Send a Clerk (Svix-signed) EVENT_TYPE."""
    _only_local_secrets(cli, "clerk", options["real_secrets"])
    secrets = cli.guard(load_webhook_secrets)
    opts = _options(options, status=status)
    body = samples.marked_as_sent(_guarded(lambda: samples.clerk_delivery(event_type, opts)))
    signed = _guarded(lambda: samples.sign_clerk(body, secrets.clerk_secrets))
    _post(cli, _receiver_url("clerk", options["url"]), signed, body, options["show"])


@send.command()
@click.argument("event_type", type=click.Choice(samples.ASAAS_EVENT_TYPES))
@_with_common
@click.option("--value", default=str(samples.DEFAULT_VALUE), show_default=True, help="The payment's value (BRL).")
@click.option("--refunded", help="PAYMENT_PARTIALLY_REFUNDED: the refunded amount (default: half the value).")
@pass_context
def asaas(cli: CliContext, event_type: str, value: str, refunded: str | None, **options: Any) -> None:
    """Send an Asaas EVENT_TYPE, with the access token header."""
    _only_local_secrets(cli, "asaas", options["real_secrets"])
    secrets = cli.guard(load_webhook_secrets)
    opts = _options(
        options, value=_money(value, "--value"), refunded=_money(refunded, "--refunded") if refunded else None
    )
    body = samples.marked_as_sent(_guarded(lambda: samples.asaas_delivery(event_type, opts)))
    signed = _guarded(lambda: samples.sign_asaas(body, secrets.asaas_tokens))
    _post(cli, _receiver_url("asaas", options["url"]), signed, body, options["show"])


def _options(options: dict[str, Any], **extra: Any) -> samples.Options:
    return samples.Options(
        user=options["user"], plan=options["plan"], payment=options["payment"], email=options["email"], **extra
    )


def _money(text: str, name: str) -> Decimal:
    try:
        value = Decimal(text)
    except ArithmeticError:
        raise click.BadParameter(f"{text!r} is not an amount", param_hint=name) from None
    if not value.is_finite() or value < 0:
        raise click.BadParameter(f"{text!r} is not an amount", param_hint=name)
    return value


def _guarded(step: Callable[[], _T]) -> _T:
    try:
        return step()
    except samples.DeliveryError as exc:
        raise click.ClickException(str(exc)) from None


def _post(cli: CliContext, url: str, signed: samples.Signed, body: dict[str, Any], show: bool) -> None:
    if not url.startswith(("http://", "https://")):
        raise click.BadParameter("must be an http:// or https:// URL", param_hint="--url")
    if show:
        click.echo(json.dumps(body, indent=2, ensure_ascii=False))
    try:
        answer = samples.post(url, signed)
    except samples.DeliveryError as exc:
        cli.unreachable(str(exc))
    click.echo(
        f"{signed.source} {body.get('type') or body.get('event')} {signed.event_id} -> {url}: "
        f"{answer.status} {answer.body.strip()}"
    )
    if answer.status != 200:
        raise SystemExit(1)


COMMANDS = [send]
