"""A real ``celery worker`` in a subprocess, for tests of core4 jobs (prefork, as in production).

The worker loads the user's app module with the test database in its
environment (``CORE4CELERY_MONGODB_URL`` for the registry, ``CELERY_BROKER_URL``
for the broker; both win over what the module configures), so a module that
builds its app the ordinary way serves any test database unchanged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..devserver import ENV_URL

if TYPE_CHECKING:
    from ..core import Core4


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
    """``python -m celery -A <app> worker`` against one test database; ``start``, ``wait_registered``, ``stop``."""

    def __init__(self, app: str, url: str, name: str, concurrency: int = 1, log_path: Path | None = None,
                 extra: Iterable[str] = (), env: dict[str, str] | None = None, cwd: Path | str | None = None,
                 pythonpath: Iterable[Path | str] = (), set_broker: bool = True) -> None:
        """``set_broker``: the test database is the broker too (``CELERY_BROKER_URL``), whatever the module says."""
        self.app = app
        self.url = url
        self.name = name
        self.concurrency = concurrency
        self.log_path = log_path or Path("/tmp") / f"worker-{name}.log"
        self.extra = tuple(extra)
        self.env = env or {}
        self.cwd = cwd
        self.pythonpath = [str(path) for path in pythonpath]
        self.set_broker = set_broker
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: IO[bytes] | None = None

    def start(self) -> WorkerProcess:
        path = os.pathsep.join([*self.pythonpath, os.environ.get("PYTHONPATH", "")])
        env = {**os.environ, ENV_URL: self.url, "PYTHONPATH": path, **self.env}
        if self.set_broker:
            env["CELERY_BROKER_URL"] = self.url
        cmd = [sys.executable, "-m", "celery", "-A", self.app, "worker", "-n", f"{self.name}@%h",
               "-c", str(self.concurrency), "-P", "prefork", "-l", "info", "--without-gossip", "--without-mingle",
               "--without-heartbeat", *self.extra]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "wb")  # closed by stop()
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                     start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the worker was not started"
        return self.proc.pid

    def wait_registered(self, core4: Core4, timeout: float = 60.0) -> None:
        """Until the worker's heartbeat is in the registry (it takes jobs from then on); its log if it died."""
        def registered() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} ({self.app}) exited with {self.proc.returncode}:\n"
                                   f"{self.output()[-4000:]}")
            return core4.connection.workers.find_one({"pid": self.pid}) is not None

        wait_for(registered, timeout, interval=0.1, what=f"worker {self.name} to register")

    def kill9(self) -> None:
        """Kill the whole worker (main process and pool) with SIGKILL, as a node loss would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown (running jobs finish), SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self.log is not None:
            self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
