"""`pedro-webhooks user show CLERK_ID`: one user's balance, explained."""

from __future__ import annotations

import click

from ops.cli.context import CliContext, pass_context
from ops.cli.output import json_option, print_json, print_table, shorten
from ops.queries.user_view import UserView, user_view
from ops.sample_deliveries import SENT_BY_SEND as _SEND


@click.group()
def user() -> None:
    """Users as the service sees them."""


@user.command()
@click.argument("clerk_user_id")
@click.option("--page", default=1, show_default=True, type=click.IntRange(1), help="Ledger page (newest first).")
@click.option("--per-page", default=20, show_default=True, type=click.IntRange(1, 1000))
@json_option
@pass_context
def show(cli: CliContext, clerk_user_id: str, page: int, per_page: int, as_json: bool) -> None:
    """The User, its balance and what explains it (the ledger, with the payment or debit behind
    each entry, and which entries deliveries of `pedro-webhooks send` account for), the current
    plan, recent usage, storage, and inbox rows still waiting for it."""
    with cli.sessions()() as session:
        view = user_view(session, clerk_user_id, page=page, per_page=per_page)
    if view is None:
        raise click.ClickException(f"no user {clerk_user_id}")
    if as_json:
        print_json(_as_json(view))
        return
    u, balance = view.user, view.balance
    click.echo(f"user:     {u.clerk_id} (id {u.id}) {u.email or '-'} {u.name or ''}".rstrip())
    click.echo(f"active:   {'yes' if u.is_active else 'no (deleted in Clerk)'}; created {u.created_at:%Y-%m-%d %H:%M}")
    if balance is None:
        click.echo("balance:  none (no CreditBalance)")
    else:
        check = "= the ledger" if view.balance_matches_ledger else f"!= the ledger's {view.ledger_sum}: run reconcile"
        held = f"; {view.held_credits} more held by {len(view.open_holds)} open hold(s)" if view.open_holds else ""
        click.echo(f"balance:  {balance.credits_remaining} credits ({check}){held}")
    plan = f"{view.plan.id} ({view.plan.name}, {view.plan.credits} credits)" if view.plan else "none"
    state = f", {view.plan_state.status} via {view.plan_state.provider}" if view.plan_state and view.plan else ""
    click.echo(f"plan:     {plan}{state}")
    _print_ledger(view, page, per_page)
    _print_open_holds(view)
    _print_sent_by_send(view)
    click.echo("\nrecent usage:")
    print_table(
        ["when", "operation", "credits", "details"],
        [
            [h.timestamp, h.operation_type.value, h.credits_used, shorten(str(h.details) if h.details else None, 60)]
            for h in view.usage
        ],
    )
    s = view.storage_summary
    click.echo(f"\nstorage: {s.live_objects} object(s), {s.live_bytes} bytes ({s.deleted_objects} deleted)")
    print_table(
        ["created", "pathname", "size", "deleted"],
        [[o.created_at, o.pathname, o.size, o.deleted_at] for o in view.storage],
        empty="",
    )
    if view.waiting:
        click.echo("\ninbox rows naming this user that still wait:")
        print_table(
            ["id", "type", "status", "detail"],
            [[r.id, r.event_type, r.status, shorten(r.last_error or r.detail)] for r in view.waiting],
        )


def _print_ledger(view: UserView, page: int, per_page: int) -> None:
    pages = max(1, -(-view.ledger_entries // per_page))
    click.echo(f"\nledger (page {page} of {pages}, {view.ledger_entries} entries, newest first):")
    sent = view.entries_sent_by_send
    print_table(
        ["entry", "when", "kind", "delta", "balance after", "ledger sum", "sent by", "reference"],
        [
            [
                e.id,
                e.created_at,
                e.kind,
                f"{e.delta:+d}",
                e.balance_after,
                view.running_balance[e.id],
                _SEND if e.id in sent else "",
                shorten(e.reference, 80),
            ]
            for e in view.ledger
        ],
    )


def _print_open_holds(view: UserView) -> None:
    if not view.open_holds:
        return
    click.echo("\nopen holds (their credits are out of the balance until captured, released or expired):")
    print_table(
        ["hold", "operation", "credits", "held since", "expires"],
        [[h.hold_key, h.operation, h.credits, h.created_at, h.expires_at] for h in view.open_holds],
    )


def _print_sent_by_send(view: UserView) -> None:
    """Test deliveries: an operator must never take their credits for a provider's."""
    if not view.sent_by_send:
        return
    click.echo(f"\ndeliveries sent by `{_SEND}` (test deliveries, not the provider's):")
    print_table(
        ["inbox id", "source", "type", "event id", "ledger entries"],
        [
            [d.inbox_id, d.source, d.event_type, d.external_id, ", ".join(str(e.id) for e in d.ledger_entries) or "-"]
            for d in view.sent_by_send
        ],
    )


def _as_json(view: UserView) -> dict[str, object]:
    u = view.user
    return {
        "clerk_user_id": u.clerk_id,
        "id": u.id,
        "email": u.email,
        "name": u.name,
        "active": u.is_active,
        "created_at": u.created_at,
        "balance": view.balance.credits_remaining if view.balance else None,
        "ledger_sum": view.ledger_sum,
        "balance_matches_ledger": view.balance_matches_ledger,
        "plan": {"id": view.plan.id, "name": view.plan.name, "credits": view.plan.credits} if view.plan else None,
        "ledger_entries": view.ledger_entries,
        "ledger": [
            {
                "id": e.id,
                "created_at": e.created_at,
                "kind": e.kind,
                "delta": e.delta,
                "balance_after": e.balance_after,
                "ledger_sum": view.running_balance[e.id],
                "idempotency_key": e.idempotency_key,
                "reference": e.reference,
                "sent_by_send": e.id in view.entries_sent_by_send,
            }
            for e in view.ledger
        ],
        "sent_by_send": [delivery.as_json() for delivery in view.sent_by_send],
        "held_credits": view.held_credits,
        "open_holds": [
            {
                "hold_key": h.hold_key,
                "operation": h.operation,
                "credits": h.credits,
                "created_at": h.created_at,
                "expires_at": h.expires_at,
            }
            for h in view.open_holds
        ],
        "usage": [
            {"timestamp": h.timestamp, "operation": h.operation_type.value, "credits": h.credits_used}
            for h in view.usage
        ],
        "storage": {
            "live_objects": view.storage_summary.live_objects,
            "live_bytes": view.storage_summary.live_bytes,
            "deleted_objects": view.storage_summary.deleted_objects,
            "recent": [{"pathname": o.pathname, "size": o.size, "deleted_at": o.deleted_at} for o in view.storage],
        },
        "waiting": [{"id": r.id, "event_type": r.event_type, "status": r.status} for r in view.waiting],
    }


COMMANDS = [user]
