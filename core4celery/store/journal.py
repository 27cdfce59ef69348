"""The journal: final copies of jobs that left the live collection.

Moving a job is two commands (insert the copy, delete the live document), so
the copy carries what makes the move safe to repeat or undo: its ``_id`` is
the job's id (a second insert of the same move is a duplicate, not a second
copy) and its ``rev`` names the move. While the live document still exists it
is the truth and a journal copy is only a proposal; :class:`JobStore` either
completes the move (deletes the live document) or takes the copy back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from .connection import Connection
from .document import JobDoc


class Journal:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def propose(self, doc: JobDoc) -> bool:
        """Write ``doc`` as the job's journal copy; False when another mover holds this version of the job.

        ``doc["source_rev"]`` is the live document's ``rev`` the copy was built
        from: one copy per live version, so of two movers that read the same
        version only one proposes, and only that one's guarded delete can match.
        A copy of an older version (its mover died or was overtaken) is stale
        and replaced.
        """
        journal = self._connection.journal
        outage = self._connection.outage
        try:
            outage.run(lambda: journal.insert_one(dict(doc)), f"journal job {doc['_id']}")
            return True
        except DuplicateKeyError:
            pass
        existing = outage.run(
            lambda: journal.find_one({"_id": doc["_id"]}, {"rev": 1, "source_rev": 1}), "read the journal"
        )
        if existing is None:
            return self.propose(doc)  # taken back meanwhile
        if existing.get("rev") == doc.get("rev"):
            return True  # our own insert landed before its reply was lost
        live_rev = self._live_rev(doc["_id"])
        if live_rev is False or existing.get("source_rev") == live_rev:
            return False  # moved already, or another mover holds this version
        replaced = outage.run(
            lambda: journal.replace_one({"_id": doc["_id"], "rev": existing.get("rev")}, dict(doc)),
            f"journal job {doc['_id']}",
        )
        return replaced.matched_count == 1

    def _live_rev(self, job_id: ObjectId) -> ObjectId | bool | None:
        """The live document's rev, None when it has none yet, False when it is gone."""
        jobs = self._connection.jobs
        live = self._connection.outage.run(lambda: jobs.find_one({"_id": job_id}, {"rev": 1}), "read a live job")
        return False if live is None else live.get("rev")

    def copy_live(self, match: Mapping[str, Any], fields: Mapping[str, Any]) -> bool:
        """The server copies the live job matching ``match`` into the journal, with ``fields`` set.

        False when a copy exists already (the caller then proposes a full
        document). Whether ``match`` matched shows in the caller's guarded
        delete: the job's rev only moves forward.
        """
        jobs = self._connection.jobs
        pipeline = [
            {"$match": dict(match)},
            {"$set": {key: {"$literal": value} for key, value in fields.items()}},
            {"$merge": {"into": self._connection.journal.name, "whenMatched": "fail", "whenNotMatched": "insert"}},
        ]
        try:
            self._connection.outage.run(lambda: list(jobs.aggregate(pipeline)), f"journal job {match['_id']}")
        except DuplicateKeyError:
            return False
        return True

    def holds(self, job_id: ObjectId, rev: ObjectId | None) -> bool:
        """Is the journal copy of this job the one written by the move named ``rev``?"""
        journal = self._connection.journal
        return bool(self._connection.outage.run(
            lambda: journal.count_documents({"_id": job_id, "rev": rev}, limit=1), "read the journal"
        ))

    def take_back(self, job_id: ObjectId, rev: ObjectId | None) -> None:
        """Undo a proposal whose live document changed (and still exists); another move's copy is left alone."""
        journal = self._connection.journal
        self._connection.outage.run(
            lambda: journal.delete_one({"_id": job_id, "rev": rev}), f"take back the journal copy of {job_id}"
        )

    def copy_of_run(self, job_id: ObjectId, run: ObjectId) -> bool:
        """Did the run with token ``run`` journal this job (a completion cut short before its delete)?"""
        journal = self._connection.journal
        return bool(self._connection.outage.run(
            lambda: journal.count_documents({"_id": job_id, "run": run}, limit=1), "read the journal"
        ))

    def find(self, job_id: ObjectId) -> JobDoc | None:
        return self._connection.journal.find_one({"_id": job_id})  # type: ignore[return-value]
