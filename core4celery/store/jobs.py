"""``JobStore``: the one owner of job documents, the journal and the gate slots.

Every change to a job is one method here, named after its transition in
:mod:`core4celery.store.states`, and each does everything the transition
implies: the guarded write, freeing the ``max_parallel`` slot, telling
dispatchers that a job became due, moving it to the journal, the event.
Callers decide *which* transition; they never assemble one by hand.

Every transition writes a fresh ``rev``. That makes a write whose reply was
lost in an outage checkable (did my ``rev`` land?) and lets the completion
delete the live document only if nothing changed since the run started.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from datetime import datetime
from enum import Enum
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from ..clock import EPOCH, later, now
from ..errors import JobExists
from ..events import JobEvents
from .connection import DISPATCH_INDEX, DISPATCH_ORDER, Connection, Doc, as_object_id
from .document import JobDoc, lock_of
from .gates import Gates, Slot
from .journal import Journal
from .states import (
    CLAIM_RESTART,
    DEFER,
    DISPATCH,
    ERROR,
    FAIL,
    FLAG,
    INACTIVATE,
    KILL_RUNNING,
    KILL_WAITING,
    RECOVER,
    REQUEST_KILL,
    REQUEST_REMOVE,
    REQUEUE,
    RESTART_WAITING,
    START,
    State,
    Transition,
)

log = logging.getLogger(__name__)

GENERATION = "generation"
CANDIDATE_FIELDS = {"name": 1, "state": 1, "max_parallel": 1, "inactive_at": 1, "args": 1, "queue": 1, "mid": 1}
RUN_FIELDS = {"name": 1, "state": 1, "locked": 1, "killed_at": 1, "started_at": 1, "runtime": 1,
              "zombie_time": 1, "wall_time": 1, "zombie_at": 1, "wall_at": 1}
MOVE_RETRIES = 5


class Claim(Enum):
    """What came of trying to give a due job a ticket."""

    TICKET = "ticket"  # slot taken and job marked dispatched: publish its ticket
    FULL = "full"  # its max_parallel slots are all taken
    HELD = "held"  # a slot is held for it already (in flight elsewhere)
    GONE = "gone"  # it is no longer due (started, killed, removed, changed)


class JobStore:
    def __init__(self, connection: Connection, events: JobEvents | None = None) -> None:
        self._connection = connection
        self._outage = connection.outage
        self._gates = Gates(connection)
        self._journal = Journal(connection)
        self._events = events

    # -- plumbing --------------------------------------------------------------
    def _apply(self, transition: Transition, job_id: ObjectId, update: dict[str, Any],
               where: Mapping[str, Any] | None = None) -> bool:
        """One guarded update; False means another process won or the job moved on."""
        rev = ObjectId()
        update.setdefault("$set", {})["rev"] = rev
        if transition.target is not None:
            update["$set"]["state"] = transition.target.value
        guard = {"_id": job_id, **transition.filter(), **(where or {})}
        jobs = self._connection.jobs
        attempt = self._outage.call(lambda: jobs.update_one(guard, update), f"{transition.name} job {job_id}")
        return attempt.value.matched_count == 1 or (attempt.retried and self._landed(job_id, rev))

    def _landed(self, job_id: ObjectId, rev: ObjectId) -> bool:
        jobs = self._connection.jobs
        return bool(self._outage.run(lambda: jobs.count_documents({"_id": job_id, "rev": rev}, limit=1), "read"))

    def _release(self, doc: Mapping[str, Any]) -> None:
        self._gates.release(doc["name"], doc["_id"])

    def _bump(self) -> None:
        """A job became due out of turn: every dispatcher rescans on its next pass."""
        control = self._connection.control
        self._outage.run(
            lambda: control.update_one({"_id": GENERATION}, {"$inc": {"n": 1}}, upsert=True), "signal a due job"
        )

    def _event(self, kind: str, job_id: object, **fields: Any) -> None:
        if self._events is not None:
            self._events.send(kind, job_id, **fields)

    # -- reads -----------------------------------------------------------------
    def live(self, job_id: Any) -> JobDoc | None:
        return self._connection.jobs.find_one({"_id": as_object_id(job_id)})  # type: ignore[return-value]

    def find(self, job_id: Any) -> JobDoc | None:
        """Live document first (while it exists it is the truth), then the journal."""
        oid = as_object_id(job_id)
        doc = self.live(oid)
        if doc is None:
            doc = self._journal.find(oid)
            if doc is not None:
                doc["journaled"] = True
        return doc

    def children(self, mid: str) -> Iterator[JobDoc]:
        return iter(self._connection.jobs.find({"mid": mid}))  # type: ignore[arg-type]

    def generation(self) -> int:
        doc = self._connection.control.find_one({"_id": GENERATION})
        return int((doc or {}).get("n", 0))

    def due(self, stamp: datetime, limit: int) -> list[Doc]:
        """The next due jobs in dispatch order (force, priority, FIFO)."""
        return list(
            self._connection.jobs.find({"query_at": {"$lte": stamp}}, CANDIDATE_FIELDS)
            .sort(DISPATCH_ORDER)
            .hint(DISPATCH_INDEX)  # equality-sort-range index; small collections would plan a COLLSCAN
            .limit(limit)
        )

    def busy_by_queue(self) -> dict[str | None, int]:
        """Jobs holding a worker slot (running or with a ticket out), per queue."""
        rows = self._connection.jobs.aggregate([
            {"$match": {"$or": [{"state": State.RUNNING.value}, {"dispatched_until": {"$gt": EPOCH}}]}},
            {"$group": {"_id": "$queue", "n": {"$sum": 1}}},
        ])
        return {row["_id"]: int(row["n"]) for row in rows}

    def running_on(self, worker_id: str) -> list[JobDoc]:
        return list(self._connection.jobs.find(  # type: ignore[arg-type]
            {"locked.worker": worker_id, "state": State.RUNNING.value}, RUN_FIELDS
        ))

    def holders(self, name: str) -> list[ObjectId]:
        return self._gates.holders(name)

    # -- enqueue and dispatch --------------------------------------------------
    def enqueue(self, doc: JobDoc) -> None:
        jobs = self._connection.jobs
        try:
            self._outage.run(lambda: jobs.insert_one(dict(doc)), f"enqueue {doc['name']}")
        except DuplicateKeyError:
            other = jobs.find_one({"name": doc["name"], "args_hash": doc["args_hash"]}, {"_id": 1})
            if other is not None and other["_id"] == doc["_id"]:
                pass  # our own insert landed before its reply was lost
            else:
                raise JobExists(doc["name"], str(other["_id"]) if other else None) from None
        self._bump()

    def claim(self, doc: Doc, stamp: datetime, ticket_lease: float) -> Claim:
        """Take the job's slot and mark it dispatched, both or neither."""
        slot = self._gates.acquire(doc["name"], doc["_id"], doc["max_parallel"])
        if slot is Slot.FULL:
            return Claim.FULL
        if slot is Slot.HELD:
            return Claim.HELD
        marked = self._apply(
            DISPATCH, doc["_id"], {"$set": {"dispatched_until": later(ticket_lease), "query_at": None}},
            where={"query_at": {"$lte": stamp}, "removed_at": None, "killed_at": None},
        )
        if marked:
            return Claim.TICKET
        self._release(doc)
        return Claim.GONE

    def inactivate(self, doc: Doc, stamp: datetime) -> bool:
        """core4: a deferred job due again after its defer_max window is inactive, not run."""
        done = self._apply(INACTIVATE, doc["_id"], {"$set": {"query_at": None, "finished_at": stamp}},
                           where={"query_at": {"$lte": stamp}})
        if done:
            log.error("done execution with [inactive] - [%s] with [%s]", doc["name"], doc["_id"])
            self._event("inactive", doc["_id"], exception="inactive: still deferred after defer_max")
        return done

    def requeue_lost(self, stamp: datetime) -> int:
        """A ticket whose job did not start within the lease was lost with its worker."""
        lost = list(self._connection.jobs.find(
            {"dispatched_until": {"$gt": EPOCH, "$lt": stamp}}, {"name": 1, "dispatched_until": 1}
        ))
        count = 0
        for doc in lost:
            if self._apply(REQUEUE, doc["_id"], {"$set": {"query_at": stamp}, "$unset": {"dispatched_until": ""}},
                           where={"dispatched_until": doc["dispatched_until"]}):
                self._release(doc)
                log.warning("ticket for job %s was lost; re-issuing it", doc["_id"])
                count += 1
        if count:
            self._bump()
        return count

    # -- one run ---------------------------------------------------------------
    def start(self, job_id: ObjectId, locked: dict[str, Any]) -> JobDoc | None:
        """dispatched → running in one guarded update; None when the ticket is stale or a duplicate."""
        stamp = locked["at"]
        rev = ObjectId()
        guard = {"_id": job_id, **START.filter(), "dispatched_until": {"$gt": EPOCH},
                 "removed_at": None, "killed_at": None}
        update: list[dict[str, Any]] = [
            {"$set": {
                "state": State.RUNNING.value, "rev": rev, "started_at": stamp, "locked": {"$literal": locked},
                "query_at": None,
                "trial": {"$add": ["$trial", 1]},
                # core4: the defer_max window opens at the first start
                "inactive_at": {"$ifNull": ["$inactive_at", {"$add": [stamp, {"$multiply": ["$defer_max", 1000]}]}]},
            }},
            {"$unset": "dispatched_until"},
        ]
        jobs = self._connection.jobs
        attempt = self._outage.call(lambda: jobs.update_one(guard, update), f"start job {job_id}")
        if not (attempt.value.matched_count or (attempt.retried and self._landed(job_id, rev))):
            return None
        return self._outage.run(lambda: jobs.find_one({"_id": job_id}), f"read job {job_id}")  # type: ignore[return-value]

    @staticmethod
    def _ended(doc: JobDoc, stamp: datetime) -> dict[str, Any]:
        runtime = float(doc.get("runtime") or 0.0) + (stamp - doc["started_at"]).total_seconds()  # type: ignore[operator]
        return {"finished_at": stamp, "runtime": runtime, "locked": None, "run": doc["locked"]["run"]}  # type: ignore[index]

    def complete(self, doc: JobDoc, result: Any, stamp: datetime) -> bool:
        """Journal the final copy, then delete the live document; False if the run had lost its job.

        Fast path: two commands, when nothing wrote the job since it started.
        A copy whose delete did not happen is recognised by recovery (a journal
        copy of the running run) and finished there.
        """
        fields = {**self._ended(doc, stamp), "state": State.COMPLETE.value, "result": result,
                  "prog": {"value": 1.0, "message": ""}, "attempts_left": doc["attempts_left"] - 1}
        live: JobDoc = doc
        for _ in range(MOVE_RETRIES):
            final: JobDoc = {**live, **fields, "rev": ObjectId(), "source_rev": live.get("rev")}  # type: ignore[typeddict-item]
            if not self._journal.propose(final):
                return False
            if self._delete(doc["_id"], {"rev": live.get("rev")}):
                self._release(doc)
                return True
            current = self._running(doc)
            if current is None:
                return self._settle_lost_move(doc["_id"], final["rev"])
            live = current  # flags or a request changed it: carry them into the journal
        return False

    def _settle_lost_move(self, job_id: ObjectId, rev: ObjectId) -> bool:
        """The live job is no longer this run's: was the move finished by someone else, or undone?

        Recovery may have finished it (our copy stays: complete), a hard remove
        replaced it (not ours), or the job lives on recovered or killed (take
        our copy back).
        """
        if self.live(job_id) is not None:
            self._journal.take_back(job_id, rev)
            return False
        return self._journal.holds(job_id, rev)

    def _running(self, doc: JobDoc) -> JobDoc | None:
        jobs = self._connection.jobs
        run = doc["locked"]["run"]  # type: ignore[index]
        return self._outage.run(  # type: ignore[return-value]
            lambda: jobs.find_one({"_id": doc["_id"], "state": State.RUNNING.value, "locked.run": run}),
            f"read job {doc['_id']}",
        )

    def _delete(self, job_id: ObjectId, where: Mapping[str, Any]) -> bool:
        jobs = self._connection.jobs
        guard = {"_id": job_id, **where}
        attempt = self._outage.call(lambda: jobs.delete_one(guard), f"delete live job {job_id}")
        if attempt.value.deleted_count == 1:
            return True
        return attempt.retried and not self._outage.run(
            lambda: jobs.count_documents({"_id": job_id}, limit=1), "read"
        )

    def defer(self, doc: JobDoc, stamp: datetime, message: str) -> datetime | None:
        """running → deferred; the due time, or None when the run had lost its job."""
        query_at = later(doc["defer_time"], stamp)
        error = {"exception": f"JobDeferred({message!r})", "traceback": None, "at": stamp}
        fields = {**self._ended(doc, stamp), "query_at": query_at, "last_error": error}
        return query_at if self._end_run(DEFER, doc, fields) else None

    def fail(self, doc: JobDoc, error: dict[str, Any], stamp: datetime) -> State | None:
        """running → failed (attempts left, due after error_time) or error; None when the run lost its job."""
        left = doc["attempts_left"] - 1
        fields: dict[str, Any] = {**self._ended(doc, stamp), "attempts_left": left, "last_error": error}
        if left > 0:
            fields["query_at"] = later(doc["error_time"], stamp)
        transition = FAIL if left > 0 else ERROR
        return transition.target if self._end_run(transition, doc, fields) else None

    def _end_run(self, transition: Transition, doc: JobDoc, fields: dict[str, Any]) -> bool:
        """A kill requested during the run wins over its deferral or failure."""
        run = doc["locked"]["run"]  # type: ignore[index]
        if self._apply(transition, doc["_id"], {"$set": fields}, where={"locked.run": run, "killed_at": None}):
            self._release(doc)
            return True
        current = self._running(doc)
        if current is not None and current.get("killed_at"):
            self.kill(current, "killed on request")  # the ending is overruled: the caller reports nothing
        return False

    def progress(self, doc: JobDoc, value: float, message: str | None) -> None:
        """Not a transition (no rev): frequent, and doubles as the run's heartbeat."""
        jobs = self._connection.jobs
        guard = {"_id": doc["_id"], "locked.run": doc["locked"]["run"]}  # type: ignore[index]
        update = {"$set": {"prog": {"value": float(value), "message": message}, "locked.heartbeat": now()}}
        self._outage.run(lambda: jobs.update_one(guard, update), f"progress of job {doc['_id']}")

    # -- care of running jobs --------------------------------------------------
    def renew(self, worker_id: str, job_ids: list[ObjectId], lease: float) -> None:
        jobs = self._connection.jobs
        self._outage.run(lambda: jobs.update_many(
            {"_id": {"$in": job_ids}, "state": State.RUNNING.value, "locked.worker": worker_id},
            {"$set": {"locked.lease_until": later(lease)}},
        ), "renew leases")

    def flag(self, doc: JobDoc, flag: str, stamp: datetime) -> bool:
        """Set once, never cleared (core4's zombie_at / wall_at)."""
        return self._apply(FLAG, doc["_id"], {"$set": {flag: stamp}},
                           where={"locked.run": doc["locked"]["run"], flag: None})  # type: ignore[index]

    def expired_runs(self, stamp: datetime) -> list[JobDoc]:
        return list(self._connection.jobs.find(  # type: ignore[arg-type]
            {"state": State.RUNNING.value, "locked.lease_until": {"$lt": stamp}}, RUN_FIELDS
        ))

    def recover(self, doc: JobDoc, reason: str) -> bool:
        """A run whose worker or process died: finish its completion, or end it killed, or run it again.

        Running again (running → pending) uses no attempt: it was not the job's fault.
        """
        locked = lock_of(doc)
        run = locked.get("run")
        if run is not None and self._journal.copy_of_run(doc["_id"], run):
            return self._finish_completion(doc, run)
        if doc.get("killed_at"):
            return self.kill(doc, f"killed on request; its worker was lost ({reason})")
        stamp = now()
        error = {"exception": f"WorkerLost({reason!r})", "traceback": None, "at": stamp, "worker": locked.get("worker")}
        if not self._apply(RECOVER, doc["_id"], {"$set": {"query_at": stamp, "locked": None, "last_error": error}},
                           where={"locked.run": run}):
            return False
        self._release(doc)
        self._bump()
        log.warning("job %s lost its worker %s (%s); it runs again", doc["_id"], locked.get("worker"), reason)
        return True

    def _finish_completion(self, doc: JobDoc, run: ObjectId) -> bool:
        """The run journaled its result and died before deleting the live document: delete it now."""
        if not self._delete(doc["_id"], {"state": State.RUNNING.value, "locked.run": run}):
            return False
        self._release(doc)
        log.warning("job %s completed but its worker died before journaling; finished the move", doc["_id"])
        return True

    # -- operator requests -----------------------------------------------------
    def kill(self, doc: JobDoc, reason: str) -> bool:
        """End a job killed (no retry, no attempt used); the owning worker stops its process."""
        stamp = now()
        fields: dict[str, Any] = {
            "locked": None, "query_at": None, "killed_at": doc.get("killed_at") or stamp,
            "last_error": {"exception": f"JobKilled({reason!r})", "traceback": None, "at": stamp},
        }
        if doc["state"] == State.RUNNING.value:
            started = doc.get("started_at")
            if started is not None:
                fields["runtime"] = float(doc.get("runtime") or 0.0) + (stamp - started).total_seconds()
            done = self._apply(KILL_RUNNING, doc["_id"], {"$set": fields},
                               where={"locked.run": lock_of(doc).get("run")})
        else:
            done = self._apply(KILL_WAITING, doc["_id"], {"$set": fields, "$unset": {"dispatched_until": ""}})
        if done:
            self._release(doc)
            log.info("done execution with [killed] - [%s] with [%s]: %s", doc["name"], doc["_id"], reason)
            self._event("killed", doc["_id"], exception=f"JobKilled({reason!r})")
        return done

    def request_kill(self, job_id: ObjectId) -> bool:
        return self._apply(REQUEST_KILL, job_id, {"$set": {"killed_at": now()}}, where={"killed_at": None})

    def request_remove(self, job_id: ObjectId) -> bool:
        return self._apply(REQUEST_REMOVE, job_id, {"$set": {"removed_at": now(), "query_at": None}},
                           where={"removed_at": None})

    def remove(self, job_id: ObjectId, hard: bool = False) -> JobDoc | None:
        """Journal a job flagged for removal unless it runs (``hard``: even then; its process runs on)."""
        where: dict[str, Any] = {"removed_at": {"$gt": EPOCH}}
        if not hard:
            where["state"] = {"$ne": State.RUNNING.value}
        doc = self._archive(job_id, where)
        if doc is not None:
            self._release(doc)
            log.info("removed job %s (%s)", job_id, doc["name"])
        return doc

    def sweep_removed(self) -> int:
        """Journal every job flagged for removal that is not running (core4's remove_jobs)."""
        query = {"removed_at": {"$gt": EPOCH}, "state": {"$ne": State.RUNNING.value}}
        flagged = list(self._connection.jobs.find(query, {"_id": 1}))
        return sum(self.remove(doc["_id"]) is not None for doc in flagged)

    def _archive(self, job_id: ObjectId, where: Mapping[str, Any]) -> JobDoc | None:
        """Move a live document to the journal if it still matches ``where``, unchanged from read to delete."""
        jobs = self._connection.jobs
        guard = {"_id": job_id, **where}
        for _ in range(MOVE_RETRIES):
            doc: JobDoc | None = self._outage.run(lambda: jobs.find_one(guard), f"read job {job_id}")  # type: ignore[assignment]
            if doc is None:
                return None
            copy: JobDoc = {**doc, "rev": ObjectId(), "source_rev": doc.get("rev")}
            if not self._journal.propose(copy):
                return None  # another mover holds this version (or it is gone)
            if self._delete(job_id, {**where, "rev": doc.get("rev")}):
                return doc
            if self.live(job_id) is None:
                return None  # moved by someone else meanwhile: their copy is the final one
            self._journal.take_back(job_id, copy["rev"])
        return None

    def restart_waiting(self, job_id: ObjectId) -> bool:
        """deferred/failed: due now, same id."""
        done = self._apply(RESTART_WAITING, job_id, {"$set": {"query_at": now()}},
                           where={"removed_at": None, "dispatched_until": None})  # a ticket out means due already
        if done:
            self._bump()
        return done

    def claim_restart(self, job_id: ObjectId, child_id: ObjectId) -> JobDoc | None:
        """Stopped job: reserve the id of its successor and journal it; None when someone else restarts it."""
        if not self._apply(CLAIM_RESTART, job_id, {"$set": {"enqueued.child_id": child_id}},
                           where={"enqueued.child_id": {"$in": [None, child_id]}}):
            return None
        return self._archive(job_id, {"enqueued.child_id": child_id})

    def repair_gates(self) -> int:
        """Free slots whose holder is neither dispatched nor running (call under the dispatch mutex)."""
        freed = 0
        jobs = self._connection.jobs
        for gate in self._gates.all():
            for holder in gate.get("holders", []):
                doc = jobs.find_one({"_id": holder}, {"state": 1, "dispatched_until": 1})
                if doc and (doc["state"] == State.RUNNING.value or doc.get("dispatched_until")):
                    continue
                self._gates.release(gate["_id"], holder)
                freed += 1
        return freed

