"""core4 tasks for the chaos run, built per database URL.

Workers load it with ``-A tests.chaos.app`` (URL from ``CORE4CELERY_MONGODB_URL``); the chaos
script calls :func:`build` with the same URL to get an app whose task names match.

Every job body records its run in the side collection ``chaos_runs``: one document when the
body starts and its finish time when the body ends (also when it defers or raises). The chaos
script reads these to check ``max_parallel`` and that no two runs of one job overlapped. The
server is killed during the run, so every record write retries for a while and then gives up
without failing the job: the records are evidence, not part of the job's outcome.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bson import ObjectId
from celery import Celery
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from core4celery import Core4, Core4Task

log = logging.getLogger("chaos.app")

RUNS = "chaos_runs"
# a failing record write is retried this long, then dropped (the job goes on)
RECORD_RETRY_FOR = 60.0

FAST = {
    "core4celery_heartbeat_interval": 0.5,
    "core4celery_worker_timeout": 6.0,
    "core4celery_ticket_lease": 4.0,
    "core4celery_run_lease": 4.0,
    "core4celery_dispatch_interval": 0.1,
}

GATED_MAX_PARALLEL = 3
CHILD_TASKS = ("chaos.quick", "chaos.gated")
# Dispatch is strict (priority, then FIFO by id) and a deferred mother keeps her place, so mothers due
# again every second would be started ahead of their own, younger children and, once there are more
# waiting mothers than slots, starve them (measured: 300 jobs, children never ran). Children go first.
CHILD_PRIORITY = 1


class RunRecorder:
    """Writes run records with one client per process (pool children must not share the parent's)."""

    def __init__(self, url: str, retry_for: float = RECORD_RETRY_FOR) -> None:
        self.url = url
        self.retry_for = retry_for
        self._clients: dict[int, MongoClient[Any]] = {}

    def collection(self) -> Collection[Any]:
        pid = os.getpid()
        client = self._clients.get(pid)
        if client is None:
            # short timeouts so the retry loop below, not the driver, decides how long to wait
            client = MongoClient(self.url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000,
                                 socketTimeoutMS=10000)
            self._clients[pid] = client
        return client.get_default_database()[RUNS]

    def _retrying(self, what: str, write: Any) -> bool:
        deadline = time.monotonic() + self.retry_for
        pause = 0.1
        while True:
            try:
                write(self.collection())
                return True
            except DuplicateKeyError:
                return True  # an earlier attempt landed although its reply was lost
            except PyMongoError as exc:
                if time.monotonic() >= deadline:
                    log.warning("chaos: giving up on %s after %.0f s: %r", what, self.retry_for, exc)
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    @contextmanager
    def run(self, task: Core4Task) -> Iterator[None]:
        """Record the body's start, and its finish however it ends."""
        record_id = ObjectId()
        doc = {
            "_id": record_id, "job": task.job_id, "name": task.name, "trial": task.trial, "pid": os.getpid(),
            "worker": task.request.hostname, "start": time.time(),
        }
        self._retrying(f"start record of {task.job_id}", lambda coll: coll.insert_one(doc))
        outcome = "raised"
        try:
            yield
            outcome = "returned"
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            finish = time.time()
            self._retrying(
                f"finish record of {task.job_id}",
                lambda coll: coll.update_one({"_id": record_id}, {"$set": {"finish": finish, "outcome": outcome}}),
            )


def build(url: str) -> tuple[Celery, Core4]:
    app = Celery("chaos", broker=url, backend=url)
    app.conf.update(FAST)
    app.conf.broker_transport_options = {"ttl": True, "polling_interval": 0.05}
    app.conf.worker_hijack_root_logger = False
    core4 = Core4(app)
    recorder = RunRecorder(url)

    @app.task(base=Core4Task, bind=True, shared=False, name="chaos.quick", author="chaos")
    def quick(self: Core4Task, tag: str) -> str:
        with recorder.run(self):
            time.sleep(random.uniform(0.0, 0.05))
            return tag

    @app.task(base=Core4Task, bind=True, shared=False, name="chaos.gated", author="chaos",
              max_parallel=GATED_MAX_PARALLEL)
    def gated(self: Core4Task, tag: str) -> str:
        with recorder.run(self):
            time.sleep(random.uniform(0.2, 0.5))
            return tag

    @app.task(base=Core4Task, bind=True, shared=False, name="chaos.deferring", author="chaos", defer_time=1)
    def deferring(self: Core4Task, tag: str, times: int) -> int:
        with recorder.run(self):
            if self.trial <= times:
                self.defer("not yet, trial %d of %d", self.trial, times)
            return self.trial

    @app.task(base=Core4Task, bind=True, shared=False, name="chaos.flaky", author="chaos", attempts=3,
              error_time=1)
    def flaky(self: Core4Task, tag: str) -> int:
        with recorder.run(self):
            if self.trial == 1:
                raise RuntimeError(f"chaos: planned failure of {tag} in trial 1")
            return self.trial

    class Mother(Core4Task):
        name = "chaos.mother"
        author = "chaos"
        defer_time = 1

        def execute(self, tag: str, children: int) -> int:  # type: ignore[override]
            with recorder.run(self):
                if self.trial == 1:
                    for i in range(children):
                        self.enqueue(CHILD_TASKS[i % len(CHILD_TASKS)], tag=f"{tag}.{i}", priority=CHILD_PRIORITY)
                    self.defer("launched %d children", children)
                live = len(self.children())
                if live:
                    self.defer("waiting for %d of %d children", live, children)
                return children

    app.register_task(Mother())
    return app, core4


if os.environ.get("CORE4CELERY_MONGODB_URL"):
    app, core4 = build(os.environ["CORE4CELERY_MONGODB_URL"])
