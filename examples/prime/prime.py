"""The PrimeJob from core4's docs, as a core4celery task.

A mother job splits ``[start, end)`` into chunks, enqueues one child per
chunk (tagged with her id as ``mid``), defers, and watches her children until
none is left; then she counts what they stored. Children store each prime
with its value as ``_id``, so a re-run after a crash is idempotent.

Run a worker with ``celery -A examples.prime.prime worker``.
"""

from __future__ import annotations

import math
import os
from typing import Any

from celery import Celery
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError

from core4celery import Core4, Core4Task

URL = os.environ.get("CORE4CELERY_MONGODB_URL", "mongodb://127.0.0.1:27017/prime?retryWrites=false")

app = Celery("prime", broker=URL)
core4 = Core4(app)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, math.isqrt(n) + 1, 2))


class PrimeJob(Core4Task):
    name = "prime.PrimeJob"
    author = "mra"
    defer_time = 1
    max_parallel = 16

    def execute(self, start: int, end: int, size: int | None = None, run: int = 0) -> int:
        if size:
            return self.mother(start, end, size, run)
        return self.work(start, end)

    def mother(self, start: int, end: int, size: int, run: int) -> int:
        total = math.ceil((end - start) / size)
        if self.trial == 1:
            for low in range(start, end, size):
                self.enqueue(self.name, start=low, end=min(low + size, end), run=run)
            self.defer("launched %d children", total)
        live = len(self.children())
        if live:
            self.progress(1 - live / total, f"{total - live} of {total} chunks done", force=True)
            self.defer("waiting for %d of %d chunks", live, total)
        return int(primes(self).count_documents({"_id": {"$gte": start, "$lt": end}}))

    def work(self, start: int, end: int) -> int:
        found = []
        for n in range(start, end):
            if is_prime(n):
                found.append({"_id": n})
            if n % 5000 == 0:
                self.progress((n - start) / (end - start), f"at {n}")
        if found:
            try:
                primes(self).insert_many(found, ordered=False)
            except BulkWriteError as exc:  # a re-run finds its earlier inserts: fine
                if any(e["code"] != 11000 for e in exc.details["writeErrors"]):
                    raise
        return len(found)


def primes(task: Core4Task) -> Collection[dict[str, Any]]:
    return task.core4.registry.db["primes"]


app.register_task(PrimeJob())
