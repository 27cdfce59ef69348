"""The shape of a job document, and of a fresh one for enqueue and restart.

Keeping it in one place means a restarted job is indistinguishable from an
enqueued one except for its lineage (``enqueued.parent_id``) and ``trial``.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
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
    time_limit: float | None
    worker: list[str] | None  # pinned to these workers (names or patterns)
    max_per_node: int | None
    route: str  # the worker queue of the current claim (pinned or per-node capped jobs)
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
    slot: ObjectId  # the token of the claim whose slots the job holds (see store/slots.py)
    after: list[ObjectId]  # jobs this one waits for (dependency=, a canvas); it is due once all completed
    feed: dict[str, Any]  # {"param", "list"}: the argument that receives the results of ``after`` (canvas)
    blocked_at: datetime  # present while it waits for ``after`` (sparse index "blocked")
    successors: list[ObjectId]  # jobs waiting for this one: its run releases them when it ends
    group_id: str  # the Celery group (or chord header) this job belongs to
    celery_id: str  # the Celery task id the job answers to (a canvas's frozen id, an adopted message's id)
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
    links: Links | None = None,
) -> JobDoc:
    links = links or Links()
    doc: JobDoc = {
        "_id": job_id or links.job_id or ObjectId(), "name": name, "args": arguments,
        "args_hash": args_hash(name, arguments, mid, links.scope), "mid": mid,
        "state": State.PENDING.value, "attempts_left": options.attempts, "trial": trial, "query_at": query_at,
        "enqueued": {"at": now(), "hostname": socket.gethostname(), "parent_id": parent_id},
        "started_at": None, "finished_at": None, "runtime": 0.0, "locked": None,
        "prog": {"value": None, "message": None}, "last_error": None,
        "killed_at": None, "removed_at": None, "zombie_at": None, "wall_at": None, "queue": queue,
    }
    doc.update(options.as_document())  # type: ignore[typeddict-item]
    doc.update(links.fields(doc["enqueued"]["at"]))  # type: ignore[typeddict-item]
    return doc


# what a ticket carries about its job (a message header), so a run needs no read of its document
TICKET_HEADER = "core4"
TICKET_FIELDS = ("trial", "attempts_left", "runtime", "defer_time", "error_time", "progress_interval", "queue",
                 "max_parallel", "slot", "successors", "route", "mid")


@dataclass(frozen=True)
class Links:
    """How a job hangs in a canvas or on its dependencies; all of it lives in the job's document."""

    after: tuple[ObjectId, ...] = ()
    feed: dict[str, Any] | None = None  # {"param": name, "list": bool}
    successors: tuple[ObjectId, ...] = ()
    scope: str | None = None  # uniqueness scope (see values.args_hash)
    group_id: str | None = None
    celery_id: str | None = None
    job_id: ObjectId | None = None  # assigned beforehand, so other members can name it

    def fields(self, stamp: datetime) -> dict[str, Any]:
        """The document fields, set only when used (a plain job's document has none of them)."""
        fields: dict[str, Any] = {}
        if self.after:
            fields.update(after=list(self.after), blocked_at=stamp, query_at=None)
        if self.feed is not None:
            fields["feed"] = self.feed
        if self.successors:
            fields["successors"] = list(self.successors)
        if self.group_id is not None:
            fields["group_id"] = self.group_id
        if self.celery_id is not None:
            fields["celery_id"] = self.celery_id
        return fields


@dataclass(frozen=True)
class Run:
    """One run of a job as its process knows it: from the ticket and its own start, without a read."""

    job_id: ObjectId
    name: str
    token: ObjectId  # locked.run: guards every ending
    rev: ObjectId  # the rev the start wrote: the completion deletes only an unchanged job
    started_at: datetime
    trial: int  # this run's trial number (1-based)
    attempts_left: int  # before this run
    runtime: float  # of the earlier runs
    defer_time: float
    error_time: float
    progress_interval: float
    queue: str
    max_parallel: int
    slot: ObjectId | None = None  # the claim token of the slots this run holds
    args: dict[str, Any] | None = None  # set when the start had to read the job (a ticket without the header)
    successors: tuple[ObjectId, ...] = ()  # released (or abandoned) by this run's final ending
    mid: str | None = None  # the mother, woken when this run ends her last unfinished child

    @classmethod
    def of(cls, fields: Mapping[str, Any], *, job_id: ObjectId, name: str, token: ObjectId, rev: ObjectId,
           started_at: datetime, trial: int) -> Run:
        return cls(job_id=job_id, name=name, token=token, rev=rev, started_at=started_at, trial=trial,
                   attempts_left=int(fields["attempts_left"]), runtime=float(fields.get("runtime") or 0.0),
                   defer_time=float(fields["defer_time"]), error_time=float(fields["error_time"]),
                   progress_interval=float(fields["progress_interval"]),
                   queue=str(fields.get("route") or fields.get("queue") or "celery"),
                   max_parallel=int(fields["max_parallel"]), slot=_object_id(fields.get("slot")),
                   args=fields.get("args"),
                   successors=tuple(ObjectId(str(job)) for job in fields.get("successors") or ()),
                   mid=fields.get("mid"))

    def ended(self, stamp: datetime) -> dict[str, Any]:
        """The fields every ending writes."""
        runtime = self.runtime + (stamp - self.started_at).total_seconds()
        return {"finished_at": stamp, "runtime": runtime, "locked": None, "run": self.token}


def ticket_header(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Only the fields, never the arguments (those travel as the ticket's kwargs); JSON-safe."""
    header = {key: doc.get(key) for key in TICKET_FIELDS}
    header["slot"] = str(header["slot"]) if header["slot"] is not None else None
    header["successors"] = [str(job) for job in header["successors"] or ()]
    return header


def _object_id(value: Any) -> ObjectId | None:
    return value if isinstance(value, ObjectId) or value is None else ObjectId(str(value))


def lock_of(doc: JobDoc) -> dict[str, Any]:
    """The run's lock as a plain dict ({} when no run holds the job)."""
    return dict(doc.get("locked") or {})


def options_of(doc: JobDoc) -> JobOptions:
    """The options a stored job was enqueued with."""
    fields = JobOptions.__dataclass_fields__
    return JobOptions(**{key: doc[key] for key in fields if key in doc})  # type: ignore[literal-required]
