"""Reconcile: do the balances, the ledger and the payments agree? It reports; it never fixes.

Three checks, each one SQL statement over the whole database or one user:
- `balance`: every `"CreditBalance"."creditsRemaining"` equals the sum of its ledger entries;
- `grant`: every payment marked granted has exactly one grant entry of exactly its credits, and
  every grant entry belongs to a payment marked granted;
- `reversal`: per payment, the reversal entries add up to what the payment says was reversed,
  never more than was granted, and no reversal entry names a payment that was never granted;
- `sent_by_send`: ledger entries a delivery of `pedro-webhooks send` accounts for (a test
  delivery's credits, which would otherwise pass for a provider's).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from ops.queries.sent_deliveries import sent_deliveries


@dataclass(frozen=True)
class Mismatch:
    check: str  # balance | grant | reversal | hold | sent_by_send
    clerk_user_id: str | None
    subject: str  # the balance or payment it is about
    expected: int | None
    found: int | None
    detail: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


# Plain SQL (each check is one statement a person can read and run by hand). The engine's
# schema_translate_map does not apply to text(): the configured service schema is substituted.
_BALANCES = """
SELECT b.id, b."clerkUserId", b."creditsRemaining", coalesce(sum(l.delta), 0) AS ledger
FROM "CreditBalance" b
LEFT JOIN {schema}.credit_ledger l ON l.credit_balance_id = b.id
WHERE (CAST(:user AS text) IS NULL OR b."clerkUserId" = :user)
GROUP BY b.id, b."clerkUserId", b."creditsRemaining"
HAVING b."creditsRemaining" <> coalesce(sum(l.delta), 0)
ORDER BY b."clerkUserId"
"""

_GRANTS = """
WITH payments AS (
    SELECT provider, payment_id, clerk_user_id, credits_granted, granted_at IS NOT NULL AS granted,
           'grant:' || provider || ':' || payment_id AS key
    FROM {schema}.payment_credits
    WHERE (CAST(:user AS text) IS NULL OR clerk_user_id = :user)
), grants AS (
    SELECT idempotency_key AS key, clerk_user_id, count(*) AS entries, sum(delta) AS credits
    FROM {schema}.credit_ledger
    WHERE kind = 'grant' AND (CAST(:user AS text) IS NULL OR clerk_user_id = :user)
    GROUP BY idempotency_key, clerk_user_id
)
SELECT coalesce(p.key, g.key) AS key, coalesce(p.clerk_user_id, g.clerk_user_id) AS clerk_user_id,
       p.granted, p.credits_granted, g.entries, g.credits
FROM payments p FULL JOIN grants g ON g.key = p.key
WHERE (p.granted AND (g.key IS NULL OR g.credits <> p.credits_granted OR g.entries <> 1))
   OR (g.key IS NOT NULL AND (p.key IS NULL OR NOT p.granted))
ORDER BY 1
"""

_REVERSALS = """
WITH payments AS (
    SELECT provider, payment_id, clerk_user_id, credits_granted, credits_reversed,
           granted_at IS NOT NULL AS granted, 'reversal:' || provider || ':' || payment_id || ':' AS prefix
    FROM {schema}.payment_credits
), reversals AS (
    SELECT l.id, l.idempotency_key, l.clerk_user_id, -l.delta AS credits, p.prefix
    FROM {schema}.credit_ledger l
    LEFT JOIN payments p ON starts_with(l.idempotency_key, p.prefix)
    WHERE l.kind = 'reversal' AND (CAST(:user AS text) IS NULL OR l.clerk_user_id = :user)
)
SELECT p.prefix, p.clerk_user_id, p.granted, p.credits_granted, p.credits_reversed,
       coalesce(sum(r.credits), 0) AS reversed_in_ledger
FROM payments p LEFT JOIN reversals r ON r.prefix = p.prefix
WHERE (CAST(:user AS text) IS NULL OR p.clerk_user_id = :user)
GROUP BY p.prefix, p.clerk_user_id, p.granted, p.credits_granted, p.credits_reversed
HAVING coalesce(sum(r.credits), 0) <> p.credits_reversed
    OR p.credits_reversed > p.credits_granted
    OR (NOT p.granted AND coalesce(sum(r.credits), 0) <> 0)
UNION ALL
SELECT r.idempotency_key, r.clerk_user_id, NULL, NULL, NULL, r.credits
FROM reversals r WHERE r.prefix IS NULL
ORDER BY 1
"""


# Each hold's ledger: one `hold` entry of its credits; `release` entries giving back nothing while
# it is open, what a capture did not use, or all of it after a release or an expiry.
_HOLDS = """
SELECT h.hold_key, h.clerk_user_id, h.state, h.credits, h.captured, held.credits AS held, back.credits AS released
FROM {schema}.credit_holds h
LEFT JOIN LATERAL (SELECT -sum(delta) AS credits, count(*) AS entries FROM {schema}.credit_ledger
                   WHERE idempotency_key = 'hold:' || h.hold_key) held ON true
