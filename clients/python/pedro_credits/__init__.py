"""Spend, refund and track Pedro AI credits through the pedro-webhooks service.

    from pedro_credits import CreditsClient

The contract (arguments, answers, statuses) is docs/usage-api.md in the service's repository.
"""

from pedro_credits.client import DEBIT_WAIT_SECONDS, USAGE_QUEUE, CreditsClient

__all__ = ["DEBIT_WAIT_SECONDS", "USAGE_QUEUE", "CreditsClient"]
