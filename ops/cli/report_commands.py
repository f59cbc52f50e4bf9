"""`pedro-webhooks report ...`: the seed's analytics and the credits flow."""

from __future__ import annotations

from datetime import datetime

import click

from models.ledger import LedgerKind
from ops.cli.context import CliContext, pass_context
from ops.cli.output import json_option, print_json, print_table
from ops.cli.params import MOMENT
from ops.queries import reports

since_option = click.option("--since", type=MOMENT, help="From this time on: 30d, or an ISO date/time (UTC).")


@click.group()
def report() -> None:
    """Analytics from the database (read only)."""


@report.command("users-by-day")
@since_option
@json_option
@pass_context
def users_by_day(cli: CliContext, since: datetime | None, as_json: bool) -> None:
    """User growth: new users per day and the running total."""
    with cli.sessions()() as session:
        rows = reports.users_by_day(session, since)
    if as_json:
        print_json([{"day": r.day, "new_users": r.new_users, "total_users": r.total_users} for r in rows])
    else:
        print_table(["day", "new users", "total"], [[r.day, r.new_users, r.total_users] for r in rows])


@report.command()
@since_option
@click.option("--user", "clerk_user_id", help="Only this Clerk user's usage.")
@json_option
@pass_context
def operations(cli: CliContext, since: datetime | None, clerk_user_id: str | None, as_json: bool) -> None:
    """Top operations: uses, credits, average credits per use, credits refunded."""
    with cli.sessions()() as session:
        rows = reports.operations(session, since, clerk_user_id)
    if as_json:
        print_json(
            [
                {
                    "operation": r.operation,
                    "uses": r.uses,
                    "credits": r.credits,
                    "average_credits": r.average_credits,
                    "refunded": r.refunded,
                }
                for r in rows
            ]
        )
    else:
        print_table(
            ["operation", "uses", "credits", "average", "refunded"],
            [[r.operation, r.uses, r.credits, r.average_credits, r.refunded] for r in rows],
        )


@report.command("low-balance")
@click.option("--threshold", default=10, show_default=True, type=int, help="Fewer credits than this.")
@json_option
@pass_context
def low_balance(cli: CliContext, threshold: int, as_json: bool) -> None:
    """Active users with fewer than --threshold credits, lowest first."""
    with cli.sessions()() as session:
        rows = reports.low_balance(session, threshold)
    if as_json:
        print_json([{"clerk_user_id": r.clerk_user_id, "email": r.email, "credits": r.credits_remaining} for r in rows])
    else:
        print_table(["user", "email", "credits"], [[r.clerk_user_id, r.email, r.credits_remaining] for r in rows])


@report.command("credits-flow")
@since_option
@json_option
@pass_context
def credits_flow(cli: CliContext, since: datetime | None, as_json: bool) -> None:
    """Credits moved per day, by ledger kind (grants, reversals, usage, refunds, holds...), the net,
    and how many credit holds were made, captured, released and expired."""
    with cli.sessions()() as session:
        rows = reports.credits_flow(session, since)
    kinds = [kind.value for kind in LedgerKind]
    events = list(reports.HOLD_EVENTS)
    if as_json:
        print_json([{"day": r.day, **r.by_kind, "net": r.net, **r.holds} for r in rows])
    else:
        table = [[r.day, *(r.by_kind[k] for k in kinds), r.net, *(r.holds[e] for e in events)] for r in rows]
        print_table(["day", *kinds, "net", *events], table)


COMMANDS = [report]
