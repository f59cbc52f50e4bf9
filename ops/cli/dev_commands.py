"""`pedro-webhooks dev seed`: a demo Plan and AdminSettings, so `send` moves credits."""

from __future__ import annotations

import click

from ops.cli.context import CliContext, pass_context


@click.group()
def dev() -> None:
    """Helpers for a local service."""


@dev.command()
@pass_context
def seed(cli: CliContext) -> None:
    """Create the demo Plan that `send`'s defaults name (plan key `demo`, 500 credits) and the
    AdminSettings row with the seed's feature costs. Existing rows are left as they are."""
    from ops.audit import Actor, record
    from ops.demo_seed import seed_demo

    with cli.sessions().begin() as session:
        seeded = seed_demo(session)
        outcome = f"Plan {seeded.plan_id!r} " + ("created" if seeded.plan_created else "already there")
        record(session, Actor.cli(), "dev.seed", target=f"plan {seeded.plan_id}", outcome=outcome, details={})
    state = "created" if seeded.plan_created else "already there"
    click.echo(f"Plan {seeded.plan_id!r}: {state}")
    click.echo(f"AdminSettings featureCosts: {seeded.feature_costs}")


COMMANDS = [dev]
