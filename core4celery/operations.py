"""Operator actions on single jobs: kill, restart, remove (core4 §5.2 to §5.5).

Every action re-reads the job and asks the job store for one transition;
when the job moved on in between (a worker started it, say), the action is
decided again from the new state, so a race ends in a defined outcome, never
a mix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import Enum
from typing import Any

from bson import ObjectId

from .clock import now
from .errors import JobExists, JobNotFound, OperationRefused
from .store.connection import as_object_id
from .store.document import JobDoc, new_job, options_of
from .store.jobs import JobStore
from .store.states import STOPPED, WAITING, State

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
    def __init__(self, store: JobStore, dispatch: Callable[[], object]) -> None:
        """``dispatch`` runs a dispatcher pass (jobs made due here are signalled by the store)."""
        self._store = store
        self._dispatch = dispatch

    def _live(self, oid: ObjectId, action: str) -> JobDoc:
        doc = self._store.find(oid)
        if doc is None:
            raise JobNotFound(f"no job with id {oid}")
        if doc.get("journaled"):
            raise OperationRefused(f"cannot {action} job {oid}: it is {doc['state']} and journaled")
        return doc

    # -- kill ---------------------------------------------------------------
    def kill(self, job_id: Any) -> Outcome:
        """Waiting jobs end killed at once; a running job's worker ends its process within a heartbeat."""
        oid = as_object_id(job_id)
        for _ in range(RACE_RETRIES):
            doc = self._live(oid, "kill")
            state = State(doc["state"])
            if state in WAITING:
                if self._store.kill(doc, "killed while waiting"):
                    self._dispatch()
                    return Outcome.KILLED
            elif state is State.RUNNING:
                if doc.get("killed_at") or self._store.request_kill(oid):
                    return Outcome.KILL_REQUESTED
            else:
                raise OperationRefused(f"cannot kill job {oid}: it is {state} already")
        raise OperationRefused(f"cannot kill job {oid}: its state keeps changing, try again")

    # -- remove -------------------------------------------------------------
    def remove(self, job_id: Any, hard: bool = False) -> Outcome:
        """Flag, then journal unless running; ``hard`` journals even a running job (its process runs on)."""
        oid = as_object_id(job_id)
        self._live(oid, "remove")
        self._store.request_remove(oid)
        if self._store.remove(oid, hard=hard) is None:
            if self._store.live(oid) is None:  # journaled meanwhile (it completed, or a worker swept it)
                return Outcome.REMOVED
            return Outcome.REMOVE_REQUESTED
        self._dispatch()
        return Outcome.REMOVED

    # -- purge --------------------------------------------------------------
    def purge(self, queue: str | None = None, name: str | None = None) -> int:
        """Remove every waiting job of a queue (or a name) into the journal; running jobs run on.

        What ``celery purge`` means for core4 jobs: their backlog lives in the
        registry, not in the broker, so emptying the broker alone left it to run.
        """
        removed = 0
        for oid in self._store.waiting_ids(queue, name):
            if self._store.request_remove(oid) and self._store.remove(oid) is not None:
                removed += 1
        if removed:
            log.info("purged %d waiting job(s)%s", removed, f" of queue {queue}" if queue else "")
        return removed

    # -- restart ------------------------------------------------------------
    def restart(self, job_id: Any) -> str:
        """Deferred/failed: due now, same id. Error/killed/inactive: a new job, the old one journaled."""
        oid = as_object_id(job_id)
        for _ in range(RACE_RETRIES):
            doc = self._store.find(oid)
            if doc is None:
                raise JobNotFound(f"no job with id {oid}")
            state = State(doc["state"])
            if doc.get("journaled"):
                return self._resume_restart(doc)
            if doc.get("removed_at"):
                raise OperationRefused(f"cannot restart job {oid}: it is being removed")
            if state in (State.DEFERRED, State.FAILED):
                if doc.get("dispatched_until") or self._store.restart_waiting(oid):
                    self._dispatch()
                    return str(oid)
            elif state in STOPPED:
                return self._restart_stopped(doc)
            else:
                raise OperationRefused(
                    f"cannot restart job {oid}: it is {state}; only deferred, failed, error, killed "
                    "and inactive jobs restart"
                )
        raise OperationRefused(f"cannot restart job {oid}: its state keeps changing, try again")

    def _restart_stopped(self, doc: JobDoc) -> str:
        oid = doc["_id"]
        child_id = doc["enqueued"].get("child_id") or ObjectId()
        archived = self._store.claim_restart(oid, child_id)
        if archived is None:
            raise OperationRefused(f"cannot restart job {oid}: it is being restarted already")
        return self._enqueue_child(archived)

    def _resume_restart(self, doc: JobDoc) -> str:
        """A journaled job restarts only to finish a restart that was interrupted before its child existed."""
        child_id = doc["enqueued"].get("child_id")
        if child_id is None or doc["state"] not in [s.value for s in STOPPED]:
            raise OperationRefused(f"cannot restart job {doc['_id']}: it is {doc['state']} and journaled")
        if self._store.find(child_id) is not None:
            raise OperationRefused(f"cannot restart job {doc['_id']}: it was restarted as {child_id}")
        return self._enqueue_child(doc)

    def _enqueue_child(self, doc: JobDoc) -> str:
        """core4 keeps the trial count and the lineage; attempts start afresh."""
        child = new_job(
            doc["name"], doc["args"], options_of(doc), query_at=now(), mid=doc.get("mid"),
            queue=doc.get("queue"), parent_id=doc["_id"], trial=doc.get("trial", 0),
            job_id=doc["enqueued"]["child_id"],
        )
        try:
            self._store.enqueue(child)
        except JobExists as exc:
            raise OperationRefused(
                f"job {doc['_id']} was journaled, but a job with its arguments was enqueued meanwhile "
                f"(id {exc.job_id})"
            ) from None
        log.info("restarted job %s as %s", doc["_id"], child["_id"])
        self._dispatch()
        return str(child["_id"])
