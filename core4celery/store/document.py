"""The shape of a job document, and of a fresh one for enqueue and restart.

Keeping it in one place means a restarted job is indistinguishable from an
enqueued one except for its lineage (``enqueued.parent_id``) and ``trial``.
"""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any, TypedDict

from bson import ObjectId

from ..clock import now
from ..config.options import JobOptions
from .states import State
from .values import args_hash


class Locked(TypedDict):
    """The run in progress: who runs it and until when its lease holds."""

    worker: str
    hostname: str
    pid: int
    run: ObjectId
    at: datetime
    heartbeat: datetime
    lease_until: datetime


class JobDoc(TypedDict, total=False):
    """A document of the jobs collection (and, once journaled, of the journal)."""

    _id: ObjectId
    name: str
    args: dict[str, Any]
    args_hash: str
    mid: str | None
    queue: str | None
    state: str
    attempts: int
    attempts_left: int
    priority: int
    max_parallel: int
    defer_time: float
    defer_max: float
    error_time: float
    zombie_time: float
    wall_time: float | None
    progress_interval: float
    force: bool
    trial: int
    query_at: datetime | None
    dispatched_until: datetime  # present only while a ticket is out
    enqueued: dict[str, Any]
    started_at: datetime | None
    finished_at: datetime | None
    inactive_at: datetime  # absent until the first start
    runtime: float
    locked: Locked | None
    run: ObjectId  # the token of the last run that ended
    prog: dict[str, Any]
    last_error: dict[str, Any] | None
    result: Any
    killed_at: datetime | None
    removed_at: datetime | None
    zombie_at: datetime | None
    wall_at: datetime | None
    rev: ObjectId  # written by every transition: tells whether a write whose reply was lost landed
    source_rev: ObjectId | None  # journal copies only: the live rev the copy was built from
    journaled: bool  # set on reads from the journal, never stored


def new_job(
    name: str,
    arguments: dict[str, Any],
    options: JobOptions,
    *,
    query_at: datetime,
    mid: str | None = None,
    queue: str | None = None,
    parent_id: ObjectId | None = None,
    trial: int = 0,
    job_id: ObjectId | None = None,
) -> JobDoc:
    doc: JobDoc = {
        "_id": job_id or ObjectId(), "name": name, "args": arguments,
        "args_hash": args_hash(name, arguments, mid), "mid": mid,
        "state": State.PENDING.value, "attempts_left": options.attempts, "trial": trial, "query_at": query_at,
        "enqueued": {"at": now(), "hostname": socket.gethostname(), "parent_id": parent_id},
        "started_at": None, "finished_at": None, "runtime": 0.0, "locked": None,
        "prog": {"value": None, "message": None}, "last_error": None,
        "killed_at": None, "removed_at": None, "zombie_at": None, "wall_at": None, "queue": queue,
    }
    doc.update(options.as_document())  # type: ignore[typeddict-item]
    return doc


def lock_of(doc: JobDoc) -> dict[str, Any]:
    """The run's lock as a plain dict ({} when no run holds the job)."""
    return dict(doc.get("locked") or {})


def options_of(doc: JobDoc) -> JobOptions:
    """The options a stored job was enqueued with."""
    return JobOptions(**{key: doc[key] for key in JobOptions.__dataclass_fields__})  # type: ignore[literal-required]
