"""Upload tracking (`StorageObject`) and its soft delete, both idempotent.

An object is identified by (provider, pathname) among the rows not deleted: recording it again
keeps one row (and takes the newer url/name/size/contentType). Concurrent records of one
pathname are serialised by an advisory lock on it, and lookups go through the service's own
`storage_pathnames` index (why: docs/design.md, "Storage objects"). Deleting sets `deletedAt`
once; deleting again keeps the first `deletedAt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from models.app import StorageObject, User
from models.base import utcnow
from models.usage import StoragePathname
from worker.usage.requests import NotYetKnown

DEFAULT_PROVIDER = "vercel_blob"


@dataclass(frozen=True)
class StorageRecord:
    clerk_user_id: str
    url: str
    pathname: str
    name: str
    size: int
    content_type: str | None = None
    provider: str = DEFAULT_PROVIDER

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> StorageRecord:
        """The upload a `storage.record` request names (KeyError or TypeError if it is not one)."""
        return cls(
            args["clerk_user_id"],
            args["url"],
            args["pathname"],
            args["name"],
            args["size"],
            args.get("content_type"),
            args.get("provider") or DEFAULT_PROVIDER,
        )


def record_object(session: Session, record: StorageRecord, *, final: bool = True) -> dict[str, Any]:
    """`recorded` (a new row), `duplicate` (the live row already says this), `updated` (the live
    row of this pathname took the new fields), or `unknown_user` (with `final=False`: raise
    `NotYetKnown` so the task waits for the Clerk webhook)."""
    _lock_pathname(session, record.provider, record.pathname)
    user_id = session.scalar(select(User.id).where(User.clerk_id == record.clerk_user_id))
    if user_id is None:
        if not final:
            raise NotYetKnown(record.clerk_user_id)
        return {"status": "unknown_user", "storage_object_id": None}
    fields = {
        "user_id": user_id,
        "clerk_user_id": record.clerk_user_id,
        "url": record.url,
        "name": record.name,
        "size": record.size,
        "content_type": record.content_type,
    }
    latest = session.scalar(latest_object_query(record.provider, record.pathname))
    live = latest if latest is not None and latest.deleted_at is None else None
    if live is None:
        row = StorageObject(provider=record.provider, pathname=record.pathname, **fields)
        session.add(row)
        session.flush()
        _point_pathname_at(session, row)
        return {"status": "recorded", "storage_object_id": row.id}
    if all(getattr(live, name) == value for name, value in fields.items()):
        return {"status": "duplicate", "storage_object_id": live.id}
    for name, value in fields.items():
        setattr(live, name, value)
    session.flush()
    return {"status": "updated", "storage_object_id": live.id}


def delete_object(
    session: Session,
    *,
    storage_object_id: str | None = None,
    pathname: str | None = None,
    provider: str = DEFAULT_PROVIDER,
) -> dict[str, Any]:
    """Soft delete by id, or by pathname (the live row of that pathname): `deleted`,
    `already_deleted` (with the first `deleted_at`) or `not_found`."""
    if (storage_object_id is None) == (pathname is None):
        return {
            "status": "error",
            "error": "invalid_arguments",
            "detail": "give exactly one of storage_object_id and pathname",
        }
    if pathname is not None:
        _lock_pathname(session, provider, pathname)  # a concurrent record of it waits, then records anew
        storage_object_id = session.scalar(
            select(StoragePathname.storage_object_id).where(
                StoragePathname.provider == provider, StoragePathname.pathname == pathname
            )
        )
        if storage_object_id is None:
            return {"status": "not_found", "storage_object_id": None, "deleted_at": None}
    match = StorageObject.id == storage_object_id
    now = utcnow()
    # A concurrent delete of the same row waits on its lock, re-checks `deletedAt IS NULL` and
    # updates nothing: the first `deletedAt` stays.
    deleted = session.execute(
        update(StorageObject)
        .where(match, StorageObject.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now)
        .returning(StorageObject.id)
    ).scalar_one_or_none()
    if deleted is not None:
        return _deletion("deleted", deleted, now)
    earlier = session.execute(
        select(StorageObject.id, StorageObject.deleted_at)
        .where(match)
        .order_by(StorageObject.deleted_at.desc())
        .limit(1)
    ).one_or_none()
    if earlier is None:
        return {"status": "not_found", "storage_object_id": None, "deleted_at": None}
    return _deletion("already_deleted", *earlier)


def latest_object_query(provider: str, pathname: str) -> Select[StorageObject]:
    """The latest row recorded for a pathname (live unless its `deletedAt` is set), found
    through the service's index: a primary-key lookup on each table, never a scan."""
    return (
        select(StorageObject)
        .join(StoragePathname, StoragePathname.storage_object_id == StorageObject.id)
        .where(StoragePathname.provider == provider, StoragePathname.pathname == pathname)
    )


def _lock_pathname(session: Session, provider: str, pathname: str) -> None:
    session.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(f"storage:{provider}:{pathname}", 0))))


def _point_pathname_at(session: Session, row: StorageObject) -> None:
    statement = insert(StoragePathname).values(provider=row.provider, pathname=row.pathname, storage_object_id=row.id)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[StoragePathname.provider, StoragePathname.pathname],
            set_={"storage_object_id": row.id, "updated_at": func.now()},
        )
    )


def _deletion(status: str, storage_object_id: str, deleted_at: Any) -> dict[str, Any]:
    return {"status": status, "storage_object_id": storage_object_id, "deleted_at": deleted_at.isoformat()}
