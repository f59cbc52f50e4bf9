"""Celery app, tasks, and the domain rules they apply. Never imports Flask."""
