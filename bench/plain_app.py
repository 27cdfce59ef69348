"""Plain Celery without core4celery: kombu's own MongoDB transport, on the benchmark's server.

The broker options are the ones the issue's baseline was measured with (``ttl`` on, 0.05 s
polling, prefetch 1, JSON). ``CORE4CELERY_BENCH_PLAIN_URL`` (set by the benchmark) names a
database of its own, so this worker never sees core4celery's tickets.
"""

from __future__ import annotations

import json
import os
import time

from celery import Celery

URL = os.environ.get("CORE4CELERY_BENCH_PLAIN_URL") or os.environ["CORE4CELERY_MONGODB_URL"]

app = Celery("bench-plain", broker=URL, backend=URL)
app.conf.update(
    worker_prefetch_multiplier=1, accept_content=["json"], task_serializer="json", result_serializer="json",
    broker_transport_options={"ttl": True, "polling_interval": 0.05},
)
app.conf.update(json.loads(os.environ.get("CORE4CELERY_BENCH_CONF") or "{}"))


@app.task(name="bench.plain_only")
def plain_only(i: int) -> float:
    return time.time()
