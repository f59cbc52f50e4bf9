"""Celery configuration for the workers and for every producer (receiver, other services).

Importing this module imports no task: a producer sends tasks by name.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from models.settings import Settings

WEBHOOKS_QUEUE = "webhooks"
USAGE_QUEUE = "usage"
# The sweeper's own queue: a sweep is never stuck behind a backlog of webhooks (a worker serving
# several queues takes from each in turn).
MAINTENANCE_QUEUE = "maintenance"

# Task names: the public interface of the workers. Producers (the receiver, other services, the
# pipeline's own follow-ups) send by name and never import task code.
PROCESS_WEBHOOK_TASK = "webhooks.process"
INGEST_WEBHOOK_TASK = "webhooks.ingest"
SWEEP_INBOX_TASK = "inbox.sweep"
# Moves deliveries the receiver queued while PostgreSQL was down from the fallback store
# (messaging/fallback_store.py) into the inbox (beat, and the receiver's nudge).
DRAIN_FALLBACK_TASK = "inbox.drain_fallback"
# What services send (signed: docs/usage-api.md), on the `usage` queue.
DEBIT_TASK = "usage.debit"
REFUND_TASK = "usage.refund"
OUTCOME_TASK = "usage.outcome"
SETTLE_TASK = "usage.settle"
HOLD_TASK = "usage.hold"
CAPTURE_TASK = "usage.capture"
RELEASE_TASK = "usage.release"
# Releases the holds past their `expires_at` (beat, on the `maintenance` queue).
EXPIRE_HOLDS_TASK = "holds.expire"
RECORD_STORAGE_TASK = "storage.record"
DELETE_STORAGE_TASK = "storage.delete"
# Usage messages that do not verify, counted per claimed service (a Redis hash: the metrics
# exporter serves it).
REFUSED_USAGE_MESSAGES = "pedro-webhooks:refused-usage-messages"

# The longest a task may run, and the longest countdown a retry may ask for. Redis re-delivers
# an unacked message after `visibility_timeout`; it must be well above both, or a slow task
# (or a task waiting out its retry countdown) would be handed to a second worker.
TASK_HARD_TIME_LIMIT = 120
MAX_RETRY_COUNTDOWN = 600
# The longest countdown between two tries of `webhooks.process`: no longer than the default
# pending age, so a row whose fault has ended is tried again within the sweeper's bound (a
# configured pending age below it caps the countdown too: `worker.inbox.tasks.InboxTask.retry`).
PROCESS_RETRY_BACKOFF_MAX = 60
VISIBILITY_TIMEOUT = 3600

TASK_ROUTES = {
    "webhooks.*": {"queue": WEBHOOKS_QUEUE},
    "inbox.*": {"queue": MAINTENANCE_QUEUE},
    "holds.*": {"queue": MAINTENANCE_QUEUE},
    "usage.*": {"queue": USAGE_QUEUE},
    "storage.*": {"queue": USAGE_QUEUE},
}


def _queue(name: str) -> Queue:
    # Explicit exchange and routing key: without them Celery binds every queue to the default
    # queue's exchange and key, and the worker's banner (and Flower) show misleading routes.
    return Queue(name, Exchange(name, type="direct"), routing_key=name)


def celery_config(settings: Settings) -> dict[str, Any]:
    redis_url = settings.redis_url.get_secret_value()
    return {
        "broker_url": redis_url,
        "result_backend": redis_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
        "result_backend_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT},
        "result_expires": 24 * 3600,
        # At-least-once: ack after the task ran, re-deliver if the worker died mid-task.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": TASK_HARD_TIME_LIMIT,
        "task_soft_time_limit": TASK_HARD_TIME_LIMIT - 20,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_queues": [_queue(WEBHOOKS_QUEUE), _queue(USAGE_QUEUE), _queue(MAINTENANCE_QUEUE)],
        "task_default_queue": WEBHOOKS_QUEUE,
        "task_routes": TASK_ROUTES,
        # Events for Flower.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "beat_schedule": {
            "inbox-sweep": {
                "task": SWEEP_INBOX_TASK,
                "schedule": settings.sweep_interval_seconds,
                # A sweep not started before the next one is due is dropped: with workers down,
                # sweeps never pile up behind one another.
                "options": {"expires": sweep_expiry_seconds(settings)},
            },
            "fallback-drain": {
                "task": DRAIN_FALLBACK_TASK,
                "schedule": settings.fallback_drain_interval_seconds,
                "options": {"expires": drain_expiry_seconds(settings)},
            },
            "holds-expire": {
                "task": EXPIRE_HOLDS_TASK,
                "schedule": settings.sweep_interval_seconds,
                "options": {"expires": sweep_expiry_seconds(settings)},
            },
        },
        "timezone": "UTC",
        "enable_utc": True,
    }


def sweep_expiry_seconds(settings: Settings) -> float:
    return max(settings.sweep_interval_seconds * 0.9, 0.5)


def drain_expiry_seconds(settings: Settings) -> float:
    """A drain (beat's or a nudge) not started within this long is dropped: the next is due."""
    return max(settings.fallback_drain_interval_seconds * 0.9, 0.5)


def create_producer(settings: Settings) -> Celery:
    """A Celery app that only sends tasks by name (the receiver, other services, tests)."""
    app = Celery("pedro_webhooks", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
