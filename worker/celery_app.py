"""The worker's Celery app (`celery -A worker.celery_app ...`).

Celery finds the app by module attribute, so the object exists at import; its configuration is
added lazily (`add_defaults` with a callable) and read from the environment only when Celery
first needs it, that is, when a worker or beat starts.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_init

from celery_ext.held_messages import holder_report_step
from messaging.celery_config import PROCESS_WEBHOOK_TASK, celery_config
from messaging.ingest_message import IngestSigner
from models.connectivity import exit_unless_reachable
from models.settings import ConfigError, load_settings
from worker import lifecycle  # noqa: F401  (start-up checks, logging and task log context: signal handlers)

TASK_MODULES = ["worker.inbox.tasks", "worker.usage.tasks"]

app = Celery("pedro_webhooks", include=TASK_MODULES)
# A missing or malformed variable stops `celery worker|beat|flower` with one line (exit code 2).
app.add_defaults(lambda: celery_config(exit_unless_reachable(load_settings, check_servers=False)))
# Each worker reports which `webhooks.process` messages it holds, so the sweeper leaves their rows
# alone while it lives (the prefetch window is over 1: docs/design.md).
app.steps["consumer"].add(holder_report_step(PROCESS_WEBHOOK_TASK))


@worker_init.connect
def require_ingest_signing_key(**_: object) -> None:
    """A worker without INGEST_SIGNING_KEY would refuse every genuine `webhooks.ingest` message:
    it does not start. (SystemExit: Celery logs and ignores a signal handler's Exception.)"""
    try:
        IngestSigner(load_settings().ingest_signing_keys)
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None
