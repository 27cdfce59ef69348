"""One execution (trial) of a job inside a worker process.

Start and every ending are guarded by the run token written at start, so a
run that lost its lease (its job was recovered and started elsewhere) can
never overwrite the newer run's outcome.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from celery.exceptions import Ignore, Retry
from celery.utils.log import get_task_logger

from .clock import later, now
from .errors import InvalidArguments
from .jsonargs import check_json
from .registry import Doc, as_object_id
from .signals import JobDeferred
from .states import COMPLETE, DEFER, ERROR, FAIL, START, WAITING, State

if TYPE_CHECKING:
    from .core import Core4

log = get_task_logger("core4celery.job")


class JobRun:
    def __init__(self, core4: Core4, job_id: str, hostname: str) -> None:
        self.core4 = core4
        self.registry = core4.registry
        self.oid = as_object_id(job_id)
        self.job_id = str(self.oid)
        self.hostname = hostname
        self.token = ObjectId()
        self.doc: Doc = {}
        self._next_progress = 0.0

    @property
    def trial(self) -> int:
        return int(self.doc.get("trial", 0))

    def start(self) -> bool:
        """dispatched → running; False when the ticket is stale or a duplicate."""
        doc = self.registry.live(self.oid)
        if doc is None or doc["state"] not in WAITING or not doc.get("dispatched_until"):
            return False
        stamp = now()
        locked = {
            "worker": self.core4.worker_id(self.hostname), "hostname": self.hostname,
            "pid": os.getpid(), "run": self.token, "at": stamp, "heartbeat": stamp,
            "lease_until": later(self.registry.settings.run_lease, stamp),
        }
        fields: dict[str, Any] = {"started_at": stamp, "trial": doc["trial"] + 1, "locked": locked}
        if doc.get("inactive_at") is None:
            fields["inactive_at"] = later(doc["defer_max"], stamp)
        won = self.registry.transition(
            self.oid, START, fields, unset=("dispatched_until",),
            where={"dispatched_until": doc["dispatched_until"], "trial": doc["trial"]},
        )
        if won:
            self.doc = {**doc, **fields, "state": State.RUNNING.value}
            log.info("start execution of %s [%s] trial %d", doc["name"], self.job_id, self.trial)
        return won

    def execute(self, body: Callable[..., Any]) -> Any:
        if not self.start():
            raise Ignore()
        try:
            result = body(**self.doc.get("args", {}))
            check_json(result, f"return value of {self.doc['name']}")
        except JobDeferred as signal:
            self._defer(signal)
        except Exception as exc:
            self._fail(exc)
        else:
            self._complete(result)
            return result

    def _ended(self, stamp: datetime) -> dict[str, Any]:
        started = self.doc["started_at"]
        runtime = float(self.doc.get("runtime") or 0.0) + (stamp - started).total_seconds()
        return {"finished_at": stamp, "runtime": runtime, "locked": None}

    def _seconds(self, stamp: datetime) -> int:
        return int((stamp - self.doc["started_at"]).total_seconds())

    def _release(self) -> None:
        self.core4.dispatcher.gates.release(self.doc["name"], self.oid)
        self.core4.dispatch()

    def _complete(self, result: Any) -> None:
        stamp = now()
        fields = {
            **self._ended(stamp), "result": result, "prog": {"value": 1.0, "message": ""},
            "attempts_left": self.doc["attempts_left"] - 1,
        }
        if not self.registry.transition(self.oid, COMPLETE, fields, where={"locked.run": self.token}):
            log.warning("job %s lost its lease before completing; result dropped", self.job_id)
            raise Ignore()
        self.registry.archive(self.oid, where={"state": State.COMPLETE.value})
        log.info("done execution with [complete] after [%d] sec.", self._seconds(stamp))
        self._release()

    def _defer(self, signal: JobDeferred) -> None:
        stamp = now()
        query_at = later(self.doc["defer_time"], stamp)
        error = {"exception": f"JobDeferred({signal.message!r})", "traceback": None, "at": stamp}
        fields = {**self._ended(stamp), "query_at": query_at, "last_error": error}
        if not self.registry.transition(self.oid, DEFER, fields, where={"locked.run": self.token}):
            raise Ignore()
        log.info(
            "done execution with [deferred] after [%d] sec. and [%s] to go: %s",
            self._seconds(stamp), self.doc["inactive_at"] - stamp, signal.message,
        )
        self._release()
        raise Retry(f"deferred: {signal.message}", when=query_at)

    def _fail(self, exc: Exception) -> None:
        stamp = now()
        left = self.doc["attempts_left"] - 1
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        error = {"exception": repr(exc), "traceback": lines, "at": stamp}
        fields: dict[str, Any] = {**self._ended(stamp), "attempts_left": left, "last_error": error}
        transition = FAIL if left > 0 else ERROR
        if left > 0:
            fields["query_at"] = later(self.doc["error_time"], stamp)
        if not self.registry.transition(self.oid, transition, fields, where={"locked.run": self.token}):
            raise Ignore()
        log.critical(
            "done execution with [%s] after [%d] sec. and [%d] attempts to go: %r",
            transition.target, self._seconds(stamp), left, exc,
        )
        self._release()
        if left > 0:
            raise Retry(exc=exc, when=fields["query_at"])
        raise exc

    def progress(self, value: float, message: str | None, force: bool) -> bool:
        """Throttled by progress_interval; doubles as the job's heartbeat."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise InvalidArguments(f"progress value must be a number in [0, 1], got {value!r}")
        clock = time.monotonic()
        if not force and clock < self._next_progress:
            return False
        self._next_progress = clock + float(self.doc["progress_interval"])
        stamp = now()
        self.registry.jobs.update_one(
            {"_id": self.oid, "locked.run": self.token},
            {"$set": {"prog": {"value": float(value), "message": message}, "locked.heartbeat": stamp}},
        )
        log.debug("progress [%d%%] - %s", round(value * 100), message or "")
        self.core4.events.send("progress", self.oid, progress=float(value),
                               result=f"{value:.0%} {message or ''}".rstrip())
        return True
