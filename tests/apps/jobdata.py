"""Jobs that log, print and keep a cookie, for tests/integration/test_job_data.py."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.utils.log import get_task_logger

from core4celery import Core4, Core4Task
from tests.apps.jobs import fast_app, per_process_trace

module_log = logging.getLogger(__name__)
task_log = get_task_logger(__name__ + ".tasks")
helper_log = logging.getLogger("jdhelper")  # a logger that is not the job's own: stored at its level


def build(url: str) -> tuple[Celery, Core4]:
    app, core4 = fast_app("jobdata", url)
    define_talkers(app)
    define_stateful(app, per_process_trace(url))
    return app, core4


def define_talkers(app: Celery) -> None:
    """Jobs that log and print."""

    @app.task(base=Core4Task, bind=True, shared=False, name="jd.chatty", author="test")
    def chatty(self: Core4Task, records: int = 0) -> str:
        self.logger.debug("debug detail of a good run")
        self.logger.info("info from self.logger")
        module_log.warning("warning from the module logger")
        task_log.info("info from a task logger")
        helper_log.warning("warning from a helper")
        logging.getLogger("core4celery.fake").warning("not the job's")
        for n in range(records):
            self.logger.info("record %d", n)
        print("printed line")
        print("to stderr", file=sys.stderr)
        return "ok"

    @app.task(base=Core4Task, bind=True, shared=False, name="jd.fails", author="test", attempts=1)
    def fails(self: Core4Task) -> None:
        self.logger.debug("debug before the failure")
        self.logger.info("about to fail")
        print("partial output")
        try:
            raise KeyError("missing")
        except KeyError:
            self.logger.exception("caught once")
        raise RuntimeError("boom")

    @app.task(base=Core4Task, bind=True, shared=False, name="jd.flaky", author="test", attempts=3, error_time=0.1,
              defer_time=0.1)
    def flaky(self: Core4Task) -> int:
        """Fails its first run, defers its second, completes its third: one trail per run."""
        self.logger.debug("debug of trial %d", self.trial)
        self.logger.info("info of trial %d", self.trial)
        print(f"output of trial {self.trial}")
        if self.trial == 1:
            raise ValueError("first run fails")
        if self.trial == 2:
            self.defer("second run defers")
        return self.trial



def define_stateful(app: Celery, trace: Callable[[], Any]) -> None:
    """Jobs that keep a cookie or wait for the test."""

    @app.task(base=Core4Task, bind=True, shared=False, name="jd.counter", author="test")
    def counter(self: Core4Task, n: int) -> dict[str, Any]:
        seen = self.cookie.get("last_runtime")
        runs = self.cookie.inc("runs")
        self.cookie.set("last_n", n)
        return {"runs": runs, "seen_last_runtime": None if seen is None else seen.isoformat()}

    @app.task(base=Core4Task, bind=True, shared=False, name="jd.slow", author="test")
    def slow(self: Core4Task, tag: str) -> str:
        """Logs a tick every 0.2 s until the test writes its release (at most 60 s)."""
        deadline = time.monotonic() + 60
        n = 0
        while time.monotonic() < deadline and trace().find_one({"release": tag}) is None:
            self.logger.info("tick %d", n)
            n += 1
            time.sleep(0.2)
        self.logger.info("slow job done")
        return tag


if os.environ.get("CORE4CELERY_MONGODB_URL"):
    app, core4 = build(os.environ["CORE4CELERY_MONGODB_URL"])
