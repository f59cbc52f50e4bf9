"""Loaded into a bench worker with `--include bench.no_batch_events`: batches send no Flower
events, so bench_batch_events.py can measure what the events cost."""

from celery_ext.batching import BatchMonitor

BatchMonitor._send = lambda self, event, **fields: None  # type: ignore[method-assign]
