"""Cluster-wide switches: halt the workers, pause and resume dispatching.

They live as small documents in the control collection (core4's
``__halt__`` / ``__maintenance__``), so every worker and every CLI call sees
the same switch without any broadcast message having to arrive.
"""

from __future__ import annotations

from datetime import datetime

from pymongo.errors import DuplicateKeyError

from ..clock import now
from ..store.connection import Connection

HALT = "halt"
PAUSE = "pause"


class Control:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def halt(self) -> datetime:
        """Workers started before this moment finish their running jobs and exit."""
        stamp = now()
        self._connection.control.update_one({"_id": HALT}, {"$set": {"at": stamp}}, upsert=True)
        return stamp

    def halt_requested(self, started_at: datetime) -> bool:
        doc = self._connection.control.find_one({"_id": HALT})
        return bool(doc and doc["at"] >= started_at)

    def pause(self) -> bool:
        """Stop issuing tickets; False when dispatching was paused already."""
        try:
            result = self._connection.control.update_one(
                {"_id": PAUSE}, {"$setOnInsert": {"at": now()}}, upsert=True
            )
        except DuplicateKeyError:  # a concurrent pause created it
            return False
        return result.upserted_id is not None

    def resume(self) -> bool:
        """False when dispatching was not paused."""
        return self._connection.control.delete_one({"_id": PAUSE}).deleted_count == 1

    def pause_project(self, project: str) -> bool:
        """Stop issuing tickets for the jobs under ``project``; False when it was paused already."""
        try:
            result = self._connection.control.update_one(
                {"_id": f"{PAUSE}:{project}"}, {"$setOnInsert": {"at": now(), "project": project}}, upsert=True
            )
        except DuplicateKeyError:
            return False
        return result.upserted_id is not None

    def resume_project(self, project: str) -> bool:
        return self._connection.control.delete_one({"_id": f"{PAUSE}:{project}"}).deleted_count == 1

    def paused_projects(self) -> dict[str, datetime]:
        return {doc["project"]: doc["at"] for doc in self._connection.control.find({"project": {"$exists": True}})}

    def paused(self) -> datetime | None:
        doc = self._connection.control.find_one({"_id": PAUSE})
        return doc["at"] if doc else None
