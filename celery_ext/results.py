"""Answers written into Celery's result backend for many tasks at once (a batch's answers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import states
from celery.backends.redis import RedisBackend

# For each key: a SUCCESS stored already is returned (the caller decides whether it stands);
# anything else is replaced by the new value, with its expiry, and the value published on the
# key's channel, as Celery's `RedisBackend._set` does. KEYS: the result keys; ARGV[1]: the
# expiry in seconds (0: none); ARGV[1 + n]: the value of KEYS[n].
_STORE_UNLESS_SUCCESS = """
local found = {}
for n, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  local ok, meta = pcall(cjson.decode, current or 'null')
  if current and ok and type(meta) == 'table' and meta['status'] == 'SUCCESS' then
    found[n] = current
  else
    if tonumber(ARGV[1]) > 0 then
      redis.call('SET', key, ARGV[n + 1], 'EX', ARGV[1])
    else
      redis.call('SET', key, ARGV[n + 1])
    end
    redis.call('PUBLISH', key, ARGV[n + 1])
    found[n] = false
  end
end
return found
"""


def store_successes(
    backend: Any, answers: list[tuple[str, Any]], keep: Callable[[str, Any], bool] = lambda _id, _result: True
) -> None:
    """Store each `(task_id, result)` as SUCCESS, as `mark_as_done` would; raises what the
    backend raises. With Celery's Redis backend in one round trip for all of them (a script
    doing the SET-with-expiry and PUBLISH of `RedisBackend._set`, the values built by Celery's
    own `encode_result`, `_get_result_meta`, `encode`). As Celery's `_store_result` does, a
    SUCCESS already stored stands, unless `keep(task_id, its result)` says it is not one to
    keep (e.g. an answer someone else wrote): that one is replaced in a second round trip."""
    if not answers:
        return
    # The script reads what is stored as JSON: any other serializer takes Celery's own way.
    if not isinstance(backend, RedisBackend) or getattr(backend, "serializer", None) != "json":
        for task_id, result in answers:
            backend.mark_as_done(task_id, result)
        return
    redis_backend: Any = backend  # celery-types declares neither `expires` nor `_get_result_meta`
    keys = [redis_backend.get_key_for_task(task_id) for task_id, _ in answers]
    values = [_success(redis_backend, task_id, result) for task_id, result in answers]
    expiry = int(redis_backend.expires) if redis_backend.expires else 0
    script = redis_backend.client.register_script(_STORE_UNLESS_SUCCESS)
    found = script(keys=keys, args=[expiry, *values])
    replace = [
        (key, value)
        for (task_id, _), key, value, current in zip(answers, keys, values, found, strict=True)
        if current is not None and not keep(task_id, redis_backend.decode_result(current).get("result"))
    ]
    if replace:
        with redis_backend.client.pipeline() as pipe:
            for key, value in replace:
                pipe.set(key, value, ex=expiry or None)
                pipe.publish(key, value)
            pipe.execute()


def _success(redis_backend: Any, task_id: str, result: Any) -> Any:
    meta = redis_backend._get_result_meta(
        result=redis_backend.encode_result(result, states.SUCCESS), state=states.SUCCESS, traceback=None, request=None
    )
    meta["task_id"] = task_id
    return redis_backend.encode(meta)
