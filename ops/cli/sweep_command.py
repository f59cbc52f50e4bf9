"""`pedro-webhooks sweep`: one sweeper pass now, as beat runs it every SWEEP_INTERVAL_SECONDS."""

from __future__ import annotations

import click

from ops.cli.context import CliContext, pass_context


@click.command()
@pass_context
def sweep(cli: CliContext) -> None:
    """Re-enqueue the pending rows whose message may be lost (one sweeper pass).

    Harmless to run at any time: processing is idempotent.
    """
    from ops.audit import Actor, record
    from worker.inbox.queue_probe import broker_view
    from worker.inbox.sweep import sweep as sweep_once
    from worker.task_base import send_follow_ups

    settings, app = cli.settings(), cli.celery_app()
    # As the beat-driven task does: rows whose message still waits in the queue, or is held by a
    # live worker, are left alone.
    view = broker_view(settings.redis_url.get_secret_value())
    with cli.sessions()() as session:
        with session.begin():
            ids = sweep_once(session, settings, oldest_waiting_id=view.oldest_waiting_id, held_ids=view.held_ids)
            record(
                session,
                Actor.cli(),
                "inbox.sweep",
                target="inbox",
                outcome=f"re-enqueued {len(ids)} pending row(s)",
                details={"inbox_ids": ids},
            )
        sent = send_follow_ups(session, app)
    click.echo(f"swept {len(ids)} pending row(s), enqueued {sent}" + (f": {ids}" if ids else ""))


COMMANDS = [sweep]
