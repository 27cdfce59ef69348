"""Real ``celery worker`` processes for integration tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll until the predicate returns something truthy; fail with a message on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


class WorkerProcess:
    def __init__(self, url: str, name: str, concurrency: int = 2, app: str = "tests.apps.jobs",
                 log_dir: Path | None = None, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.url = url
        self.env = env or {}
        self.name = name
        self.concurrency = concurrency
        self.app = app
        self.log_path = (log_dir or Path("/tmp")) / f"worker-{name}.log"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {**os.environ, "CORE4CELERY_MONGODB_URL": self.url,
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **self.env}
        cmd = [sys.executable, "-m", "celery", "-A", self.app, "worker", "-n", f"{self.name}@%h",
               "-c", str(self.concurrency), "-l", "info", "--without-gossip", "--without-mingle",
               "--without-heartbeat", *self.extra]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO,
                                     start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill9(self) -> None:
        """Kill the whole worker (main process and pool) with SIGKILL, as a node loss would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")
