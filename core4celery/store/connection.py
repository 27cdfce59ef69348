"""The registry's collections, one MongoClient per process, and the indexes.

Only the store packages write through these collections; everything else
reads jobs through :class:`core4celery.store.jobs.JobStore`.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure, PyMongoError

from ..config.settings import Settings, redact, user_of
from ..errors import ConfigurationError, JobNotFound
from ..process import PerProcess
from .outage import Outage

Doc = dict[str, Any]

# force first, then higher priority, then FIFO: core4's selection order
DISPATCH_ORDER = [("force", DESCENDING), ("priority", DESCENDING), ("_id", ASCENDING)]
DISPATCH_INDEX = "dispatch_order"
DUE_INDEX = "due"
BLOCKED_INDEX = "blocked"  # jobs waiting for their dependencies (few; swept by every worker)
FRONT_INDEX = "front"  # single-field: SecantusDB bounds a scan on it by the front's size, not the backlog's
SOCKET_TIMEOUT_MS = 60_000


def as_object_id(job_id: Any) -> ObjectId:
    if isinstance(job_id, ObjectId):
        return job_id
    if not isinstance(job_id, str):
        raise JobNotFound(f"{job_id!r} is not a job id (a 24-character hex string)")
    try:
        return ObjectId(job_id)
    except (InvalidId, TypeError):
        raise JobNotFound(f"{job_id!r} is not a job id (a 24-character hex string)") from None


class Connection:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: PerProcess[MongoClient[Doc]] = PerProcess(self._connect)
        self.outage = Outage(settings.outage_timeout, lambda: settings.masked_url)

    def _connect(self) -> MongoClient[Doc]:
        # pymongo's own waits stay below outage_timeout, so Outage decides when to give up;
        # a server that hangs instead of dying surfaces as NetworkTimeout (retried like a drop)
        selection = int(min(5.0, self.settings.outage_timeout) * 1000)
        return MongoClient(self.settings.mongodb_url, serverSelectionTimeoutMS=selection,
                           socketTimeoutMS=SOCKET_TIMEOUT_MS, tz_aware=False)

    def close(self) -> None:
        """Close this process's client, if it made one (a later use opens a new one)."""
        self._client.close_with(MongoClient.close)

    @property
    def db(self) -> Database[Doc]:
        return self._client.get()[self.settings.database]

    def collection(self, kind: str) -> Collection[Doc]:
        return self.db[f"{self.settings.collection_prefix}_{kind}"]

    @property
    def jobs(self) -> Collection[Doc]:
        return self.collection("jobs")

    @property
    def journal(self) -> Collection[Doc]:
        return self.collection("journal")

    @property
    def gates(self) -> Collection[Doc]:
        return self.collection("gates")

    @property
    def groups(self) -> Collection[Doc]:
        return self.collection("groups")

    @property
    def workers(self) -> Collection[Doc]:
        return self.collection("workers")

    @property
    def control(self) -> Collection[Doc]:
        return self.collection("control")

    @property
    def schedules(self) -> Collection[Doc]:
        return self.collection("schedules")

    @property
    def logs(self) -> Collection[Doc]:
        return self.collection("logs")

    @property
    def stdout(self) -> Collection[Doc]:
        return self.collection("stdout")

    @property
    def cookies(self) -> Collection[Doc]:
        return self.collection("cookies")

    def ping(self) -> None:
        try:
            self.db.command("ping")
        except OperationFailure as exc:
            raise ConfigurationError(self._refused(exc)) from None
        except PyMongoError as exc:
            raise ConfigurationError(
                f"cannot reach MongoDB at {self.settings.masked_url}: {type(exc).__name__}"
            ) from None

    def _refused(self, exc: OperationFailure) -> str:
        if exc.code == 18:
            user = user_of(self.settings.mongodb_url)
            return f"MongoDB at {self.settings.masked_url}: authentication failed for user {user!r} (check the password)"
        message = str(exc.details and exc.details.get("errmsg"))
        return f"MongoDB at {self.settings.masked_url} refused: {redact(message, self.settings.mongodb_url)}"

    def ensure_indexes(self) -> None:
        """Every per-job query is served by one of these; a worker starting during an outage waits it out."""
        try:
            self.outage.run(self._create_indexes, "prepare the registry")
        except OperationFailure as exc:
            raise ConfigurationError(self._refused(exc)) from None
        except PyMongoError as exc:
            raise ConfigurationError(
                f"cannot prepare the registry at {self.settings.masked_url}: {type(exc).__name__}"
            ) from None

    def _create_indexes(self) -> None:
        jobs = self.jobs
        jobs.create_index([("name", ASCENDING), ("args_hash", ASCENDING)], unique=True, name="unique_job")
        jobs.create_index([*DISPATCH_ORDER, ("query_at", ASCENDING)], name=DISPATCH_INDEX)
        jobs.create_index([("front_at", ASCENDING)], name=FRONT_INDEX, sparse=True)
        jobs.create_index([("query_at", ASCENDING)], name=DUE_INDEX)
        jobs.create_index([("state", ASCENDING)], name="state")
        jobs.create_index([("dispatched_until", ASCENDING)], name="dispatched", sparse=True)
        jobs.create_index([("locked.worker", ASCENDING)], name="locked_worker", sparse=True)
        jobs.create_index([("mid", ASCENDING)], name="mid", sparse=True)
        jobs.create_index([("celery_id", ASCENDING)], name="celery_id", sparse=True)
        self.journal.create_index([("celery_id", ASCENDING)], name="celery_id", sparse=True)
        jobs.create_index([("removed_at", ASCENDING)], name="removed")
        jobs.create_index([("blocked_at", ASCENDING)], name=BLOCKED_INDEX, sparse=True)
        self.journal.create_index([("mid", ASCENDING)], name="mid", sparse=True)
        self.journal.create_index([("name", ASCENDING)], name="name")
        self.workers.create_index([("heartbeat", ASCENDING)], name="heartbeat")
        self.logs.create_index([("job_id", ASCENDING), ("trial", ASCENDING), ("seq", ASCENDING)], name="job_run")
        self.stdout.create_index([("job_id", ASCENDING), ("trial", ASCENDING)], unique=True, name="job_run")
