"""A plain Celery app on the benchmark's server: the idle-load baseline (no core4celery at all)."""

from __future__ import annotations

import json
import os

from celery import Celery

URL = os.environ["CORE4CELERY_MONGODB_URL"]

app = Celery("bench-plain", broker=URL, backend=URL)
app.conf.update(json.loads(os.environ.get("CORE4CELERY_BENCH_CONF") or "{}"))


@app.task(name="bench.plain_only")
def plain_only(i: int) -> int:
    return i
