"""Benchmark app: a trivial core4 task and the same plain Celery task, same server."""

from __future__ import annotations

import os
import time

from celery import Celery

from core4celery import Core4, Core4Task

URL = os.environ["CORE4CELERY_MONGODB_URL"]

app = Celery("bench", broker=URL, backend=URL)
core4 = Core4(app)


@app.task(base=Core4Task, bind=True, name="bench.core4_trivial", author="bench", max_parallel=100)
def core4_trivial(self: Core4Task, i: int) -> float:
    return time.time()


@app.task(name="bench.plain_trivial")
def plain_trivial(i: int) -> float:
    return time.time()
