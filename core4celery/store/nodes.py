"""The worker directory: one document per ``celery worker``, renewed by its heartbeat.

Capacity is counted from it, per queue: a worker's slots count only for the
queues it consumes, so a job for a queue nobody consumes takes no slot.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ..clock import later, now
from .connection import Connection, Doc


class Nodes:
    def __init__(self, connection: Connection, worker_timeout: float) -> None:
        self._connection = connection
        self._timeout = worker_timeout

    def beat(self, worker_id: str, hostname: str, concurrency: int, queues: Iterable[str],
             started_at: datetime, draining: bool, extra: Mapping[str, Any] | None = None) -> None:
        """``extra``: the worker's own queue, the shared queues it serves, its resource gate."""
        workers = self._connection.workers
        fields = {
            "hostname": hostname, "pid": os.getpid(), "heartbeat": now(),
            "concurrency": 0 if draining else concurrency, "slots": concurrency, "queues": sorted(queues),
            "draining": draining, "started_at": started_at, **(extra or {}),
        }
        self._connection.outage.run(
            lambda: workers.update_one({"_id": worker_id}, {"$set": fields}, upsert=True), "worker heartbeat"
        )

    def leave(self, worker_id: str) -> None:
        self._connection.workers.delete_one({"_id": worker_id})

    def alive(self) -> list[Doc]:
        """Workers whose heartbeat is within ``worker_timeout``, oldest id first."""
        cursor = self._connection.workers.find({"heartbeat": {"$gte": later(-self._timeout)}})
        return list(cursor.sort("_id", 1))

    def forget_all(self) -> None:
        """Drop every registration (benchmarks between configurations)."""
        self._connection.workers.delete_many({})


def slots_by_queue(workers: Iterable[Doc]) -> dict[str, int]:
    """Worker slots per consumed queue (a worker consuming two queues counts for both)."""
    slots: dict[str, int] = {}
    for worker in workers:
        for queue in worker.get("queues") or ():
            slots[queue] = slots.get(queue, 0) + int(worker.get("concurrency") or 0)
    return slots
