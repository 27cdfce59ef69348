"""The PrimeJob from core4's docs, as a core4celery task.

A mother job splits ``[start, end)`` into chunks, enqueues one child per
chunk (tagged with her id as ``mid``), defers, and watches her children until
none is left; then she adds up what they stored. Each child stores one
document per chunk (its prime count, keyed by run and chunk), so a re-run
after a crash overwrites rather than double-counts, and the database does one
write per chunk instead of one per prime.

Run a worker with ``celery -A examples.prime.prime worker``.
"""

from __future__ import annotations

import math
import os
from typing import Any

from celery import Celery
from pymongo.collection import Collection

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
        return self.work(start, end, run)

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
        stored = chunks(self).find({"run": run, "start": {"$gte": start}, "end": {"$lte": end}}, {"count": 1})
        return sum(int(doc["count"]) for doc in stored)

    def work(self, start: int, end: int, run: int) -> int:
        found = 0
        for n in range(start, end):
            if is_prime(n):
                found += 1
            if n % 5000 == 0:
                self.progress((n - start) / (end - start), f"at {n}")
        chunks(self).replace_one(
            {"_id": f"{run}:{start}"}, {"run": run, "start": start, "end": end, "count": found}, upsert=True
        )
        return found


def chunks(task: Core4Task) -> Collection[dict[str, Any]]:
    return task.core4.connection.db["prime_chunks"]


app.register_task(PrimeJob())
