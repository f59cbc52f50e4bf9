"""StorageObject upload tracking and soft delete: idempotent in-process and through a worker."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from models.app import StorageObject
from tests.support.usage import count_rows, credits_client, make_user, wait_for_retry
from worker.usage import storage
from worker.usage.requests import NotYetKnown

BLOB = {
    "url": "https://blob.example/u/a.png",
    "pathname": "u/a.png",
    "name": "a.png",
    "size": 10,
    "content_type": "image/png",
}


def record(factory, clerk_user_id="user_a", **changes):
    with factory.begin() as session:
        return storage.record_object(session, storage.StorageRecord(clerk_user_id, **{**BLOB, **changes}))


def delete(factory, **target):
    with factory.begin() as session:
        return storage.delete_object(session, **target)


@pytest.fixture(autouse=True)
def user(session_factory):
    make_user(session_factory)


def test_recording_the_same_object_twice_keeps_one_row(session_factory):
    first = record(session_factory)
    assert first["status"] == "recorded"
    assert record(session_factory) == {"status": "duplicate", "storage_object_id": first["storage_object_id"]}
    with session_factory() as session:
        row = session.scalar(select(StorageObject))
    assert (row.provider, row.pathname, row.size, row.content_type) == ("vercel_blob", "u/a.png", 10, "image/png")


def test_an_overwrite_of_the_pathname_updates_the_live_row(session_factory):
    first = record(session_factory)
    assert record(session_factory, size=20) == {"status": "updated", "storage_object_id": first["storage_object_id"]}
    assert count_rows(session_factory, StorageObject) == 1


def test_deleting_twice_keeps_the_first_deleted_at(session_factory):
    object_id = record(session_factory)["storage_object_id"]
    first = delete(session_factory, storage_object_id=object_id)
    again = delete(session_factory, storage_object_id=object_id)
    assert first["status"] == "deleted" and again["status"] == "already_deleted"
    assert again["deleted_at"] == first["deleted_at"]


def test_delete_by_pathname_then_record_again_is_a_new_upload(session_factory):
    old_id = record(session_factory)["storage_object_id"]
    assert delete(session_factory, pathname="u/a.png")["storage_object_id"] == old_id
    new = record(session_factory)
    assert new["status"] == "recorded" and new["storage_object_id"] != old_id
    assert delete(session_factory, pathname="nope")["status"] == "not_found"
    assert delete(session_factory)["error"] == "invalid_arguments"


def test_an_unknown_user_is_answered_when_the_wait_is_over(session_factory):
    assert record(session_factory, clerk_user_id="user_ghost")["status"] == "unknown_user"
    assert count_rows(session_factory, StorageObject) == 0
    with pytest.raises(NotYetKnown), session_factory.begin() as session:  # still waiting: a retry
        storage.record_object(session, storage.StorageRecord("user_ghost", **BLOB), final=False)
    assert count_rows(session_factory, StorageObject) == 0


def test_a_user_created_during_the_wait_has_the_upload_recorded_after_it(celery_worker, producer, session_factory):
    pending = credits_client(producer.conf.broker_url).send_record_storage("user_late", **BLOB, wait=60)
    wait_for_retry(producer, pending)  # the worker ran it, found no user, and is waiting
    assert count_rows(session_factory, StorageObject) == 0
    make_user(session_factory, "user_late")
    answer = pending.answer()
    assert answer["status"] == "recorded"
    with session_factory() as session:
        row = session.get(StorageObject, answer["storage_object_id"])
        assert (row.clerk_user_id, row.pathname) == ("user_late", "u/a.png")


def test_storage_tasks_through_a_worker(celery_worker, producer, session_factory):
    client = credits_client(producer.conf.broker_url)
    results = [client.send_record_storage("user_a", **BLOB) for _ in range(4)]  # also concurrently
    statuses = sorted(result.answer()["status"] for result in results)
    assert statuses == ["duplicate", "duplicate", "duplicate", "recorded"]
    deletions = [client.send_delete_storage(pathname="u/a.png") for _ in range(2)]
    answers = [result.answer() for result in deletions]
    assert sorted(a["status"] for a in answers) == ["already_deleted", "deleted"]
    assert answers[0]["deleted_at"] == answers[1]["deleted_at"]
    assert count_rows(session_factory, StorageObject) == 1
