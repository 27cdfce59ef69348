"""Cluster-wide ``max_parallel`` slots, one small document per job name.

A slot is taken by pushing the job id into ``holders`` with a filter that only
matches while fewer than N ids are there, so the check and the take are one
atomic update; two dispatchers cannot both take the last slot. Only the job
store calls this module: taking and freeing a slot is part of a transition.
"""

from __future__ import annotations

from enum import Enum

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from .connection import Connection, Doc


class Slot(Enum):
    TAKEN = "taken"
    HELD = "held"
    FULL = "full"


class Gates:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._known: set[str] = set()

    def _ensure(self, name: str) -> None:
        if name in self._known:
            return
        gates = self._connection.gates
        try:
            self._connection.outage.run(
                lambda: gates.update_one({"_id": name}, {"$setOnInsert": {"holders": []}}, upsert=True),
                f"create the gate of {name}",
            )
        except DuplicateKeyError:  # a concurrent upsert created it
            pass
        self._known.add(name)

    def acquire(self, name: str, job_id: ObjectId, limit: int) -> Slot:
        """TAKEN: the caller now holds a slot for the job and must release it if it does not dispatch.

        HELD means a slot is held for this job already (in flight, or our own
        push landed before its reply was lost): the caller must neither dispatch
        the job nor release the slot; gate repair frees a slot nobody uses.
        """
        self._ensure(name)
        gates = self._connection.gates
        taken = self._connection.outage.run(
            lambda: gates.update_one(
                {"_id": name, f"holders.{limit - 1}": {"$exists": False}, "holders": {"$ne": job_id}},
                {"$push": {"holders": job_id}},
            ),
            f"take a slot of {name}",
        )
        if taken.matched_count:
            return Slot.TAKEN
        held = self._connection.outage.run(
            lambda: gates.count_documents({"_id": name, "holders": job_id}, limit=1), f"read the gate of {name}"
        )
        return Slot.HELD if held else Slot.FULL

    def release(self, name: str, job_id: ObjectId) -> None:
        gates = self._connection.gates
        self._connection.outage.run(
            lambda: gates.update_one({"_id": name}, {"$pull": {"holders": job_id}}), f"free a slot of {name}"
        )

    def holders(self, name: str) -> list[ObjectId]:
        doc = self._connection.gates.find_one({"_id": name})
        return list(doc["holders"]) if doc else []

    def all(self) -> list[Doc]:
        return list(self._connection.gates.find({}))
