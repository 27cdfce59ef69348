"""Plain Celery without core4celery: kombu's own MongoDB transport, on the benchmark's server.

The broker options are the ones the issue's baseline was measured with (``ttl`` on, 0.05 s
polling, prefetch 1, JSON). ``CORE4CELERY_BENCH_PLAIN_URL`` (set by the benchmark) names a
database of its own, so this worker never sees core4celery's tickets.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import Celery

from bench.common import trace_collection

URL = os.environ.get("CORE4CELERY_BENCH_PLAIN_URL") or os.environ["CORE4CELERY_MONGODB_URL"]

app = Celery("bench-plain", broker=URL, backend=URL)
app.conf.update(
    worker_prefetch_multiplier=1, accept_content=["json"], task_serializer="json", result_serializer="json",
    broker_transport_options={"ttl": True, "polling_interval": 0.05},
)
app.conf.update(json.loads(os.environ.get("CORE4CELERY_BENCH_CONF") or "{}"))


def trace() -> Any:
    return trace_collection(URL)


@app.task(name="bench.plain_only")
def plain_only(i: int) -> float:
    return time.time()


def _limited(seconds: float) -> None:
    began = time.time()
    time.sleep(seconds)
    trace().insert_one({"start": began, "finish": time.time()})


@app.task(name="bench.plain_limited", acks_late=True)
def plain_limited(i: int, seconds: float) -> int:
    """``bench.limited``'s twin. Late acks: a process takes its next message only when it is free, as a
    core4celery ticket exists only for a free slot."""
    _limited(seconds)
    return i


@app.task(name="bench.plain_limited_early")
def plain_limited_early(i: int, seconds: float) -> int:
    """Celery's default early acks: the worker takes the next message while the last one still runs
    (faster; core4celery cannot do this, a prefetched message would run out of priority order)."""
    _limited(seconds)
    return i
