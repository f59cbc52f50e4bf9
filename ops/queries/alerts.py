"""The alerts that would fire now: docs/operating.md's sample Prometheus rules, evaluated on the
gauges the exporter serves (`ops.queries.metrics`), for the console's overview.

A rule's `for:` is not waited for: "would fire" means its condition holds at this moment.
tests/ops/test_alerts.py keeps these rules and the documented ones the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric

from ops.queries.metrics import PREFIX


@dataclass(frozen=True)
class Alert:
    name: str
    summary: str
    value: float


@dataclass(frozen=True)
class Samples:
    """Every sample of the scrape, by metric name: (labels, value)."""

    by_metric: dict[str, list[tuple[dict[str, str], float]]]

    @classmethod
    def of(cls, families: Iterable[Metric]) -> Samples:
        by_metric: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in families:
            for sample in family.samples:
                by_metric.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return cls(by_metric)

    def matching(self, metric: str, where: dict[str, str]) -> list[tuple[dict[str, str], float]]:
        return [(labels, value) for labels, value in self.by_metric.get(metric, []) if where.items() <= labels.items()]


@dataclass(frozen=True)
class ThresholdRule:
    """`aggregate by (by) (metric{where}) > above`, one alert per group."""

    name: str
    metric: str
    where: dict[str, str]
    by: str | None
    aggregate: Callable[[Iterable[float]], float]
    above: float
    summary: str  # `{group}` is replaced by the group's label value

    def firing(self, samples: Samples) -> list[Alert]:
        groups: dict[str, list[float]] = {}
        for labels, value in samples.matching(f"{PREFIX}_{self.metric}", self.where):
            groups.setdefault(labels.get(self.by, "") if self.by else "", []).append(value)
        return [
            Alert(self.name, self.summary.format(group=group), total)
            for group, values in sorted(groups.items())
            if (total := self.aggregate(values)) > self.above
        ]


@dataclass(frozen=True)
class BlindRule:
    """The exporter cannot read a server (its `*_up` gauge is 0 or absent)."""

    name: str
    summary: str

    def firing(self, samples: Samples) -> list[Alert]:
        ups = [samples.matching(f"{PREFIX}_{server}_up", {}) for server in ("database", "redis")]
        blind = not ups[0] or any(value == 0 for found in ups for _, value in found)
        return [Alert(self.name, self.summary, 1)] if blind else []


RULES: tuple[ThresholdRule | BlindRule, ...] = (
    ThresholdRule(
        "WebhookBacklogOld",
        "inbox_oldest_age_seconds",
        {"status": "pending"},
        "source",
        max,
        300,
        "a {group} delivery has waited over 5 minutes: pedro-webhooks status",
    ),
    ThresholdRule(
        "WebhookDeadLetters",
        "inbox_rows",
        {"status": "failed"},
        None,
        sum,
        0,
        "failed inbox rows: pedro-webhooks inbox list --status failed",
    ),
    ThresholdRule(
        "WebhookNeedsAttention",
        "inbox_rows",
        {"status": "needs_attention"},
        None,
        sum,
        0,
        "a paid event moved no money: pedro-webhooks inbox list --status needs_attention",
    ),
    ThresholdRule(
        "WebhookUnmatchedOld",
        "inbox_oldest_age_seconds",
        {"status": "unmatched"},
        None,
        max,
        3600,
        "an event has waited over an hour for its user: pedro-webhooks inbox list --status unmatched",
    ),
    ThresholdRule(
        "CeleryQueueLong",
        "queue_length",
        {},
        "queue",
        max,
        1000,
        "{group} holds over 1000 messages: are the workers up?",
    ),
    ThresholdRule(
        "HoldsNotExpiring",
        "overdue_holds",
        {},
        None,
        max,
        0,
        "credit holds past their expiry stay open: is beat running, and a worker on maintenance?",
    ),
    ThresholdRule(
        "UsageMessagesRefused",
        "refused_usage_messages",
        {},
        None,
        sum,
        0,
        "usage messages with bad signatures reached the broker: check USAGE_SERVICE_KEYS and who writes to Redis",
    ),
    BlindRule("OpsExporterBlind", "the metrics exporter cannot read PostgreSQL or Redis"),
)


def firing_alerts(families: Iterable[Metric]) -> list[Alert]:
    samples = Samples.of(families)
    return [alert for rule in RULES for alert in rule.firing(samples)]
