"""Operator actions on single jobs: kill, restart, remove (core4 §5.2 to §5.5).

Every action re-reads the job and applies one guarded transition; when the
job moved on in between (a worker started it, say), the action is decided
again from the new state, so a race ends in a defined outcome, never a mix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum

from bson import ObjectId

from .clock import EPOCH, now
from .dispatcher import nudge
from .errors import JobExists, JobNotFound, OperationRefused
from .events import JobEvents
from .gates import Gates
from .jobdoc import new_job, options_of
from .maintenance import Maintenance
from .registry import Doc, Registry, as_object_id
from .states import CLAIM_RESTART, REQUEST_KILL, REQUEST_REMOVE, RESTART_WAITING, STOPPED, WAITING, State

log = logging.getLogger(__name__)

RACE_RETRIES = 5


class Outcome(str, Enum):
    KILLED = "killed"
    KILL_REQUESTED = "kill requested"
    REMOVED = "removed"
    REMOVE_REQUESTED = "remove requested"

    def __str__(self) -> str:
        return self.value


class Operations:
    def __init__(
        self, registry: Registry, gates: Gates, dispatch: Callable[[], object], events: JobEvents | None = None
    ) -> None:
        """``dispatch`` runs a dispatcher pass; jobs made due here also bump the scan generation."""
        self.events = events
        self.registry = registry
        self.gates = gates
        self.dispatch = dispatch
        self.maintenance = Maintenance(registry, gates)

    def _live(self, oid: ObjectId, action: str) -> Doc:
        doc = self.registry.live(oid)
        if doc is not None:
            return doc
        journaled = self.registry.journal.find_one({"_id": oid}, {"state": 1})
        if journaled is not None:
            raise OperationRefused(f"cannot {action} job {oid}: it is {journaled['state']} and journaled")
        raise JobNotFound(f"no job with id {oid}")

    # -- kill ---------------------------------------------------------------
    def kill(self, job_id: str | ObjectId) -> Outcome:
        """Waiting jobs end killed at once; a running job's worker ends its process within a heartbeat."""
        oid = as_object_id(job_id)
        for _ in range(RACE_RETRIES):
            doc = self._live(oid, "kill")
            state = State(doc["state"])
            if state in WAITING:
                if self.maintenance.kill(doc, "killed while waiting"):
                    if self.events is not None:
                        self.events.send("killed", oid, exception="JobKilled('killed while waiting')")
                    self.dispatch()
                    return Outcome.KILLED
            elif state is State.RUNNING:
                if doc.get("killed_at") or self.registry.transition(oid, REQUEST_KILL, {"killed_at": now()}):
                    return Outcome.KILL_REQUESTED
            else:
                raise OperationRefused(f"cannot kill job {oid}: it is {state} already")
        raise OperationRefused(f"cannot kill job {oid}: its state keeps changing, try again")

    # -- remove -------------------------------------------------------------
    def remove(self, job_id: str | ObjectId, hard: bool = False) -> Outcome:
        """Flag, then journal unless running; ``hard`` journals even a running job (its process runs on)."""
        oid = as_object_id(job_id)
        doc = self._live(oid, "remove")
        stamp = now()
        self.registry.transition(
            oid, REQUEST_REMOVE, {"removed_at": stamp, "query_at": None}, where={"removed_at": None}
        )
        where = {} if hard else {"removed_at": {"$gt": EPOCH}, "state": {"$ne": State.RUNNING.value}}
        if self.registry.archive(oid, where=where) is None:
            if self.registry.live(oid) is None:  # journaled meanwhile (it completed, or a worker swept it)
                return Outcome.REMOVED
            return Outcome.REMOVE_REQUESTED
        self.gates.release(doc["name"], oid)
        self.dispatch()
        return Outcome.REMOVED

    # -- restart ------------------------------------------------------------
    def restart(self, job_id: str | ObjectId) -> str:
        """Deferred/failed: due now, same id. Error/killed/inactive: a new job, the old one journaled."""
        oid = as_object_id(job_id)
        for _ in range(RACE_RETRIES):
            doc = self.registry.find(oid)
            if doc is None:
                raise JobNotFound(f"no job with id {oid}")
            state = State(doc["state"])
            if doc.get("journaled"):
                return self._resume_restart(doc)
            if doc.get("removed_at"):
                raise OperationRefused(f"cannot restart job {oid}: it is being removed")
            if state in (State.DEFERRED, State.FAILED):
                if doc.get("dispatched_until") or self.registry.transition(
                    oid, RESTART_WAITING, {"query_at": now()}, where={"removed_at": None}
                ):
                    nudge(self.registry)
                    self.dispatch()
                    return str(oid)
            elif state in STOPPED:
                return self._restart_stopped(doc)
            else:
                raise OperationRefused(
                    f"cannot restart job {oid}: it is {state}; only deferred, failed, error, killed "
                    "and inactive jobs restart"
                )
        raise OperationRefused(f"cannot restart job {oid}: its state keeps changing, try again")

    def _restart_stopped(self, doc: Doc) -> str:
        oid, child_id = doc["_id"], ObjectId()
        if not self.registry.transition(
            oid, CLAIM_RESTART, {"enqueued.child_id": child_id}, where={"enqueued.child_id": None}
        ):
            raise OperationRefused(f"cannot restart job {oid}: it is being restarted already")
        doc["enqueued"]["child_id"] = child_id
        self.registry.archive(oid)
        return self._enqueue_child(doc)

    def _resume_restart(self, doc: Doc) -> str:
        """A journaled job restarts only to finish a restart that was interrupted before its child existed."""
        child_id = doc["enqueued"].get("child_id")
        if child_id is None or doc["state"] not in [s.value for s in STOPPED]:
            raise OperationRefused(f"cannot restart job {doc['_id']}: it is {doc['state']} and journaled")
        if self.registry.find(child_id) is not None:
            raise OperationRefused(f"cannot restart job {doc['_id']}: it was restarted as {child_id}")
        return self._enqueue_child(doc)

    def _enqueue_child(self, doc: Doc) -> str:
        """core4 keeps the trial count and the lineage; attempts start afresh."""
        child = new_job(
            doc["name"], doc["args"], options_of(doc), query_at=now(), mid=doc.get("mid"),
            queue=doc.get("queue"), parent_id=doc["_id"], trial=doc.get("trial", 0),
            job_id=doc["enqueued"]["child_id"],
        )
        try:
            self.registry.insert(child)
        except JobExists as exc:
            raise OperationRefused(
                f"job {doc['_id']} was journaled, but a job with its arguments was enqueued meanwhile "
                f"(id {exc.job_id})"
            ) from None
        log.info("restarted job %s as %s", doc["_id"], child["_id"])
        nudge(self.registry)
        self.dispatch()
        return str(child["_id"])
