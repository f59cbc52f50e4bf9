"""`pedro-webhooks credits grant|adjust`: support credits, through the ledger, once per key."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from ops.audit import login_name
from ops.cli.context import CliContext, pass_context

if TYPE_CHECKING:
    from ops.support_credits import SupportChange

_options = [
    click.option("--user", "clerk_user_id", required=True, help="The Clerk user id."),
    click.option("--reason", required=True, help="Why (kept in the ledger entry's reference)."),
    click.option(
        "--key",
        required=True,
        help="Idempotency key, e.g. the support ticket: the same key applies once (surrounding spaces ignored).",
    ),
    click.option("--operator", default=login_name, show_default="your login", help="Who is doing it."),
]


def _with_options(function: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_options):
        function = option(function)
    return function


@click.group()
def credits() -> None:
    """Give or take credits by hand (support), as ledger `adjustment` entries."""


@credits.command()
@_with_options
@click.option(
    "--amount",
    required=True,
    type=click.IntRange(min=1),
    help="Credits to give (> 0, at most SUPPORT_CREDITS_MAX_AMOUNT).",
)
@pass_context
def grant(cli: CliContext, clerk_user_id: str, reason: str, key: str, operator: str, amount: int) -> None:
    """Give AMOUNT credits to a user."""
    _change(cli, clerk_user_id, amount, reason, key, operator, allow_negative=False)


@credits.command()
@_with_options
@click.option(
    "--amount",
    required=True,
    type=int,
    help="Credits to add (positive) or take (negative), at most SUPPORT_CREDITS_MAX_AMOUNT either way.",
)
@click.option("--allow-negative", is_flag=True, help="Let a negative amount take the balance below zero.")
@pass_context
def adjust(
    cli: CliContext, clerk_user_id: str, reason: str, key: str, operator: str, amount: int, allow_negative: bool
) -> None:
    """Correct a balance by AMOUNT credits (either sign). Without --allow-negative it never takes
    a balance below zero."""
    _change(cli, clerk_user_id, amount, reason, key, operator, allow_negative=allow_negative)


class _OutOfBounds(click.ClickException):
    exit_code = 2  # refused before anything happened, as click refuses a malformed option


def _change(
    cli: CliContext, clerk_user_id: str, amount: int, reason: str, key: str, operator: str, *, allow_negative: bool
) -> None:
    from ops.support_credits import AmountOutOfBounds, SupportCreditError, check_amount, normalised_key

    max_amount = cli.support_credit_settings().support_credits_max_amount
    try:  # before the database is reached
        check_amount(amount, max_amount)
        key = normalised_key(key)
    except AmountOutOfBounds as exc:
        raise _OutOfBounds(str(exc)) from None
    except SupportCreditError as exc:
        raise click.ClickException(str(exc)) from None
    _apply(cli, clerk_user_id, amount, reason, key, operator, max_amount=max_amount, allow_negative=allow_negative)


def _apply(
    cli: CliContext,
    clerk_user_id: str,
    amount: int,
    reason: str,
    key: str,
    operator: str,
    *,
    max_amount: int,
    allow_negative: bool,
) -> None:
    from ops.actions.support import SupportRequest, change_credits
    from ops.audit import Actor
    from ops.support_credits import SupportCreditError

    command = click.get_current_context().command.name
    request = SupportRequest(clerk_user_id, amount, reason, key, allow_negative)
    try:
        change = change_credits(
            cli.sessions(), Actor.cli(operator), request, max_amount=max_amount, action=f"credits.{command}"
        )
    except SupportCreditError as exc:
        raise click.ClickException(str(exc)) from None
    _report(change, clerk_user_id)


def _report(change: SupportChange, clerk_user_id: str) -> None:
    if change.applied_now:
        click.echo(
            f"{change.delta:+d} credits to {clerk_user_id}: balance {change.balance_after} "
            f"(ledger entry {change.entry_id})"
        )
    else:
        click.echo(
            f"already applied with key {change.key!r}: ledger entry {change.entry_id} ({change.delta:+d}); "
            "nothing changed"
        )


COMMANDS = [credits]
