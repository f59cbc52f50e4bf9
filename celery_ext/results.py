"""Answers written into Celery's result backend for many tasks at once (a batch's answers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend


def store_successes(
    backend: Any, answers: list[tuple[str, Any]], keep: Callable[[str, Any], bool] = lambda _id, _result: True
) -> None:
    """Store each `(task_id, result)` as SUCCESS, as `mark_as_done` would; raises what the
    backend raises. With Celery's Redis backend in two round trips for all of them (one MGET,
    then one pipeline of the SET-with-expiry and PUBLISH that `RedisBackend._set` makes, the
    values built by Celery's own `encode_result`, `_get_result_meta`, `encode`). As Celery's
    `_store_result` does, a SUCCESS already stored stands, unless `keep(task_id, its result)`
    says it is not one to keep (e.g. an answer someone else wrote)."""
    if not answers:
        return
    if not isinstance(backend, RedisBackend):
        for task_id, result in answers:
            backend.mark_as_done(task_id, result)
        return
    redis_backend: Any = backend  # celery-types declares neither `expires` nor `_get_result_meta`
    keys = [redis_backend.get_key_for_task(task_id) for task_id, _ in answers]
    stored = redis_backend.mget(keys)
    expiry = int(redis_backend.expires) if redis_backend.expires else None
    with redis_backend.client.pipeline() as pipe:
        for (task_id, result), key, current in zip(answers, keys, stored, strict=True):
            if current is not None:
                meta = redis_backend.decode_result(current)
                if meta["status"] == states.SUCCESS and keep(task_id, meta.get("result")):
                    continue
            meta = redis_backend._get_result_meta(
                result=redis_backend.encode_result(result, states.SUCCESS),
                state=states.SUCCESS,
                traceback=None,
                request=None,
            )
            meta["task_id"] = task_id
            value = redis_backend.encode(meta)
            pipe.set(key, value, ex=expiry)
            pipe.publish(key, value)
        pipe.execute()
