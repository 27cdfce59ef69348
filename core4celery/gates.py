"""Cluster-wide ``max_parallel`` slots, one small document per job name.

A slot is taken by pushing the job id into ``holders`` with a filter that only
matches while fewer than N ids are there, so the check and the take are one
atomic update; two dispatchers cannot both take the last slot.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from bson import ObjectId
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from .registry import Doc


class Slot(Enum):
    TAKEN = "taken"
    HELD = "held"
    FULL = "full"


class Gates:
    def __init__(self, collection: Callable[[], Collection[Doc]]) -> None:
        self._collection = collection  # looked up per call: pool children must use their own client
        self._known: set[str] = set()

    @property
    def _gates(self) -> Collection[Doc]:
        return self._collection()

    def _ensure(self, name: str) -> None:
        if name in self._known:
            return
        try:
            self._gates.update_one({"_id": name}, {"$setOnInsert": {"holders": []}}, upsert=True)
        except DuplicateKeyError:  # a concurrent upsert created it
            pass
        self._known.add(name)

    def acquire(self, name: str, job_id: ObjectId, limit: int) -> Slot:
        """TAKEN: the caller now holds a slot for the job and must release it if it does not dispatch.

        HELD means someone else took a slot for this job (it is in flight): the caller
        must neither dispatch it nor release that slot.
        """
        self._ensure(name)
        taken = self._gates.update_one(
            {"_id": name, f"holders.{limit - 1}": {"$exists": False}, "holders": {"$ne": job_id}},
            {"$push": {"holders": job_id}},
        )
        if taken.matched_count:
            return Slot.TAKEN
        held = self._gates.count_documents({"_id": name, "holders": job_id}, limit=1)
        return Slot.HELD if held else Slot.FULL

    def release(self, name: str, job_id: ObjectId) -> None:
        self._gates.update_one({"_id": name}, {"$pull": {"holders": job_id}})

    def holders(self, name: str) -> list[ObjectId]:
        doc = self._gates.find_one({"_id": name})
        return list(doc["holders"]) if doc else []

    def all(self) -> list[Doc]:
        return list(self._gates.find({}))
