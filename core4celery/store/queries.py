"""Read-only views of the registry for the CLI and monitoring.

Kept apart from :class:`~core4celery.store.jobs.JobStore` (which owns every
write) so that what the CLI may do with a connection is plain from the type.
"""

from __future__ import annotations

from typing import Any

from .connection import Connection
from .document import JobDoc


class JobQueries:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def live(self, *, name: str | None = None, states: list[str] | None = None) -> list[JobDoc]:
        """Live jobs, oldest first."""
        query: dict[str, Any] = {}
        if name is not None:
            query["name"] = name
        if states:
            query["state"] = {"$in": states}
        return list(self._connection.jobs.find(query).sort("_id", 1))  # type: ignore[arg-type]

    def live_ids(self, name: str) -> list[str]:
        return [str(doc["_id"]) for doc in self._connection.jobs.find({"name": name}, {"_id": 1}).sort("_id", 1)]

    def journaled(self, name: str, limit: int) -> list[JobDoc]:
        """The latest journal entries of a name, newest first."""
        docs = self._connection.journal.find({"name": name}).sort("_id", -1).limit(limit)
        return [{**doc, "journaled": True} for doc in docs]  # type: ignore[typeddict-item]

    def counts(self) -> list[tuple[str, str, int]]:
        """(state, name, n) of live jobs."""
        rows = self._connection.jobs.aggregate(
            [{"$group": {"_id": {"name": "$name", "state": "$state"}, "n": {"$sum": 1}}}]
        )
        return sorted((r["_id"]["state"], r["_id"]["name"], int(r["n"])) for r in rows)

    def children(self, mid: str) -> list[JobDoc]:
        return list(self._connection.jobs.find({"mid": mid}))  # type: ignore[arg-type]

    def journaled_children(self, mid: str) -> int:
        return self._connection.journal.count_documents({"mid": mid})
