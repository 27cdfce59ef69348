"""The shape of a fresh job document, shared by enqueue and restart.

Keeping it in one place means a restarted job is indistinguishable from an
enqueued one except for its lineage (``enqueued.parent_id``) and ``trial``.
"""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any

from bson import ObjectId

from .clock import now
from .jsonargs import args_hash
from .options import JobOptions
from .registry import Doc
from .states import State


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
) -> Doc:
    return {
        "_id": job_id or ObjectId(), "name": name, "args": arguments,
        "args_hash": args_hash(name, arguments, mid), "mid": mid,
        "state": State.PENDING.value, **options.as_document(),
        "attempts_left": options.attempts, "trial": trial, "query_at": query_at,
        "enqueued": {"at": now(), "hostname": socket.gethostname(), "parent_id": parent_id},
        "started_at": None, "finished_at": None, "runtime": 0.0, "locked": None,
        "prog": {"value": None, "message": None}, "last_error": None, "inactive_at": None,
        "killed_at": None, "removed_at": None, "zombie_at": None, "wall_at": None, "queue": queue,
    }


def options_of(doc: Doc) -> JobOptions:
    """The options a stored job was enqueued with."""
    return JobOptions(**{key: doc[key] for key in JobOptions.__dataclass_fields__})
