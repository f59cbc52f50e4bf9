"""Every use of Celery's, kombu's and billiard's internals, in one place.

Checked against celery 5.6.3, kombu 5.7.0 and billiard 4.3.2 (pyproject.toml pins the minors):
- `redis_transport`: kombu's Redis message envelope, queue lists and priority names;
- `batching`: a task `Strategy` that batches messages (Celery's worker request, state, strategy);
- `results`: many answers written to the Redis result backend at once;
- `backoff`: Celery's autoretry countdown, for retries made by hand;
- `held_messages`: kombu's `unacked` hash and which live worker holds what (a consumer step).
On an upgrade, run tests/celery_ext and tests/usage/test_usage_batches.py first.
"""
