"""Celery's canvas examples (the docs' add/mul/xsum) on core4 tasks; tests call :func:`build`.

The URL comes from ``CORE4CELERY_MONGODB_URL`` (broker and registry).
"""

from __future__ import annotations

import os
import time

from celery import Celery

from core4celery import Core4, Core4Task


def build(url: str) -> tuple[Celery, Core4]:
    app = Celery("canvas", broker=url)
    app.conf.core4celery_heartbeat_interval = 0.5
    app.conf.core4celery_worker_timeout = 6.0
    app.conf.worker_hijack_root_logger = False
    core4 = Core4(app)
    define_canvas(app)
    return app, core4


def define_canvas(app: Celery) -> None:
    @app.task(base=Core4Task, shared=False, name="c.add", author="test")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(base=Core4Task, shared=False, name="c.mul", author="test")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(base=Core4Task, shared=False, name="c.xsum", author="test")
    def xsum(numbers: list[int]) -> int:
        return sum(numbers)

    @app.task(base=Core4Task, shared=False, name="c.fail", author="test")
    def fail(x: int) -> int:
        raise ValueError("no good", x)

    @app.task(base=Core4Task, shared=False, name="c.slow", author="test", max_parallel=2)
    def slow(x: int, seconds: float) -> int:
        time.sleep(seconds)
        return x

    @app.task(base=Core4Task, shared=False, name="c.hello", author="test")
    def hello() -> str:
        return "hello"


if os.environ.get("CORE4CELERY_MONGODB_URL"):
    app, core4 = build(os.environ["CORE4CELERY_MONGODB_URL"])
