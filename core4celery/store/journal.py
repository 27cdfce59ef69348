"""The journal: final copies of jobs that left the live collection.

Moving a job is two commands (insert the copy, delete the live document), so
the copy carries what makes the move safe to repeat or undo: its ``_id`` is
the job's id (a second insert of the same move is a duplicate, not a second
copy) and its ``rev`` names the move. While the live document still exists it
is the truth and a journal copy is only a proposal; :class:`JobStore` either
completes the move (deletes the live document) or takes the copy back.
"""

from __future__ import annotations

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from .connection import Connection
from .document import JobDoc


class Journal:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def propose(self, doc: JobDoc) -> bool:
        """Write ``doc`` as the job's journal copy; False when a final copy of another move exists.

        A copy left by a move that never completed (its live document lives on)
        is replaced; the caller only proposes while it holds the live document.
        """
        journal = self._connection.journal
        outage = self._connection.outage
        try:
            outage.run(lambda: journal.insert_one(dict(doc)), f"journal job {doc['_id']}")
            return True
        except DuplicateKeyError:
            pass
        existing = outage.run(lambda: journal.find_one({"_id": doc["_id"]}, {"rev": 1}), "read the journal")
        if existing is None or existing.get("rev") == doc.get("rev"):
            # gone meanwhile (taken back), or our own insert landed before its reply was lost
            return existing is not None or self.propose(doc)
        if self._live_exists(doc["_id"]):
            replaced = outage.run(
                lambda: journal.replace_one({"_id": doc["_id"], "rev": existing.get("rev")}, dict(doc)),
                f"journal job {doc['_id']}",
            )
            return replaced.matched_count == 1 or self._holds(doc)
        return False

    def _holds(self, doc: JobDoc) -> bool:
        found = self._connection.journal.count_documents({"_id": doc["_id"], "rev": doc.get("rev")}, limit=1)
        return bool(found)

    def _live_exists(self, job_id: ObjectId) -> bool:
        jobs = self._connection.jobs
        return bool(self._connection.outage.run(
            lambda: jobs.count_documents({"_id": job_id}, limit=1), "read a live job"
        ))

    def take_back(self, job_id: ObjectId, rev: ObjectId | None) -> None:
        """Undo a proposal whose live document changed; another move's copy is left alone."""
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
