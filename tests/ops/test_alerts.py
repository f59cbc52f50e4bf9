"""The console's "alerts that would fire now" are docs/operating.md's sample rules, evaluated on
the gauges the exporter serves."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from ops.queries.alerts import RULES, BlindRule, ThresholdRule, firing_alerts
from ops.queries.inbox_rows import StatusCount
from ops.queries.metrics import OpenHolds, hold_gauges, inbox_gauges, queue_gauge, refused_gauge, up_gauge
from tests.support.servers import PROJECT_ROOT

OPERATING = (PROJECT_ROOT / "docs" / "operating.md").read_text()
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def _documented_rules() -> dict[str, str]:
    rules = OPERATING.split("```yaml", 1)[1].split("```", 1)[0]
    return dict(re.findall(r"- alert: (\w+)\n\s+expr: (.+)", rules))


def test_the_rules_are_the_documented_ones():
    documented = _documented_rules()
    assert [rule.name for rule in RULES] == list(documented)
    for rule in RULES:
        expr = documented[rule.name]
        if isinstance(rule, ThresholdRule):
            assert f"pedro_webhooks_{rule.metric}" in expr and expr.rstrip().endswith(f"> {rule.above:g}")
            assert all(f'{label}="{value}"' in expr for label, value in rule.where.items())
            assert rule.by is None or f"by ({rule.by})" in expr
        else:
            assert isinstance(rule, BlindRule) and "_up == 0" in expr


NO_HOLDS = OpenHolds(0, 0, None, 0)


def _gauges(
    counts: list[StatusCount],
    queues: dict[str, int] | None,
    holds: OpenHolds = NO_HOLDS,
    refused: dict[str, int] | None = None,
):
    families = [up_gauge("database", True), *inbox_gauges(counts, NOW), *hold_gauges(holds, NOW)]
    if queues is None:
        return [*families, up_gauge("redis", False)]
    return [*families, up_gauge("redis", True), queue_gauge(queues), refused_gauge(refused or {})]


def test_a_quiet_service_fires_nothing():
    counts = [StatusCount("clerk", "processed", 10, NOW - timedelta(days=3))]
    holds = OpenHolds(count=3, credits=120, oldest_created_at=NOW - timedelta(minutes=2), overdue=0)
    assert firing_alerts(_gauges(counts, {"webhooks": 0, "usage": 2}, holds, {"web": 0})) == []


def test_each_condition_fires_its_alert():
    counts = [
        StatusCount("asaas", "pending", 2, NOW - timedelta(minutes=6)),
        StatusCount("clerk", "pending", 1, NOW - timedelta(minutes=1)),
        StatusCount("clerk", "failed", 3, NOW - timedelta(hours=1)),
        StatusCount("asaas", "needs_attention", 1, NOW),
        StatusCount("asaas", "unmatched", 1, NOW - timedelta(hours=2)),
    ]
    holds = OpenHolds(count=3, credits=120, oldest_created_at=NOW - timedelta(hours=2), overdue=1)
    gauges = _gauges(counts, {"webhooks": 1001, "usage": 0}, holds, {"web": 0, "batch": 2})
    fired = {(a.name, a.summary) for a in firing_alerts(gauges)}
    assert fired == {
        ("WebhookBacklogOld", "a asaas delivery has waited over 5 minutes: pedro-webhooks status"),
        ("WebhookDeadLetters", "failed inbox rows: pedro-webhooks inbox list --status failed"),
        ("WebhookNeedsAttention", "a paid event moved no money: pedro-webhooks inbox list --status needs_attention"),
        (
            "WebhookUnmatchedOld",
            "an event has waited over an hour for its user: pedro-webhooks inbox list --status unmatched",
        ),
        ("CeleryQueueLong", "webhooks holds over 1000 messages: are the workers up?"),
        ("HoldsNotExpiring", "credit holds past their expiry stay open: is beat running, and a worker on maintenance?"),
        (
            "UsageMessagesRefused",
            "usage messages with bad signatures reached the broker: check USAGE_SERVICE_KEYS and who writes to Redis",
        ),
    }
    assert [a.name for a in firing_alerts(_gauges([], None))] == ["OpsExporterBlind"]
