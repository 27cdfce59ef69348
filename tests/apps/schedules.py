"""A scheduled task for tests/integration/test_schedules.py.

Its cron comes from ``TEST_SCHEDULE`` (workers and the test process must agree
on it); the test picks one that does not come round while it runs and makes
ticks due by moving the stored ``last_run`` back, so no test waits for a clock.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

from core4celery import Core4, Core4Task
from tests.apps.jobs import FAST, trace_collection

DEFAULT_SCHEDULE = "0 0 1 1 *"


def build(url: str, schedule: str | None = None) -> tuple[Celery, Core4]:
    app = Celery("schedules", broker=url)
    app.conf.update(FAST)
    app.conf.broker_transport_options = {"ttl": True, "polling_interval": 0.05}
    app.conf.worker_hijack_root_logger = False
    core4 = Core4(app)
    traces: dict[int, Any] = {}

    def trace() -> Any:  # one client per process: pool children must not share the parent's
        if os.getpid() not in traces:
            traces[os.getpid()] = trace_collection(url)
        return traces[os.getpid()]

    @app.task(base=Core4Task, bind=True, shared=False, name="sc.tick", author="test",
              schedule=schedule or os.environ.get("TEST_SCHEDULE") or DEFAULT_SCHEDULE)
    def tick(self: Core4Task) -> str:
        trace().insert_one({"job": self.job_id, "worker": self.request.hostname, "at": time.time()})
        return str(self.job_id)

    return app, core4


if os.environ.get("CORE4CELERY_MONGODB_URL"):
    app, core4 = build(os.environ["CORE4CELERY_MONGODB_URL"])
