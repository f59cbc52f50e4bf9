"""A refund of a debit whose `UsageHistory` row is gone (the Next.js app owns those rows) fails
with an error that names the row, and stores nothing: the key may be sent again once it is fixed.
(Before, it failed with AttributeError: 'NoneType' object has no attribute 'credit_balance_id'.)"""

from __future__ import annotations

import pytest
from sqlalchemy import delete
from sqlalchemy.orm import Session, sessionmaker

from models.app import UsageHistory
from tests.support.usage import balance, debit, make_user, refund, stored_status


def test_a_refund_whose_usage_row_is_gone_fails_and_stores_nothing(session_factory: sessionmaker[Session]) -> None:
    make_user(session_factory)
    assert debit(session_factory, "d1", operation="AI_IMAGE_GENERATION", cost=10)["status"] == "applied"
    with session_factory.begin() as session:
        session.execute(delete(UsageHistory))
    with pytest.raises(LookupError, match=r"UsageHistory row c[0-9a-z]+ of debit d1 does not exist"):
        refund(session_factory, "r1", "d1")
    assert balance(session_factory) == 90
    assert stored_status(session_factory, "r1") is None
