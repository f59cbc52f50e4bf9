"""Prometheus metrics of the receiver: deliveries by source and outcome, latency by source.

Each app gets a registry of its own, so tests that build many apps in one process never collide
on duplicate registration. Under gunicorn every worker process keeps its own counts; when
`PROMETHEUS_MULTIPROC_DIR` is set (it must be set before the process starts: prometheus-client
picks its storage when it is imported), values live in files in that folder and the gunicorn
master serves the sum of every worker's, including those of workers that have exited, on its
own metrics port (receiver/gunicorn_conf.py), never on the public webhook port.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

# Every outcome a source's deliveries can end with: the successful ones, then each rejection
# code the receiver answers with (see errors.Rejected and its callers), then "error" for a 500.
# Pre-declared so a dashboard sees a 0 rather than a missing series.
_COMMON_OUTCOMES = (
    "accepted",
    "duplicate",
    "queued",
    "too_large",
    "timeout",
    "malformed",
    "missing_id",
    "missing_type",
    "unavailable",
    "error",
)
OUTCOMES = {
    "clerk": (*_COMMON_OUTCOMES, "missing_signature_headers", "timestamp_out_of_tolerance", "bad_signature"),
    "asaas": (*_COMMON_OUTCOMES, "missing_token", "bad_token", "forbidden_ip"),
}

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.deliveries = Counter(
            "webhook_deliveries",
            "Webhook deliveries by source and outcome.",
            ["source", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "webhook_request_duration_seconds",
            "Time to answer a webhook delivery.",
            ["source"],
            registry=self.registry,
        )
        # Every series made once, here, and kept: `labels()` on each delivery (a lock and a
        # lookup per call) cost more than the counting itself.
        self._latency = {source: self.latency.labels(source) for source in OUTCOMES}
        self._deliveries = {
            (source, outcome): self.deliveries.labels(source, outcome)
            for source, outcomes in OUTCOMES.items()
            for outcome in outcomes
        }

    def observe(self, source: str, outcome: str, seconds: float) -> None:
        counter = self._deliveries.get((source, outcome)) or self.deliveries.labels(source, outcome)
        counter.inc()
        self._latency[source].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        if os.environ.get(MULTIPROC_ENV):
            # A fresh registry per scrape, as prometheus-client documents for multiprocess mode:
            # the collector reads every worker's files at collection time.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
