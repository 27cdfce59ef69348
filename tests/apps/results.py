"""An app with no result backend of its own, as in Celery's first-steps guide.

``Core4(app)`` makes the registry its result backend. The URL comes from
``CORE4CELERY_MONGODB_URL`` (broker and registry); tests call :func:`build`.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from core4celery import Core4, Core4Task


class QuotaExceeded(Exception):
    """A task's own exception type: get() raises it, rebuilt from its JSON form."""


def build(url: str) -> tuple[Celery, Core4]:
    app = Celery("results", broker=url)
    app.conf.core4celery_heartbeat_interval = 0.5
    app.conf.core4celery_worker_timeout = 6.0
    app.conf.worker_hijack_root_logger = False
    # `celery -A tests.apps.results beat`: ticks every second, each job runs longer than that
    app.conf.beat_schedule = {"slow-every-second": {"task": "r.slow", "schedule": 1.0, "args": (2.5,)}}
    core4 = Core4(app)
    define_results(app)
    define_retries(app)
    return app, core4


def define_results(app: Celery) -> None:
    @app.task(base=Core4Task, bind=True, shared=False, name="r.square", author="test")
    def square(self: Core4Task, n: int) -> int:
        return n * n

    @app.task(base=Core4Task, bind=True, shared=False, name="r.value_error", author="test")
    def value_error(self: Core4Task, n: int) -> int:
        raise ValueError("bad value", n)

    @app.task(base=Core4Task, bind=True, shared=False, name="r.quota", author="test")
    def quota(self: Core4Task) -> None:
        raise QuotaExceeded("over quota")

    @app.task(base=Core4Task, bind=True, shared=False, name="r.slow", author="test")
    def slow(self: Core4Task, seconds: float, celery_style: bool = False) -> str:
        if celery_style:
            self.update_state(state="PROGRESS", meta={"current": 2, "total": 5, "message": "two of five"})
        else:
            self.progress(0.4, "two of five", force=True)
        time.sleep(seconds)
        return "done"

    @app.task(base=Core4Task, bind=True, shared=False, name="r.too_long", author="test", time_limit=1)
    def too_long(self: Core4Task, seconds: float) -> str:
        time.sleep(seconds)
        return "finished"

    @app.task(shared=False, name="r.plain")
    def plain(n: int) -> int:
        return n + 1


def define_retries(app: Celery) -> None:
    @app.task(base=Core4Task, bind=True, shared=False, name="r.fails_once", author="test", attempts=2,
              error_time=0.2)
    def fails_once(self: Core4Task) -> int:
        if self.trial == 1:
            raise RuntimeError("first trial fails")
        return self.trial

    @app.task(base=Core4Task, bind=True, shared=False, name="r.retry_call", author="test", attempts=3)
    def retry_call(self: Core4Task, fail_trials: int) -> int:
        if self.trial <= fail_trials:
            raise self.retry(exc=KeyError(f"trial {self.trial}"), countdown=0.3)
        return self.trial

    @app.task(base=Core4Task, bind=True, shared=False, name="r.autoretry", author="test",
              autoretry_for=(ValueError,), retry_kwargs={"max_retries": 2}, default_retry_delay=0.2)
    def autoretry(self: Core4Task, fail_trials: int) -> int:
        if self.trial <= fail_trials:
            raise ValueError(f"trial {self.trial}")
        return self.trial


if os.environ.get("CORE4CELERY_MONGODB_URL"):
    app, core4 = build(os.environ["CORE4CELERY_MONGODB_URL"])
