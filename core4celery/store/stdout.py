"""Captured stdout/stderr of job runs (core4's ``sys.stdout``): the only writer and reader of its collection.

One document per run, keyed by ``job_id`` and ``trial`` (core4 kept only the
latest trial): ``text`` (the tail of what the run wrote, at most the setting
``stdout_max_bytes`` of UTF-8), ``cut`` (bytes dropped from the front),
``hostname`` and ``at``. A run that wrote nothing stores nothing, so a quiet
job costs no round trip.
"""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from pymongo import DESCENDING

from ..clock import now
from .connection import Connection, Doc


def tail(text: str, max_bytes: int) -> tuple[str, int]:
    """The last ``max_bytes`` of ``text`` as UTF-8 (never splitting a character), and how many bytes were cut."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= max_bytes:
        return data.decode("utf-8"), 0
    kept = data[len(data) - max_bytes:].decode("utf-8", "ignore")  # a split character at the front is dropped
    return kept, len(data) - len(kept.encode("utf-8"))


class StdoutStore:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def save(self, job_id: ObjectId, trial: int, text: str, hostname: str, max_bytes: int, cut: int = 0) -> bool:
        """Store one run's output (a rerun of the same trial replaces it); False when there is nothing to store."""
        if not text and not cut:
            return False
        kept, more = tail(text, max_bytes)
        doc = {"job_id": job_id, "trial": trial, "text": kept, "cut": cut + more, "hostname": hostname, "at": now()}
        self._connection.stdout.replace_one({"job_id": job_id, "trial": trial}, doc, upsert=True)
        return True

    def read(self, job_id: ObjectId, trial: int | None = None) -> Doc | None:
        """One run's output: ``trial``'s, or the latest run's that wrote anything."""
        query: dict[str, Any] = {"job_id": job_id}
        if trial is not None:
            query["trial"] = trial
        found: Doc | None = self._connection.stdout.find_one(query, {"_id": 0}, sort=[("trial", DESCENDING)])
        return found
