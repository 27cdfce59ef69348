from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.apps.jobs import build, trace_collection
from tests.conftest import ARTIFACTS
from tests.workers import WorkerProcess, wait_for


class Cluster:
    def __init__(self, url: str, test_name: str) -> None:
        self.url = url
        self.app, self.core4 = build(url)
        self.workers: list[WorkerProcess] = []
        self.test_name = test_name
        self.trace = trace_collection(url)

    def worker(self, name: str = "w1", concurrency: int = 2, wait: bool = True,
               extra: tuple[str, ...] = (), app_name: str | None = None,
               env: dict[str, str] | None = None) -> WorkerProcess:
        """``app_name`` tags every MongoDB command of that worker, so a fail point can target it alone."""
        log_dir = ARTIFACTS / "workers"
        log_dir.mkdir(parents=True, exist_ok=True)
        url = f"{self.url}&appName={app_name}" if app_name else self.url
        proc = WorkerProcess(url, f"{self.test_name}-{name}", concurrency, log_dir=log_dir, extra=extra,
                             env=env).start()
        self.workers.append(proc)
        if wait:
            self.wait_registered(proc)
        return proc

    def wait_registered(self, proc: WorkerProcess, timeout: float = 60) -> None:
        workers = self.core4.connection.workers
        wait_for(lambda: workers.find_one({"pid": proc.pid}), timeout, what=f"worker {proc.name} to register")

    def wait_state(self, job_id: str, *states: str, timeout: float = 60) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            doc = self.core4.get(job_id)
            return doc if doc["state"] in states else None
        return wait_for(check, timeout, what=f"job {job_id} to reach {states}")  # type: ignore[no-any-return]

    def wait_journaled(self, job_id: str, timeout: float = 30) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            doc = self.core4.get(job_id)
            return doc if doc.get("journaled") else None
        return wait_for(check, timeout, what=f"job {job_id} to be journaled")  # type: ignore[no-any-return]

    def stop(self) -> None:
        """Teardown needs no graceful shutdown (the database is dropped next); SIGKILL is instant."""
        for proc in self.workers:
            proc.kill9()
            proc.stop()
        # the test process's own clients: left open, a full suite holds the test server's 1,000 connections
        self.trace.database.client.close()
        self.core4.close()
        self.app.close()


@pytest.fixture
def cluster(db_url: str, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    name = request.node.name.replace("[", "-").replace("]", "")[:40]
    c = Cluster(db_url, name)
    yield c
    c.stop()
