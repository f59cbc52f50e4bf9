"""`pedro-webhooks audit`: the audit log, newest first, as the console's /audit shows it."""

from __future__ import annotations

import click

from ops.cli.context import CliContext, pass_context
from ops.cli.output import json_option, print_json, print_table


@click.command()
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--before", "before_id", type=click.IntRange(1), help="Entries older than this one (the next page).")
@json_option
@pass_context
def audit(cli: CliContext, limit: int, before_id: int | None, as_json: bool) -> None:
    """Who did what, when and from where: the console's actions and the CLI's writes (credits,
    inbox replay and prune, sweep, dev seed)."""
    from ops.audit import recent_entries

    with cli.sessions()() as session:
        entries = recent_entries(session, limit=limit, before_id=before_id)
    if as_json:
        print_json(
            [
                {
                    "id": e.id,
                    "at": e.at,
                    "actor": e.actor,
                    "channel": e.channel,
                    "address": e.address,
                    "action": e.action,
                    "target": e.target,
                    "outcome": e.outcome,
                    "details": e.details,
                }
                for e in entries
            ]
        )
        return
    print_table(
        ["#", "when", "who", "from", "action", "target", "outcome"],
        [[e.id, e.at, e.actor, e.address, e.action, e.target, e.outcome] for e in entries],
        empty="no entries",
    )


COMMANDS = [audit]