LEFT JOIN LATERAL (SELECT coalesce(sum(delta), 0) AS credits FROM {schema}.credit_ledger
                   WHERE idempotency_key = 'release:' || h.hold_key) back ON true
WHERE (CAST(:user AS text) IS NULL OR h.clerk_user_id = :user)
  AND (held.entries <> 1 OR held.credits <> h.credits
       OR back.credits <> CASE h.state WHEN 'open' THEN 0
                                       WHEN 'captured' THEN h.credits - coalesce(h.captured, 0)
                                       ELSE h.credits END)
ORDER BY 1
"""


def reconcile(session: Session, service_schema: str, clerk_user_id: str | None = None) -> list[Mismatch]:
    return [
        *_balance_mismatches(session, service_schema, clerk_user_id),
        *_grant_mismatches(session, service_schema, clerk_user_id),
        *_reversal_mismatches(session, service_schema, clerk_user_id),
        *_hold_mismatches(session, service_schema, clerk_user_id),
        *_sent_by_send(session, clerk_user_id),
    ]


def _hold_mismatches(session: Session, schema: str, clerk_user_id: str | None) -> list[Mismatch]:
    """Held credits plus the ledger explain the balance: each hold's entries match how it stands."""
    found = []
    for key, user, state, credits, captured, held, released in _run(session, _HOLDS, schema, clerk_user_id):
        expected_back = {"open": 0, "captured": credits - (captured or 0)}.get(state, credits)
        detail = (
            f"hold {key} ({state}, {credits} credits) has {held or 0} held and {released} released in the ledger;"
            f" expected {credits} held and {expected_back} released"
        )
        found.append(Mismatch("hold", user, f"hold {key}", expected_back, released, detail))
    return found


def _run(session: Session, sql: str, service_schema: str, clerk_user_id: str | None) -> list[Any]:
    schema = f'"{service_schema}"'  # a validated identifier (models.settings)
    return list(session.execute(text(sql.format(schema=schema)), {"user": clerk_user_id}).all())


def _balance_mismatches(session: Session, schema: str, clerk_user_id: str | None) -> list[Mismatch]:
    return [
        Mismatch(
            "balance",
            user,
            f"CreditBalance {balance_id}",
            expected=ledger,
            found=remaining,
            detail=f"creditsRemaining is {remaining} but the ledger adds up to {ledger} ({remaining - ledger:+d})",
        )
        for balance_id, user, remaining, ledger in _run(session, _BALANCES, schema, clerk_user_id)
    ]


def _grant_mismatches(session: Session, schema: str, clerk_user_id: str | None) -> list[Mismatch]:
    found = []
    for key, user, granted, credits_granted, entries, credits in _run(session, _GRANTS, schema, clerk_user_id):
        payment = key.removeprefix("grant:")
        if granted is None:
            detail = f"grant entry {key} names a payment the service has no record of"
        elif not granted:
            detail = f"grant entry {key} for a payment that is not marked granted"
        elif entries is None:
            detail = f"payment {payment} is marked granted ({credits_granted}) but has no grant entry"
        elif entries != 1:
            detail = f"payment {payment} has {entries} grant entries"
        else:
            detail = f"payment {payment} granted {credits_granted} but its grant entry gives {credits}"
        found.append(Mismatch("grant", user, f"payment {payment}", credits_granted, credits, detail))
    return found


def _reversal_mismatches(session: Session, schema: str, clerk_user_id: str | None) -> list[Mismatch]:
    found = []
    rows = _run(session, _REVERSALS, schema, clerk_user_id)
    for prefix_or_key, user, granted, credits_granted, credits_reversed, in_ledger in rows:
        if granted is None:
            detail = f"reversal entry {prefix_or_key} names a payment the service has no record of"
            found.append(Mismatch("reversal", user, prefix_or_key, None, in_ledger, detail))
            continue
        payment = prefix_or_key.removeprefix("reversal:").rstrip(":")
        if credits_reversed > credits_granted:
            detail = f"payment {payment} reversed {credits_reversed}, more than its grant of {credits_granted}"
        elif not granted:
            detail = f"payment {payment} was never granted but the ledger reverses {in_ledger}"
        else:
            detail = f"payment {payment} says {credits_reversed} reversed; the ledger's reversals add up to {in_ledger}"
        found.append(Mismatch("reversal", user, f"payment {payment}", credits_reversed, in_ledger, detail))
    return found


def _sent_by_send(session: Session, clerk_user_id: str | None) -> list[Mismatch]:
    return [
        Mismatch(
            "sent_by_send",
            delivery.ledger_entries[0].clerk_user_id,
            f"inbox row {delivery.inbox_id}",
            expected=None,
            found=delivery.credits,
            detail=(
                f"{delivery.source} {delivery.event_type} {delivery.external_id} was sent by `pedro-webhooks send`, "
                f"not by the provider: ledger entries {', '.join(str(e.id) for e in delivery.ledger_entries)} "
                f"({delivery.credits:+d} credits)"
            ),
        )
        for delivery in sent_deliveries(session, clerk_user_id)
        if delivery.ledger_entries
    ]
