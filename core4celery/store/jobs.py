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

import heapq
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, cast

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from ..clock import EPOCH, later, now
from ..errors import JobExists
from ..events import JobEvents
from .connection import BLOCKED_INDEX, DISPATCH_ORDER, DUE_INDEX, FRONT_INDEX, Connection, Doc, as_object_id
from .document import TICKET_FIELDS, JobDoc, Run, lock_of
from .journal import Journal
from .slots import Holder, Slots, SlotState
from .states import (
    ABANDON,
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
    RELEASE,
    REQUEST_KILL,
    REQUEST_REMOVE,
    REQUEUE,
    RESTART_WAITING,
    START,
    WAITING,
    WAKE,
    State,
    Transition,
)

log = logging.getLogger(__name__)

DEFAULT_QUEUE = "celery"  # documents always carry their queue; this is for ones written by hand
SLOT_GRACE = 30.0  # seconds: a slot holder without a job document may still be being enqueued
CANDIDATE_FIELDS = {"name": 1, "state": 1, "max_parallel": 1, "inactive_at": 1, "args": 1, "queue": 1, "mid": 1,
                    "force": 1, "priority": 1, "worker": 1, "max_per_node": 1,
                    **dict.fromkeys(TICKET_FIELDS, 1)}
RUN_FIELDS = {"name": 1, "state": 1, "locked": 1, "killed_at": 1, "started_at": 1, "runtime": 1, "queue": 1, "slot": 1,
              "zombie_time": 1, "wall_time": 1, "zombie_at": 1, "wall_at": 1, "time_limit": 1}
FRONT_FIELDS = {"force": 1, "priority": 1, "front_at": 1}
BLOCKED_FIELDS = {"name": 1, "after": 1, "feed": 1, "blocked_at": 1, "successors": 1, "force": 1, "priority": 1}
OUTCOME_FIELDS = {"name": 1, "state": 1, "result": 1, "last_error": 1}
MOVE_RETRIES = 5


class Claim(Enum):
    """What came of trying to give a due job a ticket."""

    TICKET = "ticket"  # slot taken and job marked dispatched: publish its ticket
    FULL = "full"  # no idle worker slot for its queue, or its max_parallel slots are all taken
    GONE = "gone"  # it is no longer due (started, killed, removed, changed)


