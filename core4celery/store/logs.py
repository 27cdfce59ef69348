"""Job logs (core4's ``sys.log``): the only writer and reader of the logs collection.

One document per record: ``job_id``, ``trial`` (the run), ``seq`` (order within
the run), ``level``, ``levelno``, ``created``, ``hostname``, ``logger``,
``message`` and, for a record with a traceback, ``exception``.

A :class:`RunLog` collects one run's records in memory and writes them in
batches (``insert_many``), so logging costs a job no server round trip per
record; a run that is killed loses only the records not yet written. Records
below the stored level wait in a bounded buffer and are written only when the
run fails (core4's debug trail of failed runs). A run stores at most
``max_records``; the rest are counted and summed up in one last record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING

from ..clock import now
from .connection import Connection, Doc

MAX_MESSAGE = 16 * 1024  # characters of one message (and of its traceback) that are kept
BATCH_RECORDS = 100
BATCH_SECONDS = 1.0
DROPPED_LOGGER = "core4celery"


def bounded_text(text: str) -> str:
    """Storable text: at most MAX_MESSAGE characters, lone surrogates escaped."""
    if len(text) > MAX_MESSAGE:
        text = text[:MAX_MESSAGE] + f" ... [{len(text) - MAX_MESSAGE} characters cut]"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class LogStore:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def insert(self, records: list[Doc]) -> None:
        if records:
            self._connection.logs.insert_many(records, ordered=False)

    def read(self, job_id: ObjectId, trial: int | None = None, levelno: int = 0,
             after: tuple[int, int] = (0, -1)) -> list[Doc]:
        """Records of one job in order; ``after``: (trial, seq) of the last record already seen."""
        query: dict[str, Any] = {"job_id": job_id, "trial": {"$gte": after[0]}}
        if trial is not None:
            query["trial"] = trial
        if levelno:
            query["levelno"] = {"$gte": levelno}
        found = self._connection.logs.find(query, {"_id": 0}).sort([("trial", ASCENDING), ("seq", ASCENDING)])
        return [doc for doc in found if (doc["trial"], doc["seq"]) > after]


class RunLog:
    """One run's records on their way into the registry; thread-safe (the job and its flusher share it)."""

    def __init__(self, store: LogStore, job_id: ObjectId, trial: int, hostname: str, level: str,
                 max_records: int, batch: int = BATCH_RECORDS, seconds: float = BATCH_SECONDS) -> None:
        self._store = store
        self._fields = {"job_id": job_id, "trial": trial, "hostname": hostname}
        self._levelno = logging.getLevelName(level)
        self._max = max_records
        self._batch = batch
        self._seconds = seconds
        self._lock = threading.Lock()
        self._seq = 0
        self._admitted = 0
        self._dropped = 0
        self._pending: list[Doc] = []
        self._buffer: deque[Doc] = deque(maxlen=max_records)  # below the stored level, for a failure
        self._evicted = 0
        self._since = time.monotonic()

    def add(self, entry: Doc) -> bool:
        """Take one record (level, levelno, created, logger, message[, exception]); True when a batch is due."""
        with self._lock:
            record = {**self._fields, "seq": self._seq, **entry}
            self._seq += 1
            if record["levelno"] < self._levelno:
                self._evicted += len(self._buffer) == self._buffer.maxlen
                self._buffer.append(record)
            else:
                self._admit(record)
            return len(self._pending) >= self._batch

    def _admit(self, record: Doc) -> None:
        if self._admitted >= self._max:
            self._dropped += 1
            return
        self._admitted += 1
        self._pending.append(record)

    def due(self) -> bool:
        with self._lock:
            return bool(self._pending) and (len(self._pending) >= self._batch
                                            or time.monotonic() - self._since >= self._seconds)

    def flush(self) -> int:
        """Write what is pending; returns how many records were written."""
        with self._lock:
            batch, self._pending = self._pending, []
            self._since = time.monotonic()
        self._store.insert(batch)
        return len(batch)

    def close(self, failed: bool) -> int:
        """The run ended: a failed run's debug trail is written too, then a record of what was dropped."""
        with self._lock:
            if failed:
                self._dropped += self._evicted
                for record in self._buffer:
                    self._admit(record)
            self._buffer.clear()
            if self._dropped:
                self._pending.append(self._dropped_record())
        return self.flush()

    def _dropped_record(self) -> Doc:
        message = f"{self._dropped} records dropped (at most {self._max} are stored per run)"
        return {**self._fields, "seq": self._seq, "level": "WARNING", "levelno": logging.WARNING,
                "created": now(), "logger": DROPPED_LOGGER, "message": message}

