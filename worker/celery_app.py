"""The worker's Celery app (`celery -A worker.celery_app ...`).

Celery finds the app by module attribute, so the object exists at import; its configuration is
added lazily (`add_defaults` with a callable) and read from the environment only when Celery
first needs it, that is, when a worker or beat starts.
"""

from __future__ import annotations

from celery import Celery

from models.settings import load_settings
from worker.celery_config import celery_config

TASK_MODULES = ["worker.inbox.tasks", "worker.usage.tasks"]

app = Celery("pedro_webhooks", include=TASK_MODULES)
app.add_defaults(lambda: celery_config(load_settings()))
