"""The one place that imports every module registering webhook handlers (`@handles`).

The pipeline looks handlers up through `handler_for`, so importing this module is what makes
the registry complete; the domains never import the pipeline.
"""

from __future__ import annotations

from worker.billing import asaas_events, clerk_billing_events
from worker.registry import Handler, find_handler
from worker.users import clerk_user_events

HANDLER_MODULES = (clerk_user_events, clerk_billing_events, asaas_events)


def handler_for(source: str, event_type: str) -> Handler | None:
    return find_handler(source, event_type)
