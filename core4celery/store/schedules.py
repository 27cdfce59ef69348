"""Schedule state and the scheduler's lease: the only writer of the schedules collection.

One document per scheduled task (``_id`` its name): ``cron`` as last seen,
``last_run`` (the tick last claimed, core4's bookmark), ``next_run``,
``skipped`` (ticks whose job still existed), ``last_job`` and ``last_error``.
One more document, ``_id`` :data:`LEASE`, names the worker that schedules
(``by``) and until when (``until``); workers take it when it is free or expired
and renew it each beat, with one guarded update, as the front keeper's lease.

A tick is claimed by moving ``last_run`` from the value the scheduler read to
the tick's time in one guarded update, before the job is enqueued: of two
schedulers that read the same state only one moves it, so a tick never fires
twice; a scheduler that dies between the claim and the enqueue loses that
tick (at most once, core4 fires the next one).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.errors import DuplicateKeyError, PyMongoError

from .connection import Connection, Doc

LEASE = "__scheduler__"


class ScheduleStore:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._lease_exists = False

    def _run(self, command: Any, what: str) -> Any:
        return self._connection.outage.run(command, what)

    # -- the lease ---------------------------------------------------------
    def lead(self, owner: str, seconds: float, stamp: datetime) -> bool:
        """Take the lease if it is free, expired or ``owner``'s already, and hold it ``seconds`` from ``stamp``."""
        self._ensure_lease()
        schedules = self._connection.schedules
        guard = {"_id": LEASE, "$or": [{"by": owner}, {"until": {"$lt": stamp}}, {"by": None}]}
        update = {"$set": {"by": owner, "until": stamp + timedelta(seconds=seconds)}}
        result = self._run(lambda: schedules.update_one(guard, update), "lead the scheduler")
        return bool(result.matched_count == 1)

    def resign(self, owner: str) -> bool:
        """Give the lease up at once (a worker shutting down): the next worker's beat takes it.

        Best effort, without riding out an outage: a shutdown must not wait for the server,
        and a lease that was not given up expires anyway.
        """
        try:
            result = self._connection.schedules.update_one({"_id": LEASE, "by": owner}, {"$set": {"by": None}})
        except PyMongoError:
            return False
        return bool(result.matched_count == 1)

    def leader(self) -> Doc | None:
        """``{by, until}`` of the lease (``by`` None when free), None before any worker scheduled."""
        found: Doc | None = self._connection.schedules.find_one({"_id": LEASE})
        return found

    def _ensure_lease(self) -> None:
        if self._lease_exists:
            return
        schedules = self._connection.schedules
        try:
            self._run(lambda: schedules.update_one({"_id": LEASE}, {"$setOnInsert": {"by": None, "until": None}},
                                                   upsert=True), "create the scheduler lease")
        except DuplicateKeyError:  # a concurrent upsert created it
            pass
        self._lease_exists = True

    # -- schedule state ----------------------------------------------------
    def states(self) -> dict[str, Doc]:
        """Every schedule's state by task name."""
        docs = self._run(lambda: list(self._connection.schedules.find({"_id": {"$ne": LEASE}})), "read the schedules")
        return {doc["_id"]: doc for doc in docs}

    def begin(self, name: str, cron: str, stamp: datetime, next_run: datetime) -> bool:
        """A new schedule (or a changed cron) starts counting from ``stamp``: core4 fires nothing for the past.

        False when another scheduler began it already with this cron.
        """
        schedules = self._connection.schedules
        update = {"$set": {"cron": cron, "last_run": stamp, "next_run": next_run},
                  "$setOnInsert": {"skipped": 0}}
        try:
            self._run(lambda: schedules.update_one({"_id": name, "cron": {"$ne": cron}}, update, upsert=True),
                      f"begin the schedule of {name}")
        except DuplicateKeyError:  # it exists with this cron: begun by someone else meanwhile
            return False
        return True

    def claim(self, name: str, cron: str, last_run: datetime, tick: datetime, next_run: datetime, owner: str) -> bool:
        """Move ``last_run`` from the value read to ``tick``; True for the one scheduler that moved it.

        A retry after a lost reply finds its own claim (same tick, same owner) and still succeeds.
        """
        schedules = self._connection.schedules
        guard = {"_id": name, "cron": cron,
                 "$or": [{"last_run": last_run}, {"last_run": tick, "claimed_by": owner}]}
        update = {"$set": {"last_run": tick, "next_run": next_run, "claimed_by": owner}}
        result = self._run(lambda: schedules.update_one(guard, update), f"claim a tick of {name}")
        return bool(result.matched_count == 1)

    def fired(self, name: str, job_id: str, stamp: datetime) -> None:
        self._note(name, {"$set": {"last_job": job_id, "last_enqueued_at": stamp, "last_error": None}})

    def skipped(self, name: str, job_id: str | None, tick: datetime) -> None:
        """The tick's job still existed: counted (once per tick, even when retried), not queued twice."""
        schedules = self._connection.schedules
        update = {"$inc": {"skipped": 1}, "$set": {"last_job": job_id, "last_skipped_at": tick}}
        self._run(lambda: schedules.update_one({"_id": name, "last_skipped_at": {"$ne": tick}}, update),
                  f"count a skipped tick of {name}")

    def failed(self, name: str, message: str, stamp: datetime) -> None:
        self._note(name, {"$set": {"last_error": {"message": message, "at": stamp}}})

    def _note(self, name: str, update: dict[str, Any]) -> None:
        schedules = self._connection.schedules
        self._run(lambda: schedules.update_one({"_id": name}, update), f"record a tick of {name}")

    def set_last_run(self, name: str, last_run: datetime) -> None:
        """Move the bookmark (operators and tests: make a tick due now without waiting for the clock)."""
        schedules = self._connection.schedules
        self._run(lambda: schedules.update_one({"_id": name}, {"$set": {"last_run": last_run}}),
                  f"move the bookmark of {name}")
