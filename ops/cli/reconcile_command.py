"""`pedro-webhooks reconcile [--user]`: balances against the ledger, grants against payments,
reversals against grants, and the credits of `pedro-webhooks send`'s test deliveries. Lists
each finding and exits 1; it never fixes anything."""

from __future__ import annotations

import click

from ops.cli.context import CliContext, pass_context
from ops.cli.output import json_option, print_json, print_table


@click.command()
@click.option("--user", "clerk_user_id", help="Only this Clerk user id.")
@json_option
@pass_context
def reconcile(cli: CliContext, clerk_user_id: str | None, as_json: bool) -> None:
    """Check every balance against the sum of its ledger, every grant against its payment and
    every reversal against its grant, and flag the ledger entries of deliveries `pedro-webhooks
    send` made. Exit code 1 when anything is found. It never fixes: a mismatch is a bug or a
    write behind the service's back, a sent delivery's credits a test, for a person to look at."""
    from ops.queries.reconcile import reconcile as find_mismatches

    settings = cli.database_settings()
    with cli.sessions()() as session:
        mismatches = find_mismatches(session, settings.service_schema, clerk_user_id)
    if as_json:
        print_json([m.as_json() for m in mismatches])
    elif mismatches:
        print_table(
            ["check", "user", "subject", "expected", "found", "detail"],
            [[m.check, m.clerk_user_id, m.subject, m.expected, m.found, m.detail] for m in mismatches],
        )
    else:
        scope = f"user {clerk_user_id}" if clerk_user_id else "every user"
        click.echo(f"ok: balances, grants and reversals agree for {scope}")
    if mismatches:
        raise SystemExit(1)


COMMANDS = [reconcile]