class JobStore:
    def __init__(self, connection: Connection, events: JobEvents | None = None) -> None:
        self._connection = connection
        self._outage = connection.outage
        self._slots = Slots(connection)
        self._journal = Journal(connection)
        self._events = events

    # -- plumbing --------------------------------------------------------------
    def _apply(self, transition: Transition, job_id: ObjectId, update: dict[str, Any],
               where: Mapping[str, Any] | None = None) -> bool:
        """One guarded update; False means another process won or the job moved on."""
        rev = ObjectId()
        update.setdefault("$set", {})["rev"] = rev
        _follow_front(update)
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
        """The job no longer runs nor waits for its ticket: its slots go back (no-op if it held none)."""
        self._slots.give(holder_of(doc))

    def _bump(self, rank: tuple[bool, int] | None = None) -> None:
        """A job became due out of turn: dispatchers rescan when it may rank before their next candidate."""
        self._slots.bump(rank)

    def _event(self, kind: str, job_id: object, **fields: Any) -> None:
        if self._events is not None:
            self._events.send(kind, job_id, **fields)

    # -- reads -----------------------------------------------------------------
    def live(self, job_id: Any) -> JobDoc | None:
        return self._connection.jobs.find_one({"_id": as_object_id(job_id)})  # type: ignore[return-value]

    def find(self, job_id: Any) -> JobDoc | None:
        return self._find({"_id": as_object_id(job_id)})

    def find_adopted(self, celery_id: str) -> JobDoc | None:
        """The job that answers to a Celery task id (an adopted message's, a canvas member's frozen id)."""
        return self._find({"celery_id": celery_id})

    def _find(self, query: Mapping[str, Any]) -> JobDoc | None:
        """Live document first (while it exists it is the truth), then the journal."""
        doc: JobDoc | None = self._connection.jobs.find_one(query)  # type: ignore[assignment]
        if doc is None:
            doc = self._connection.journal.find_one(query)  # type: ignore[assignment]
            if doc is not None:
                doc["journaled"] = True
        return doc

    def waiting_ids(self, queue: str | None = None, name: str | None = None) -> list[ObjectId]:
        """Jobs that wait (pending, with or without a ticket out; deferred; failed), of a queue or a name."""
        query: dict[str, Any] = {"state": {"$in": [state.value for state in WAITING]}}
        if queue is not None:
            query["queue"] = queue
        if name is not None:
            query["name"] = name
        return [doc["_id"] for doc in self._connection.jobs.find(query, {"_id": 1})]

    def children(self, mid: str) -> Iterator[JobDoc]:
        return iter(self._connection.jobs.find({"mid": mid}))  # type: ignore[arg-type]

    def slots(self) -> SlotState:
        return self._slots.read()

    def due(self, stamp: datetime, limit: int) -> list[Doc]:
        """The next due jobs of the front in dispatch order (force, priority, FIFO).

        Only the front (``front_at``, see :mod:`core4celery.dispatch.front`):
        SecantusDB reads every document a query matches, limit or not, so a
        scan of all waiting jobs cost seconds at 100,000 of them.
        """
        return list(
            self._connection.jobs.find({"front_at": {"$lte": stamp}}, CANDIDATE_FIELDS)
            .sort(DISPATCH_ORDER)
            .hint(FRONT_INDEX)
            .limit(limit)
        )

    # -- the front (kept by core4celery.dispatch.front) -----------------------------
    def front(self) -> list[Doc]:
        """Every job in the front (due or not), with its rank."""
        return list(self._connection.jobs.find({"front_at": {"$gt": EPOCH}}, FRONT_FIELDS).hint(FRONT_INDEX))

    def outside_front(self, limit: int) -> list[Doc]:
        """The first ``limit`` waiting jobs outside the front, in dispatch order.

        Sorted here, not by the server, over a single-field index: SecantusDB
        reads every match either way, and its sort over the compound index took
        three times as long (7.8 s at 100,000 jobs). Streams, keeping ``limit``.
        """
        cursor = self._connection.jobs.find({"query_at": {"$gt": EPOCH}, "front_at": None}, FRONT_FIELDS).hint(DUE_INDEX)
        return heapq.nsmallest(limit, cursor, key=dispatch_key)

    def enter_front(self, docs: list[Doc]) -> int:
        """Waiting jobs (in dispatch order) join the front, due when they are due; others are left alone.

        Dispatchers whose cached candidates rank below the first of them rescan.
        """
        if not docs:
            return 0
        jobs = self._connection.jobs
        result = self._outage.run(lambda: jobs.update_many(
            {"_id": {"$in": [doc["_id"] for doc in docs]}, "query_at": {"$gt": EPOCH}, "front_at": None},
            [{"$set": {"front_at": "$query_at"}}],
        ), "fill the front")
        if result.modified_count:
            self._bump(rank_of(docs[0]))
        return int(result.modified_count)

    def leave_front(self, ids: list[ObjectId]) -> int:
        if not ids:
            return 0
        jobs = self._connection.jobs
        result = self._outage.run(lambda: jobs.update_many({"_id": {"$in": ids}}, {"$unset": {"front_at": ""}}),
                                  "trim the front")
        return int(result.modified_count)

    def spill(self, rank: tuple[bool, int] | None) -> None:
        self._slots.spill(rank)

    def lead(self, owner: str, seconds: float, patience: float = 0.0) -> bool:
        """Take or renew the keeper's lease: the cluster's upkeep (housekeeping, the front, timed dispatch)."""
        return self._slots.lead(owner, seconds, now(), patience)

    def resign(self, owner: str) -> None:
        self._slots.resign(owner)

    def busy_by_queue(self) -> dict[str | None, int]:
        """Jobs holding a worker slot (running or with a ticket out), per queue."""
        rows = self._connection.jobs.aggregate([
            {"$match": {"$or": [{"state": State.RUNNING.value}, {"dispatched_until": {"$gt": EPOCH}}]}},
            {"$group": {"_id": "$queue", "n": {"$sum": 1}}},
        ])
        return {row["_id"]: int(row["n"]) for row in rows}

    def running_on(self, worker_id: str, among: Collection[ObjectId] | None = None) -> list[JobDoc]:
        """``among``: look only at these jobs (the slot holders, ``SlotState.active``: a query on anything but
        ``_id`` reads every document on SecantusDB, 2.4 s at 100,000 waiting jobs)."""
        query = {"locked.worker": worker_id, "state": State.RUNNING.value}
        return list(self._connection.jobs.find(_among(query, among), RUN_FIELDS))  # type: ignore[arg-type]

    def holders(self, name: str) -> list[ObjectId]:
        return [entry["id"] for entry in self._slots.read().holders.get(name, [])]

    # -- enqueue and dispatch --------------------------------------------------
    def enqueue(self, doc: JobDoc, front: bool = True) -> None:
        """A waiting job: dispatchers see it on their next pass (``front``: else once the front is refilled)."""
        if doc.get("blocked_at") is not None:  # it waits for its dependencies: not due, not in the front
            self._insert(doc)
            return
        if front:
            cast(Doc, doc)["front_at"] = doc["query_at"]  # the caller's copy shows it too, like "slot"
        self._insert(doc)
        self._bump(None if doc.get("trial") else rank_of(doc))

    def _insert(self, doc: JobDoc) -> None:
        jobs = self._connection.jobs
        try:
            self._outage.run(lambda: jobs.insert_one(dict(doc)), f"enqueue {doc['name']}")
        except DuplicateKeyError:
            other = jobs.find_one({"name": doc["name"], "args_hash": doc["args_hash"]}, {"_id": 1})
            if other is not None and other["_id"] == doc["_id"]:
                pass  # our own insert landed before its reply was lost
            else:
                raise JobExists(doc["name"], str(other["_id"]) if other else None) from None

    def enqueue_dispatched(self, doc: JobDoc, ticket_lease: float,
                           admit: Callable[[], bool] = lambda: True) -> bool:
        """Enqueue with its ticket's slots taken at once when a worker slot is idle (then True: publish it).

        Otherwise the job is enqueued to wait (False). The slots are taken
        before the insert, so nobody can take them in between.
        """
        token = ObjectId()
        holder = holder_of(doc, token)
        if not self._slots.take(holder):
            self.enqueue(doc, admit())  # admit: does it join the front (asked only now: it may cost a read)
            return False
        doc["slot"] = token
        try:
            self._insert({**doc, "dispatched_until": later(ticket_lease), "query_at": None})
        except BaseException:
            self._slots.give(holder)
            raise
        return True

    def claim(self, doc: Doc, stamp: datetime, ticket_lease: float, handed: Holder | None = None) -> Claim:
        """Mark the job dispatched and take its slots (or receive ``handed``'s), both or neither.

        The mark comes first: a stale candidate (dispatched by another process
        meanwhile) costs one failed update and moves no slot.
        """
        lease = later(ticket_lease)
        token = ObjectId()
        if not self._apply(DISPATCH, doc["_id"], {"$set": {"dispatched_until": lease, "query_at": None, "slot": token}},
                           where={"query_at": {"$lte": stamp}, "removed_at": None, "killed_at": None}):
            return Claim.GONE
        holder = holder_of(doc, token)
        if self._slots.transfer(handed, holder) if handed is not None else self._slots.take(holder):
            doc["slot"] = token  # the ticket carries it
            return Claim.TICKET
        self._apply(REQUEUE, doc["_id"], {"$set": {"query_at": stamp}, "$unset": {"dispatched_until": ""}},
                    where={"dispatched_until": lease})
        return Claim.FULL

    def claim_first(self, docs: list[Doc], stamp: datetime, ticket_lease: float,
                    handed: Holder | None = None) -> tuple[Claim, Doc | None]:
        """``claim`` for the first of ``docs`` that is still due: the server chooses.

        Dispatchers in several processes walk the same candidate list; marking
        one by one, each would spend a failed update on every candidate another
        process took first. ``docs`` must share one rank (force, priority): the
        server walks the ``_id`` index, so the first match is the oldest (FIFO).
        An ``update_one`` by ``_id`` plus a read of what it marked (by the fresh
        ``rev``), not one ``find_one_and_update``: on SecantusDB that reads the
        whole collection (a second per claim at 100,000 waiting jobs), an update
        by ``_id`` does not. Returns GONE when none of them is due any more.
        """
        lease = later(ticket_lease)
        token, rev = ObjectId(), ObjectId()
        ids = {"$in": [doc["_id"] for doc in docs]}
        guard = {"_id": ids, **DISPATCH.filter(), "query_at": {"$lte": stamp}, "removed_at": None, "killed_at": None}
        update: dict[str, Any] = {"$set": {"dispatched_until": lease, "query_at": None, "slot": token, "rev": rev},
                                  "$unset": {"front_at": ""}}
        if len(docs) == 1 and docs[0].get("route"):  # routed to one worker's queue (dispatch/routing.py)
            update["$set"]["route"] = docs[0]["route"]
        jobs = self._connection.jobs
        marked = self._outage.call(lambda: jobs.update_one(guard, update), "claim a due job")
        # a retried update may have landed on its first attempt: the rev names the claimed job either way
        doc: Doc | None = None
        if marked.value.matched_count or marked.retried:
            doc = self._outage.run(lambda: jobs.find_one({"_id": ids, "rev": rev}, CANDIDATE_FIELDS), "read the claim")
        if doc is None:
            return Claim.GONE, None
        holder = holder_of(doc, token)
        if self._slots.transfer(handed, holder) if handed is not None else self._slots.take(holder):
            return Claim.TICKET, doc
        self._apply(REQUEUE, doc["_id"], {"$set": {"query_at": stamp}, "$unset": {"dispatched_until": ""}},
                    where={"dispatched_until": lease})
        return Claim.FULL, doc

    def give(self, holder: Holder) -> bool:
        """A finished run returns its slots (nothing waited for them)."""
        return self._slots.give(holder)

    def give_and_read(self, holder: Holder) -> SlotState | None:
        """``give`` returning the slots document after it (None: it held nothing)."""
        return self._slots.give_and_read(holder)

    def pause_project(self, project: str, paused: bool) -> None:
        self._slots.pause_project(project, paused)

    def pause(self, paused: bool) -> None:
        self._slots.pause(paused)

    def reconcile(self, slots: Mapping[str, int]) -> bool:
        """Idle worker slots = the alive workers' slots of a queue minus the jobs holding one."""
        state = self._slots.read()
        held = state.held_by_queue()
        free = {queue: slots.get(queue, 0) - held.get(queue, 0) for queue in {*slots, *held}}
        return free == state.free or self._slots.reconcile(free, state.version)

    def inactivate(self, doc: Doc, stamp: datetime) -> bool:
        """core4: a deferred job due again after its defer_max window is inactive, not run."""
        done = self._apply(INACTIVATE, doc["_id"], {"$set": {"query_at": None, "finished_at": stamp}},
                           where={"query_at": {"$lte": stamp}})
        if done:
            log.error("done execution with [inactive] - [%s] with [%s]", doc["name"], doc["_id"])
            self._event("inactive", doc["_id"], exception="inactive: still deferred after defer_max")
        return done

    def requeue_lost(self, stamp: datetime, among: Collection[ObjectId] | None = None) -> int:
        """A ticket whose job did not start within the lease was lost with its worker."""
        lost = list(self._connection.jobs.find(
            _among({"dispatched_until": {"$gt": EPOCH, "$lt": stamp}}, among),
            {"name": 1, "dispatched_until": 1, "queue": 1, "slot": 1},
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

    # -- dependencies (decided by core4celery.dispatch.dependencies) ------------
    def blocked(self, limit: int, among: Collection[ObjectId] | None = None) -> list[JobDoc]:
        """Jobs that wait for their dependencies (``among``: only these)."""
        query = _among({"blocked_at": {"$gt": EPOCH}}, among)
        cursor = self._connection.jobs.find(query, BLOCKED_FIELDS).hint(BLOCKED_INDEX).limit(limit)
        return list(cursor)  # type: ignore[arg-type]

    def outcomes(self, ids: Collection[ObjectId]) -> dict[ObjectId, JobDoc]:
        """Each job's state (and result): the live document, else its journal copy; absent ids are missing.

        Live first: a move writes the journal copy before it deletes the live
        document, so a job missed by the first read is found by the second.
        """
        if not ids:
            return {}
        query = {"_id": {"$in": list(ids)}}
        live = {doc["_id"]: doc for doc in self._connection.jobs.find(query, OUTCOME_FIELDS)}
        found = {doc["_id"]: {**doc, "journaled": True} for doc in self._connection.journal.find(query, OUTCOME_FIELDS)}
        found.update(live)
        return found  # type: ignore[return-value]

    def add_successor(self, job_id: ObjectId, successor: ObjectId) -> bool:
        """A job enqueued later waits for this live one: its run releases the successor when it ends.

        Not a transition (the state and ``rev`` stay): the completion copies the
        live document, successors included.
        """
        jobs = self._connection.jobs
        result = self._outage.run(lambda: jobs.update_one({"_id": job_id}, {"$addToSet": {"successors": successor}}),
                                  f"link job {job_id}")
        return result.matched_count == 1

    def release(self, doc: Mapping[str, Any], arguments: Mapping[str, Any]) -> bool:
        """Its dependencies completed: the job becomes due, with ``arguments`` (their results) filled in."""
        fields = {"query_at": now(), **{f"args.{name}": value for name, value in arguments.items()}}
        if not self._apply(RELEASE, doc["_id"], {"$set": fields, "$unset": {"blocked_at": ""}},
                           where={"blocked_at": doc["blocked_at"]}):
            return False
        self._bump(rank_of(doc))
        return True

    def abandon(self, doc: Mapping[str, Any], error: dict[str, Any]) -> bool:
        """A dependency ended without completing: the job can never run and ends in error."""
        stamp = now()
        fields = {"last_error": {**error, "at": stamp}, "finished_at": stamp, "query_at": None, "attempts_left": 0}
        return self._apply(ABANDON, doc["_id"], {"$set": fields, "$unset": {"blocked_at": ""}},
                           where={"blocked_at": doc["blocked_at"]})

    def wake_mother(self, mid: str) -> bool:
        """The last unfinished child of ``mid`` ended: she is due now instead of after her defer_time.

        Beyond core4, whose mothers poll every defer_time: a divide-and-conquer
        job finishes when its last child does, and may defer for long. A mother
        still running is marked instead (``woken_at``), so her next deferral is
        due at once. True when she was woken or marked.
        """
        jobs = self._connection.jobs
        unfinished = {"mid": mid, "state": {"$in": [*(s.value for s in WAITING), State.RUNNING.value]}}
        if self._outage.run(lambda: jobs.count_documents(unfinished, limit=1), f"count children of {mid}"):
            return False
        mother = as_object_id(mid)
        stamp = now()
        if self._apply(WAKE, mother, {"$set": {"query_at": stamp}}, where={"query_at": {"$gt": stamp}}):
            self._bump()
            return True
        marked = self._outage.run(
            lambda: jobs.update_one({"_id": mother, "state": State.RUNNING.value}, {"$set": {"woken_at": stamp}}),
            f"mark job {mid}")
        return marked.matched_count == 1

    # -- one run ---------------------------------------------------------------
    def start(self, job_id: ObjectId, name: str, locked: dict[str, Any], ticket: Mapping[str, Any] | None) -> Run | None:
        """dispatched → running in one guarded update; None when the ticket is stale or a duplicate.

        A ticket that carries the job's fields (header ``core4``) saves the read:
        the guard on ``trial`` proves they are the document's.
        """
        stamp = locked["at"]
        rev = ObjectId()
        guard: dict[str, Any] = {"_id": job_id, **START.filter(), "dispatched_until": {"$gt": EPOCH},
                                 "removed_at": None, "killed_at": None}
        if ticket is not None:
            guard["trial"] = ticket["trial"]
        update: list[dict[str, Any]] = [
            {"$set": {
                "state": State.RUNNING.value, "rev": rev, "started_at": stamp, "locked": {"$literal": locked},
                "query_at": None,
                "prog": {"$literal": {"value": None, "message": None}},  # a new trial reports afresh
                "trial": {"$add": ["$trial", 1]},
                # core4: the defer_max window opens at the first start
                "inactive_at": {"$ifNull": ["$inactive_at", {"$add": [stamp, {"$multiply": ["$defer_max", 1000]}]}]},
            }},
            {"$unset": ["dispatched_until", "woken_at"]},
        ]
        jobs = self._connection.jobs
        attempt = self._outage.call(lambda: jobs.update_one(guard, update), f"start job {job_id}")
        if not (attempt.value.matched_count or (attempt.retried and self._landed(job_id, rev))):
            return None
        fields: Mapping[str, Any] | None = ticket
        if fields is None:
            fields = self._outage.run(lambda: jobs.find_one({"_id": job_id}), f"read job {job_id}")
            if fields is None:
                return None
            fields = {**fields, "trial": fields["trial"] - 1}
        return Run.of(fields, job_id=job_id, name=name, token=locked["run"], rev=rev, started_at=stamp,
                      trial=int(fields["trial"]) + 1)

    def complete(self, run: Run, result: Any, stamp: datetime) -> bool:
        """Journal the final copy, then delete the live document; False if the run had lost its job.

        Fast path, two commands: the server copies the job into the journal
        (``$merge``) only if it is unchanged since the start, and the delete is
        guarded the same way. A copy whose delete did not happen is recognised
        by recovery (a journal copy of the running run) and finished there.
        """
        fields = {**run.ended(stamp), "state": State.COMPLETE.value, "result": result,
                  "prog": {"value": 1.0, "message": ""}, "attempts_left": run.attempts_left - 1}
        rev = ObjectId()
        copied = self._journal.copy_live({"_id": run.job_id, "rev": run.rev}, {**fields, "rev": rev, "source_rev": run.rev})
        if copied or self._journal.holds(run.job_id, rev):  # (ours, if a retry met its own first attempt)
            if self._delete(run.job_id, {"rev": run.rev}):
                return True
        return self._complete_changed(run, fields, rev)

    def _complete_changed(self, run: Run, fields: dict[str, Any], rev: ObjectId) -> bool:
        """The job was written during the run (flags, a request): carry that into the journal copy."""
        for _ in range(MOVE_RETRIES):
            live = self._running(run)
            if live is None:
                return self._settle_lost_move(run.job_id, rev)
            rev = ObjectId()
            final: JobDoc = {**live, **fields, "rev": rev, "source_rev": live.get("rev")}  # type: ignore[typeddict-item]
            if not self._journal.propose(final):
                return False
            if self._delete(run.job_id, {"rev": live.get("rev")}):
                return True
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

    def _running(self, run: Run) -> JobDoc | None:
        jobs = self._connection.jobs
        return self._outage.run(  # type: ignore[return-value]
            lambda: jobs.find_one({"_id": run.job_id, "state": State.RUNNING.value, "locked.run": run.token}),
            f"read job {run.job_id}",
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

    def defer(self, run: Run, stamp: datetime, message: str) -> datetime | None:
        """running → deferred; the due time, or None when the run had lost its job."""
        query_at = later(run.defer_time, stamp)
        error = {"exception": f"JobDeferred({message!r})", "traceback": None, "at": stamp}
        fields = {**run.ended(stamp), "query_at": query_at, "last_error": error}
        ending = {"locked.run": run.token, "killed_at": None}
        if self._apply(DEFER, run.job_id, {"$set": fields}, where={**ending, "woken_at": None}):
            return query_at
        current = self._overruled(run)  # one read: killed, lost, or a mother woken during this run
        if current is None or current.get("woken_at") is None:
            return None
        fields["query_at"] = stamp  # her last child ended during this run (wake_mother): due at once
        if self._apply(DEFER, run.job_id, {"$set": fields, "$unset": {"woken_at": ""}}, where=ending):
            self._bump()
            return stamp
        return None

    def fail(self, run: Run, error: dict[str, Any], stamp: datetime, delay: float | None = None) -> State | None:
        """running → failed (attempts left, due after error_time or ``delay``) or error; None when the run lost
        its job."""
        left = run.attempts_left - 1
        fields: dict[str, Any] = {**run.ended(stamp), "attempts_left": left, "last_error": error}
        if left > 0:
            fields["query_at"] = later(run.error_time if delay is None else delay, stamp)
        transition = FAIL if left > 0 else ERROR
        return transition.target if self._end_run(transition, run, fields) else None

    def _end_run(self, transition: Transition, run: Run, fields: dict[str, Any]) -> bool:
        if self._apply(transition, run.job_id, {"$set": fields}, where={"locked.run": run.token, "killed_at": None}):
            return True
        self._overruled(run)
        return False

    def _overruled(self, run: Run) -> JobDoc | None:
        """An ending was refused: the job as it is now, or None when the run lost it.

        A kill requested during the run wins over its deferral or failure (the
        caller then reports nothing).
        """
        current = self._running(run)
        if current is not None and current.get("killed_at"):
            self.kill(current, "killed on request")
            return None
        return current

    def progress(self, run: Run, value: float, message: str | None) -> None:
        """Not a transition (no rev): frequent, and doubles as the run's heartbeat."""
        jobs = self._connection.jobs
        guard = {"_id": run.job_id, "locked.run": run.token}
        update = {"$set": {"prog": {"value": float(value), "message": message}, "locked.heartbeat": now()}}
        self._outage.run(lambda: jobs.update_one(guard, update), f"progress of job {run.job_id}")

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

    def expired_runs(self, stamp: datetime, among: Collection[ObjectId] | None = None) -> list[JobDoc]:
        query = {"state": State.RUNNING.value, "locked.lease_until": {"$lt": stamp}}
        return list(self._connection.jobs.find(_among(query, among), RUN_FIELDS))  # type: ignore[arg-type]

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
        run = lock_of(doc).get("run")
        if doc["state"] == State.RUNNING.value and run is not None and self._journal.copy_of_run(doc["_id"], run):
            self._finish_completion(doc, run)  # it completed; only the delete was missing
            return False
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

    def sweep_removed(self, among: Collection[ObjectId] | None = None) -> int:
        """Journal every job flagged for removal that is not running (core4's remove_jobs)."""
        query = {"removed_at": {"$gt": EPOCH}, "state": {"$ne": State.RUNNING.value}}
        flagged = list(self._connection.jobs.find(_among(query, among), {"_id": 1}))
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

    def repair_slots(self, grace: float = SLOT_GRACE) -> int:
        """Free slots whose claim is over: its job neither holds a ticket nor runs under that claim.

        A claim younger than ``grace`` may be mid-enqueue (slots are taken
        before the job's insert), and a run that ended less than ``grace`` ago
        is handing its slots over right now: both are left alone.
        """
        cutoff = now() - timedelta(seconds=grace)
        freed = 0
        for name, held in self._slots.read().holders.items():
            for entry in held:
                if not self._claim_in_use(entry, cutoff):
                    freed += self._slots.drop(name, entry)
        return freed

    def _claim_in_use(self, entry: Doc, cutoff: datetime) -> bool:
        token = entry.get("t")
        if token is not None and token.generation_time.replace(tzinfo=None) > cutoff:
            return True
        fields = {"state": 1, "dispatched_until": 1, "slot": 1, "finished_at": 1}
        doc = self._connection.jobs.find_one({"_id": entry["id"]}, fields) or self._journal.find(entry["id"])
        if doc is None:
            return False
        waiting_or_running = doc.get("state") == State.RUNNING.value or bool(doc.get("dispatched_until"))
        if waiting_or_running and doc.get("slot") == token:
            return True
        finished = doc.get("finished_at")
        return finished is not None and finished > cutoff


def rank_of(doc: Mapping[str, Any]) -> tuple[bool, int]:
    """A job's rank in dispatch order: (force, priority), higher first."""
    return bool(doc.get("force")), int(doc.get("priority") or 0)


def dispatch_key(doc: Mapping[str, Any]) -> tuple[bool, int, ObjectId]:
    """Sort key of dispatch order: force, then priority (both descending), then FIFO."""
    return (not doc.get("force"), -int(doc.get("priority") or 0), doc["_id"])


def _follow_front(update: dict[str, Any]) -> None:
    """A job no longer waiting leaves the front; an old job waiting again joins it (new ones: see enqueue)."""
    if "query_at" not in update["$set"]:
        return
    due = update["$set"]["query_at"]
    if due is None:
        update.setdefault("$unset", {})["front_at"] = ""
    else:
        update["$set"]["front_at"] = due


def _among(query: dict[str, Any], among: Collection[ObjectId] | None) -> dict[str, Any]:
    return query if among is None else {**query, "_id": {"$in": list(among)}}


def holder_of(doc: Mapping[str, Any], token: ObjectId | None = None) -> Holder:
    """The job as a slot holder; ``token`` names a new claim (default: the claim its document records).

    A job routed to one worker (``route``: pinned, capped per node) holds a slot of that worker's own queue.
    """
    return Holder(job_id=doc["_id"], name=doc["name"], queue=doc.get("route") or doc.get("queue") or DEFAULT_QUEUE,
                  limit=int(doc.get("max_parallel") or 1), token=token or doc.get("slot"),
                  node_limit=int(doc.get("max_per_node") or 0) if doc.get("route") else 0)
