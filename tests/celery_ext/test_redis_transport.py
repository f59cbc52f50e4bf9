"""The receiver's one-LPUSH `webhooks.process` message is the message Celery's `send_task` sends
(celery_ext/redis_transport.py). A real worker running it is tests/receiver/test_receiver_pipeline.py."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from celery_ext.redis_transport import TaskMessageWriter
from messaging.celery_config import PROCESS_WEBHOOK_TASK, WEBHOOKS_QUEUE
from models.settings import Settings
from receiver.ingest import make_producer
from tests.support.receiver_support import unused_port

# What differs between two messages of the same task: its id (and what repeats it) and the tag.
PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag"}


@pytest.fixture
def producer(receiver_settings: Settings):
    app = make_producer(receiver_settings)
    yield app
    app.close()


@pytest.fixture
def writer(producer, receiver_settings: Settings):
    writer = TaskMessageWriter(producer, receiver_settings.redis_url.get_secret_value(), socket_timeout=1.0)
    yield writer
    writer.close()


def _pop(client: redis.Redis) -> dict:
    raw = client.rpop(WEBHOOKS_QUEUE)
    assert raw is not None, "nothing was queued"
    return json.loads(raw)


def _comparable(message: dict) -> dict:
    """The message with per-message values blanked and the body decoded."""
    message = json.loads(json.dumps(message))
    for part in (message["headers"], message["properties"]):
        for key in PER_MESSAGE & part.keys():
            part[key] = "<per message>"
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def test_the_message_is_what_send_task_publishes(producer, writer, redis_client):
    kwargs = {"inbox_id": 42}
    producer.send_task(PROCESS_WEBHOOK_TASK, kwargs=kwargs, ignore_result=True, argsrepr="()", kwargsrepr=repr(kwargs))
    by_celery = _pop(redis_client)
    task_id = writer.send(PROCESS_WEBHOOK_TASK, kwargs)
    ours = _pop(redis_client)

    assert _comparable(ours) == _comparable(by_celery)
    assert ours["headers"]["id"] == ours["headers"]["root_id"] == ours["properties"]["correlation_id"] == task_id
    assert ours["properties"]["delivery_tag"] != by_celery["properties"]["delivery_tag"]
    assert redis_client.llen(WEBHOOKS_QUEUE) == 0


def test_the_queue_is_the_one_celery_routes_the_task_to(writer, producer):
    assert writer.queue_of(PROCESS_WEBHOOK_TASK) == WEBHOOKS_QUEUE
    assert producer.amqp.router.route({}, PROCESS_WEBHOOK_TASK)["queue"].name == WEBHOOKS_QUEUE


def test_every_message_has_its_own_task_id(writer, redis_client):
    ids = {writer.send(PROCESS_WEBHOOK_TASK, {"inbox_id": n}) for n in range(5)}
    queued = [json.loads(raw) for raw in redis_client.lrange(WEBHOOKS_QUEUE, 0, -1)]
    assert len(ids) == 5
    assert {message["headers"]["id"] for message in queued} == ids
    assert len({message["properties"]["delivery_tag"] for message in queued}) == 5
    # Each carries its own kwargs, in its body and in both reprs (the rest is made once per task).
    for message in queued:
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert args == []
        assert message["headers"]["kwargsrepr"] == message["properties"]["kwargsrepr"] == repr(kwargs)
    assert sorted(json.loads(base64.b64decode(m["body"]))[1]["inbox_id"] for m in queued) == list(range(5))


def test_an_unreachable_redis_raises_a_redis_error(producer):
    writer = TaskMessageWriter(producer, f"redis://127.0.0.1:{unused_port()}/0", socket_timeout=1.0)
    try:
        with pytest.raises(redis.RedisError):
            writer.send(PROCESS_WEBHOOK_TASK, {"inbox_id": 1})
    finally:
        writer.close()
