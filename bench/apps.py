"""Benchmark app: core4 tasks and their plain Celery twins, on one server.

Settings for a run come as JSON in CORE4CELERY_BENCH_CONF (set by
:class:`bench.common.Bench`), so the driver and its workers always agree.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

from bench.common import trace_collection
from core4celery import Core4, Core4Task

URL = os.environ["CORE4CELERY_MONGODB_URL"]

app = Celery("bench", broker=URL, backend=URL)
app.conf.update(json.loads(os.environ.get("CORE4CELERY_BENCH_CONF") or "{}"))
core4 = Core4(app)


def trace() -> Any:
    return trace_collection(URL)


@app.task(base=Core4Task, bind=True, name="bench.core4_trivial", author="bench", max_parallel=100)
def core4_trivial(self: Core4Task, i: int) -> float:
    return time.time()


@app.task(name="bench.plain_trivial")
def plain_trivial(i: int) -> float:
    return time.time()


@app.task(base=Core4Task, bind=True, name="bench.sleep", author="bench", max_parallel=100)
def sleep(self: Core4Task, seconds: float, tag: str = "") -> str:
    began = time.time()
    time.sleep(seconds)
    trace().insert_one({"job": self.job_id, "tag": tag, "trial": self.trial, "start": began,
                        "finish": time.time(), "worker": self.request.hostname})
    return tag


@app.task(base=Core4Task, bind=True, name="bench.limited", author="bench", max_parallel=3)
def limited(self: Core4Task, i: int, seconds: float) -> int:
    began = time.time()
    time.sleep(seconds)
    trace().insert_one({"job": self.job_id, "start": began, "finish": time.time(),
                        "worker": self.request.hostname})
    return i


class Fanout(Core4Task):
    """A mother that only orchestrates: N children that sleep, then she completes.

    She is woken when her last child ends (JobStore.wake_mother), so her
    defer_time is only the longest she waits between checks.
    """

    name = "bench.fanout"
    author = "bench"
    defer_time = 60
    defer_max = 86400

    def execute(self, chunks: int, seconds: float, run: str) -> int:
        if self.trial == 1:
            for i in range(chunks):
                self.enqueue("bench.sleep", seconds=seconds, tag=f"{run}-{i}")
            self.defer("launched %d children", chunks)
        if self.children():
            self.defer("waiting for children")
        return chunks


app.register_task(Fanout())
