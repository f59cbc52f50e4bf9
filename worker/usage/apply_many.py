"""Usage requests of every kind applied together in one transaction (a worker's batch), taking
their locks in one order whatever the batch: first every key a debit or a hold claims, in key
order; then every hold a capture or a release ends, in key order; then the balances, users in
Clerk id order, each user's requests in arrival order. Two batches running at once therefore
never wait on each other in a cycle. A claimed key met again in the batch answers last.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from sqlalchemy.orm import Session
from typing_extensions import TypeIs

from worker.usage.requests import NotYetKnown, autoflush


@runtime_checkable
class Claiming(Protocol):
    """A request that claims its own key in `usage_requests` (a debit, a hold)."""

    @property
    def idempotency_key(self) -> str: ...

    @property
    def clerk_user_id(self) -> str: ...

    @property
    def not_after(self) -> float | None: ...

    def invalid(self) -> dict[str, Any] | None: ...

    def claim(self, session: Session, earliest: float | None) -> Any: ...

    def decide(self, session: Session, final: bool, found: Any) -> dict[str, Any]: ...

    def repeat(self, session: Session) -> dict[str, Any]: ...


@runtime_checkable
class Ending(Protocol):
    """A request that ends a hold (a capture, a release): keyed by the hold's key."""

    @property
    def hold_key(self) -> str: ...

    def invalid(self) -> dict[str, Any] | None: ...

    def decide(self, session: Session, final: bool, hold: Any) -> dict[str, Any]: ...


Request = Claiming | Ending

_ENDS_HOLD: dict[type, bool] = {}


def ends_hold(request: Request) -> TypeIs[Ending]:
    """Whether `request` ends a hold (else it claims a key). Decided once per request class: a
    runtime protocol check reads every member on each call, a few percent of a batch's time."""
    kind = type(request)
    if kind not in _ENDS_HOLD:
        _ENDS_HOLD[kind] = isinstance(request, Ending)
    return _ENDS_HOLD[kind]


class LockedHold(Protocol):
    """A hold as `HoldLocker` read it under its lock (`decide` of an `Ending` takes it)."""

    @property
    def clerk_user_id(self) -> str: ...


# Locks and reads the holds of these keys in key order; returns {key: its hold}.
HoldLocker = Callable[[Session, list[str]], Mapping[str, LockedHold]]


def apply_many(
    session: Session, requests: Sequence[tuple[Request, bool]], lock_holds: HoldLocker
) -> list[dict[str, Any] | None]:
    """Apply each `(request, final)` on this session, as it would apply alone. The answers come
    back in the order of `requests`; None for one whose user (or hold) is not known yet with
    final=False: nothing of it was written, and the caller retries it alone. `lock_holds(session,
    keys)` locks and reads the holds of these keys in key order and returns {key: its hold}."""
    answers: list[dict[str, Any] | None] = [None] * len(requests)
    claims, ends, again = _sort_out(requests, answers)
    autoflush(session)
    earliest = min((c.not_after for _, c in claims.values() if c.not_after is not None), default=None)
    found = {claims[key][0]: claims[key][1].claim(session, earliest) for key in sorted(claims)}
    locked = lock_holds(session, sorted({end.hold_key for _, end in ends}))
    order: list[tuple[str, int, Request]] = [(claim.clerk_user_id, n, claim) for n, claim in claims.values()]
    order += [(_owner(locked.get(end.hold_key)), n, end) for n, end in ends]
    waiting: set[str] = set()
    for _, n, request in sorted(order, key=lambda entry: entry[:2]):
        final = requests[n][1]
        try:
            if ends_hold(request):
                answers[n] = request.decide(session, final, locked.get(request.hold_key))
            elif found[n].claimed is None:
                again.append((n, request))
            else:
                answers[n] = request.decide(session, final, found[n])
        except NotYetKnown:
            if not ends_hold(request):
                waiting.add(request.idempotency_key)
    for n, claim in sorted(again, key=lambda entry: entry[0]):
        if claim.idempotency_key not in waiting:
            answers[n] = claim.repeat(session)
    return answers


def _owner(hold: LockedHold | None) -> str:
    return hold.clerk_user_id if hold is not None else ""


def _sort_out(
    requests: Sequence[tuple[Request, bool]], answers: list[dict[str, Any] | None]
) -> tuple[dict[str, tuple[int, Claiming]], list[tuple[int, Ending]], list[tuple[int, Claiming]]]:
    """Invalid requests answered at once; the first claim of each key; the requests that end a
    hold; the claims of a key already claimed in the batch (answered last)."""
    claims: dict[str, tuple[int, Claiming]] = {}
    ends: list[tuple[int, Ending]] = []
    again: list[tuple[int, Claiming]] = []
    for n, (request, _) in enumerate(requests):
        answers[n] = request.invalid()
        if answers[n] is not None:
            continue
        if ends_hold(request):
            ends.append((n, request))
        elif request.idempotency_key in claims:
            again.append((n, request))
        else:
            claims[request.idempotency_key] = (n, request)
    return claims, ends, again
