"""`/`: what `pedro-webhooks status` shows (servers, migration, queues, the fallback store, the
inbox by status and the oldest pending age), the alerts that would fire now, and the latest audit entries."""

from __future__ import annotations

from flask import Blueprint, render_template
from prometheus_client.metrics_core import Metric

from models.connectivity import masked_url
from ops.audit import recent_entries
from ops.console.resources import resources
from ops.queries.alerts import firing_alerts
from ops.queries.metrics import fallback_gauges, inbox_gauges, queue_gauge, up_gauge
from ops.queries.queues import queue_names
from ops.queries.status import Server, Status, fallback_state, redis_state, status_report

bp = Blueprint("overview", __name__)


@bp.get("/")
def overview() -> str:
    console = resources()
    settings = console.settings
    database = Server("PostgreSQL", "DATABASE_URL", masked_url(settings.database_url.get_secret_value()), "ok")
    redis_url = settings.redis_url.get_secret_value()
    redis_server, queues = redis_state(redis_url, "REDIS_URL", lambda: queue_names(settings))
    fallback = fallback_state(redis_url) if redis_server.state == "ok" else None
    with console.sessions() as session:
        report = status_report(session, settings.service_schema, [database, redis_server], queues, fallback)
        audit = recent_entries(session, limit=5)
        return render_template(
            "overview.html",
            report=report,
            ages=report.oldest_pending_age_seconds(),
            alerts=firing_alerts(_gauges(report)),
            audit=audit,
        )


def _gauges(report: Status) -> list[Metric]:
    """The gauges the exporter would serve now, from the numbers this page already read."""
    gauges: list[Metric] = [up_gauge("database", True), *inbox_gauges(report.inbox, report.now)]
    gauges.append(up_gauge("redis", report.queues is not None))
    if report.queues is not None:
        gauges.append(queue_gauge(report.queues))
    if report.fallback is not None:
        gauges.extend(fallback_gauges(report.fallback))
    return gauges
