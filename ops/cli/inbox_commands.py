"""`pedro-webhooks inbox status|list|show|replay|prune`: what arrived, what became of it."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

import click

from models.inbox import InboxStatus, Source, WebhookInbox
from models.ledger import CreditLedgerEntry
from ops.cli.context import CliContext, pass_context
from ops.cli.output import age, json_option, print_json, print_table, shorten
from ops.cli.params import DURATION, MOMENT

STATUSES = [status.value for status in InboxStatus]


@click.group()
def inbox() -> None:
    """The webhook inbox: what arrived, what became of it, replaying and pruning it."""


@inbox.command()
@json_option
@pass_context
def status(cli: CliContext, as_json: bool) -> None:
    """Count inbox rows by source and status."""
    from ops.queries.inbox_rows import counts_by_status

    with cli.sessions()() as session:
        counts = counts_by_status(session)
    if as_json:
        print_json([{"source": c.source, "status": c.status, "count": c.count} for c in counts])
        return
    for count in counts:
        click.echo(f"{count.source:6s} {count.status:10s} {count.count}")


@inbox.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="Repeatable.")
@click.option("--source", "sources", multiple=True, type=click.Choice([s.value for s in Source]))
@click.option("--type", "event_types", multiple=True, help="Event type, e.g. PAYMENT_CONFIRMED (repeatable).")
@click.option("--user", "clerk_user_id", help="Rows that name this Clerk user id (user events and billing events).")
@click.option("--since", type=MOMENT, help="Received since: 2h, 7d, or an ISO date/time (UTC).")
@click.option("--until", type=MOMENT, help="Received before: 2h (ago), or an ISO date/time (UTC).")
@click.option("--event-id", "external_id", help="The provider's event id (svix-id, Asaas `id`).")
@click.option("--before", "before_id", type=click.IntRange(1), help="Rows older than this id (the next page).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@pass_context
def list_rows(
    cli: CliContext,
    statuses: tuple[str, ...],
    sources: tuple[str, ...],
    event_types: tuple[str, ...],
    clerk_user_id: str | None,
    since: datetime | None,
    until: datetime | None,
    external_id: str | None,
    before_id: int | None,
    limit: int,
    as_json: bool,
) -> None:
    """List inbox rows, newest first (the console's /inbox, as a table). Page on with
    --before, the last id shown."""
    from ops.queries.inbox_rows import InboxQuery, list_rows

    query = InboxQuery(
        statuses=statuses,
        sources=sources,
        event_types=event_types,
        clerk_user_id=clerk_user_id,
        since=since,
        until=until,
        external_id=external_id,
        limit=limit,
        before_id=before_id,
    )
    with cli.sessions()() as session:
        rows = list_rows(session, query)
    if as_json:
        print_json([_row_summary(row) for row in rows])
        return
    print_table(
        ["id", "received", "source", "type", "status", "tries", "detail / last error"],
        [
            [
                row.id,
                row.received_at,
                row.source,
                row.event_type,
                row.status,
                row.attempts,
                shorten(row.last_error or row.detail),
            ]
            for row in rows
        ],
        empty="no rows match",
    )


@inbox.command()
@click.argument("inbox_id", type=int)
@json_option
@pass_context
def show(cli: CliContext, inbox_id: int, as_json: bool) -> None:
    """One row: its payload, attempts, last error, detail, and what it changed (the
    SubscriptionEvent it logged, the ledger entries and grant state of the payment it names)."""
    from ops.queries.inbox_rows import effects_of, get_row

    with cli.sessions()() as session:
        row = get_row(session, inbox_id)
        if row is None:
            raise click.ClickException(f"no inbox row {inbox_id}")
        effects = effects_of(session, row)
    if as_json:
        print_json(
            {
                **_row_summary(row),
                "payload": row.payload,
                "effects": {
                    "subscription_events": [
                        {"id": e.id, "event_type": e.event_type, "status": e.status, "plan_key": e.plan_key}
                        for e in effects.subscription_events
                    ],
                    "ledger": [_entry(entry) for entry in effects.ledger_entries],
                    "payments": [
                        {
                            "provider": p.provider,
                            "payment_id": p.payment_id,
                            "credits_granted": p.credits_granted,
                            "credits_reversed": p.credits_reversed,
                            "granted_at": p.granted_at,
                        }
                        for p in effects.payments
                    ],
                },
            }
        )
        return
    fields = [
        ("id", row.id),
        ("source", row.source),
        ("provider event id", row.external_id),
        ("type", row.event_type),
        ("status", row.status),
        ("received", row.received_at),
        ("attempts", f"{row.attempts} (crashes: {row.crashes})"),
        ("last attempt", row.last_attempt_at),
        ("processed", row.processed_at),
        ("detail", row.detail),
        ("last error", row.last_error),
    ]
    for name, value in fields:
        click.echo(f"{name + ':':19s}{'-' if value is None else value}")
    click.echo("\npayload:")
    click.echo(json.dumps(row.payload, indent=2, ensure_ascii=False))
    click.echo("\nSubscriptionEvent logged:")
    print_table(
        ["id", "event type", "status", "plan key", "occurred"],
        [[e.id, e.event_type, e.status, e.plan_key, e.occurred_at] for e in effects.subscription_events],
    )
    click.echo("\nledger entries (of the user it created, or of the payment it names):")
    print_table(
        ["entry", "user", "kind", "delta", "balance after", "key", "reference"],
        [
            [e.id, e.clerk_user_id, e.kind, f"{e.delta:+d}", e.balance_after, e.idempotency_key, e.reference]
            for e in effects.ledger_entries
        ],
    )
    for payment in effects.payments:
        click.echo(
            f"\npayment {payment.provider} {payment.payment_id}: granted {payment.credits_granted}"
            f" ({payment.granted_at or 'not granted'}), reversed {payment.credits_reversed}"
        )


@inbox.command()
@click.argument("inbox_ids", nargs=-1, type=int)
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(
        [status.value for status in InboxStatus if status not in (InboxStatus.PENDING, InboxStatus.PROCESSED)]
    ),
    help="Replay every row with this status (repeatable).",
)
@click.option("--since", type=MOMENT, help="With --status: only rows received since (2h, 7d, or an ISO time).")
@pass_context
def replay(cli: CliContext, inbox_ids: tuple[int, ...], statuses: tuple[str, ...], since: datetime | None) -> None:
    """Put rows back to pending and enqueue them: INBOX_IDS (any status but pending, processed
    included) and every row with a --status.

    Processing is idempotent: a replayed row changes nothing that was already applied. Fix the
    cause first (a missing Plan, a missing user): a replay runs the same rules again.
    """
    from ops.actions.replay import replay as replay_rows
    from ops.audit import Actor

    if not inbox_ids and not statuses:
        raise click.UsageError("name inbox ids or --status")
    done = replay_rows(cli.sessions(), cli.celery_app(), Actor.cli(), inbox_ids, statuses, since)
    click.echo(f"replayed {len(done.inbox_ids)} row(s), enqueued {done.enqueued}: {done.inbox_ids}")


@inbox.command()
@click.option("--older-than", required=True, type=DURATION, help="e.g. 90d: rows that ended longer ago than this.")
@click.option("--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@pass_context
def prune(cli: CliContext, older_than: timedelta, batch_size: int, dry_run: bool) -> None:
    """Delete `processed` and `ignored` rows that ended more than --older-than ago, in batches
    (one transaction each). Pending rows and rows still to be replayed or looked at
    (`unmatched`, `needs_attention`, `failed`) are kept whatever their age; reconcile reads the
    ledger and payment state, never the inbox. At least 14 days: providers re-send for that long.
    """
    from ops.actions.retention import prune as prune_rows
    from ops.audit import Actor
    from ops.queries.inbox_rows import MIN_RETENTION, count_prunable

    if older_than < MIN_RETENTION:
        raise click.BadParameter(
            f"keep at least {MIN_RETENTION.days}d (providers re-send for that long)", param_hint="--older-than"
        )
    sessions = cli.sessions()
    with sessions() as session:
        total = count_prunable(session, older_than)
    if dry_run or total == 0:
        click.echo(f"{total} row(s) would be deleted" if dry_run else "nothing to prune")
        return
    progress_bar = click.progressbar(length=total, label="pruning", file=sys.stderr)
    with progress_bar as progress:
        done = prune_rows(sessions, Actor.cli(), older_than, batch_size, on_batch=progress.update)
    click.echo(f"deleted {done.deleted} row(s) that ended before {datetime.now(UTC) - older_than:%Y-%m-%d %H:%M} UTC")


def _row_summary(row: WebhookInbox) -> dict[str, object]:
    return {
        "id": row.id,
        "source": row.source,
        "provider_event_id": row.external_id,
        "event_type": row.event_type,
        "status": row.status,
        "attempts": row.attempts,
        "received_at": row.received_at,
        "processed_at": row.processed_at,
        "age": age((datetime.now(UTC) - row.received_at).total_seconds()),
        "detail": row.detail,
        "last_error": row.last_error,
    }


def _entry(entry: CreditLedgerEntry) -> dict[str, object]:
    return {
        "id": entry.id,
        "clerk_user_id": entry.clerk_user_id,
        "kind": entry.kind,
        "delta": entry.delta,
        "balance_after": entry.balance_after,
        "idempotency_key": entry.idempotency_key,
        "reference": entry.reference,
        "created_at": entry.created_at,
    }


COMMANDS = [inbox]
