"""Tasks used by the integration tests, built per database URL.

Workers load it with ``-A tests.apps.jobs`` (URL from the environment); the
test process calls :func:`build` with the same URL to get an app whose task
names match.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from pymongo import MongoClient

from core4celery import Core4, Core4Task

FAST = {
    "core4celery_heartbeat_interval": 0.5,
    "core4celery_worker_timeout": 6.0,
    "core4celery_ticket_lease": 4.0,
    "core4celery_run_lease": 4.0,
    "core4celery_dispatch_interval": 0.1,
    "core4celery_outage_timeout": 5.0,
    # tests/integration/test_wakeups.py starts workers that wait long between polls once idle
    "core4celery_idle_wait": float(os.environ.get("TEST_IDLE_WAIT") or 1.0),
}


def trace_collection(url: str) -> Any:
    client = MongoClient(url)
    return client.get_default_database()["trace"]


def fast_app(name: str, url: str) -> tuple[Celery, Core4]:
    """An app of the test modules: fast timers, the MongoDB broker, Celery's logging left alone."""
    app = Celery(name, broker=url)
    app.conf.update(FAST)
    app.conf.broker_transport_options = {"ttl": True, "polling_interval": 0.05}
    app.conf.worker_hijack_root_logger = False
    return app, Core4(app)


def per_process_trace(url: str) -> Callable[[], Any]:
    """The trace collection through one client per process: pool children must not share the parent's."""
    traces: dict[int, Any] = {}

    def trace() -> Any:
        if os.getpid() not in traces:
            traces[os.getpid()] = trace_collection(url)
        return traces[os.getpid()]
    return trace


def build(url: str) -> tuple[Celery, Core4]:
    app = Celery("jobs", broker=url, backend=url)
    app.conf.update(FAST)
    app.conf.broker_transport_options = {"ttl": True, "polling_interval": 0.05}
    app.conf.worker_hijack_root_logger = False
    core4 = Core4(app)
    traces: dict[int, Any] = {}

    def trace() -> Any:
        # one client per process: pool children must not share the parent's
        pid = os.getpid()
        if pid not in traces:
            traces[pid] = trace_collection(url)
        return traces[pid]

    @app.task(base=Core4Task, bind=True, shared=False, name="t.square", author="test")
    def square(self: Core4Task, n: int) -> int:
        self.progress(0.5, "half way")
        return n * n

    @app.task(base=Core4Task, bind=True, shared=False, name="t.sleepy", author="test", max_parallel=2)
    def sleepy(self: Core4Task, seconds: float, tag: str) -> str:
        trace().insert_one({"job": self.job_id, "tag": tag, "event": "start", "at": time.time()})
        time.sleep(seconds)
        trace().insert_one({"job": self.job_id, "tag": tag, "event": "finish", "at": time.time()})
        return tag

    @app.task(base=Core4Task, bind=True, shared=False, name="t.record", author="test")
    def record(self: Core4Task, tag: str, seconds: float = 0.0) -> str:
        trace().insert_one({"job": self.job_id, "tag": tag, "event": "start", "at": time.time(),
                            "worker": self.request.hostname})
        time.sleep(seconds)
        return tag

    @app.task(base=Core4Task, bind=True, shared=False, name="t.silent", author="test", zombie_time=1, wall_time=1)
    def silent(self: Core4Task, seconds: float) -> float:
        """Runs without reporting progress: a zombie after 1 s, past its wall time after 1 s."""
        trace().insert_one({"job": self.job_id, "event": "start", "pid": os.getpid(), "at": time.time()})
        time.sleep(seconds)
        return seconds

    @app.task(base=Core4Task, bind=True, shared=False, name="t.stepper", author="test")
    def stepper(self: Core4Task, steps: int, pause: float) -> int:
        for step in range(steps):
            self.progress(step / steps, f"step {step} of {steps}", force=True)
            time.sleep(pause)
        return steps

    @app.task(base=Core4Task, bind=True, shared=False, name="t.defer_then", author="test", defer_time=0.5)
    def defer_then(self: Core4Task, times: int) -> int:
        if self.trial <= times:
            self.defer("not yet, trial %d", self.trial)
        return self.trial

    @app.task(base=Core4Task, bind=True, shared=False, name="t.defer_forever", author="test", defer_time=0.3, defer_max=1.5)
    def defer_forever(self: Core4Task) -> None:
        self.defer("never ready")

    @app.task(base=Core4Task, bind=True, shared=False, name="t.flaky", author="test", attempts=3, error_time=0.5)
    def flaky(self: Core4Task, fail_times: int) -> int:
        if self.trial <= fail_times:
            raise RuntimeError(f"failure in trial {self.trial}")
        return self.trial

    class Mother(Core4Task):
        name = "t.mother"
        author = "test"
        defer_time = 0.5

        def execute(self, chunks: int, size: int = 10) -> int:
            if self.trial == 1:
                for i in range(chunks):
                    self.enqueue("t.child", start=i * size, end=(i + 1) * size)
                self.defer("launched %d children", chunks)
            live = len(self.children())
            if live:
                self.progress(1 - live / chunks, f"{live} of {chunks} running")
                self.defer("waiting for %d children", live)
            return chunks

    app.register_task(Mother())

    class PatientMother(Mother):
        """Checks on her children once an hour: only the wake-up of her last child makes her finish."""

        name = "t.patient_mother"
        author = "test"
        defer_time = 3600

    app.register_task(PatientMother())

    @app.task(base=Core4Task, bind=True, shared=False, name="t.child", author="test", max_parallel=3)
    def child(self: Core4Task, start: int, end: int) -> int:
        total = sum(range(start, end))
        trace().insert_one({"job": self.job_id, "event": "child", "sum": total, "at": time.time()})
        return total

    bad_values: dict[str, Any] = {
        "bigint": 2**64, "surrogate": "\ud800", "nul_key": {"a\x00b": 1}, "huge": "x" * (17 * 1024 * 1024),
    }

    @app.task(base=Core4Task, bind=True, shared=False, name="t.bad_result", author="test")
    def bad_result(self: Core4Task, kind: str) -> Any:
        """Returns a value JSON accepts but MongoDB cannot store."""
        return bad_values[kind]

    @app.task(base=Core4Task, bind=True, shared=False, name="t.bad_progress", author="test")
    def bad_progress(self: Core4Task, message: Any = None) -> int:
        self.progress(0.5, "\ud800" if message is None else message, force=True)
        return 1

    @app.task(shared=False, name="t.plain_add")
    def plain_add(x: int, y: int) -> int:
        return x + y

    return app, core4


if os.environ.get("CORE4CELERY_MONGODB_URL"):
    app, core4 = build(os.environ["CORE4CELERY_MONGODB_URL"])
