"""The registry: MongoDB collections that hold the truth about every job.

A Celery message is only a ticket; whether a job may start, finish or be
retried is decided here with guarded single-document updates.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.cursor import Cursor
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError

from .clock import later
from .errors import ConfigurationError, JobExists, JobNotFound
from .settings import Settings
from .states import Transition

Doc = dict[str, Any]

# force first, then higher priority, then FIFO: core4's selection order
DISPATCH_ORDER = [("force", DESCENDING), ("priority", DESCENDING), ("_id", ASCENDING)]
DISPATCH_INDEX = "dispatch_order"


def as_object_id(job_id: str | ObjectId) -> ObjectId:
    if isinstance(job_id, ObjectId):
        return job_id
    try:
        return ObjectId(str(job_id))
    except (InvalidId, TypeError):
        raise JobNotFound(f"{job_id!r} is not a job id") from None


class Registry:
    """Collections and the few primitive operations everything else builds on."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: MongoClient[Doc] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def db(self) -> Database[Doc]:
        # pymongo clients must not cross a fork: each pool child gets its own
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = MongoClient(
                    self.settings.mongodb_url, serverSelectionTimeoutMS=5000, tz_aware=False
                )
                self._pid = os.getpid()
            return self._client[self.settings.database]

    def _collection(self, kind: str) -> Collection[Doc]:
        return self.db[f"{self.settings.collection_prefix}_{kind}"]

    @property
    def jobs(self) -> Collection[Doc]:
        return self._collection("jobs")

    @property
    def journal(self) -> Collection[Doc]:
        return self._collection("journal")

    @property
    def gates(self) -> Collection[Doc]:
        return self._collection("gates")

    @property
    def workers(self) -> Collection[Doc]:
        return self._collection("workers")

    @property
    def control(self) -> Collection[Doc]:
        return self._collection("control")

    def ping(self) -> None:
        try:
            self.db.command("ping")
        except PyMongoError as exc:
            raise ConfigurationError(
                f"cannot reach MongoDB at {self.settings.masked_url}: {type(exc).__name__}"
            ) from None

    def ensure_indexes(self) -> None:
        """Every per-job query is served by one of these."""
        try:
            self._create_indexes()
        except PyMongoError as exc:
            raise ConfigurationError(
                f"cannot prepare the registry at {self.settings.masked_url}: {type(exc).__name__}"
            ) from None

    def _create_indexes(self) -> None:
        jobs = self.jobs
        jobs.create_index([("name", ASCENDING), ("args_hash", ASCENDING)], unique=True, name="unique_job")
        jobs.create_index([*DISPATCH_ORDER, ("query_at", ASCENDING)], name=DISPATCH_INDEX)
        jobs.create_index([("state", ASCENDING)], name="state")
        jobs.create_index([("dispatched_until", ASCENDING)], name="dispatched", sparse=True)
        jobs.create_index([("locked.worker", ASCENDING)], name="locked_worker", sparse=True)
        jobs.create_index([("mid", ASCENDING)], name="mid", sparse=True)
        jobs.create_index([("removed_at", ASCENDING)], name="removed")
        self.journal.create_index([("mid", ASCENDING)], name="mid", sparse=True)
        self.workers.create_index([("heartbeat", ASCENDING)], name="heartbeat")

    def insert(self, doc: Doc) -> None:
        try:
            self.jobs.insert_one(doc)
        except DuplicateKeyError:
            other = self.jobs.find_one(
                {"name": doc["name"], "args_hash": doc["args_hash"]}, {"_id": 1}
            )
            raise JobExists(doc["name"], str(other["_id"]) if other else None) from None

    def live(self, job_id: str | ObjectId) -> Doc | None:
        return self.jobs.find_one({"_id": as_object_id(job_id)})

    def find(self, job_id: str | ObjectId) -> Doc | None:
        """Live document first, then the journal."""
        oid = as_object_id(job_id)
        doc = self.jobs.find_one({"_id": oid})
        if doc is None:
            doc = self.journal.find_one({"_id": oid})
            if doc is not None:
                doc["journaled"] = True
        return doc

    def transition(
        self,
        job_id: ObjectId,
        transition: Transition,
        fields: Mapping[str, Any] | None = None,
        where: Mapping[str, Any] | None = None,
        unset: tuple[str, ...] = (),
        inc: Mapping[str, Any] | None = None,
    ) -> bool:
        """Apply one transition atomically; False means another process won or the state moved."""
        update: dict[str, Any] = {"$set": dict(fields or {})}
        if transition.target is not None:
            update["$set"]["state"] = transition.target.value
        if unset:
            update["$unset"] = {key: "" for key in unset}
        if inc:
            update["$inc"] = dict(inc)
        if not update["$set"]:
            del update["$set"]
        guard = {"_id": job_id, **transition.filter(), **(where or {})}
        return self.jobs.update_one(guard, update).matched_count == 1

    def archive(self, job_id: ObjectId, where: Mapping[str, Any] | None = None) -> Doc | None:
        """Move a live document into the journal if it still matches ``where``.

        The journal copy is written first, so an interruption leaves a
        duplicate (harmless, rewritten next time) rather than a lost job; if the
        live document changed in between, the copy is taken back.
        """
        guard = {"_id": job_id, **(where or {})}
        doc = self.jobs.find_one(guard)
        if doc is None:
            return None
        self.journal.replace_one({"_id": job_id}, doc, upsert=True)
        if self.jobs.delete_one(guard).deleted_count == 1:
            return doc
        if self.jobs.count_documents({"_id": job_id}, limit=1):
            self.journal.delete_one({"_id": job_id})
        return None

    def alive_workers(self, projection: Mapping[str, Any] | None = None) -> Cursor[Doc]:
        """Workers whose heartbeat is within ``worker_timeout``."""
        return self.workers.find({"heartbeat": {"$gte": later(-self.settings.worker_timeout)}}, projection)

    def children(self, mid: str) -> Iterator[Doc]:
        return iter(self.jobs.find({"mid": mid}))

    def count_children(self, mid: str) -> int:
        return self.jobs.count_documents({"mid": mid})
