"""What every benchmark needs: its own server, real worker processes, results on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from core4celery.clock import EPOCH
from core4celery.devserver import TestServer
from core4celery.dispatch.dispatcher import MUTEX

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("CORE4CELERY_BENCH_RESULTS") or REPO / "bench" / "results")
CONF_ENV = "CORE4CELERY_BENCH_CONF"


class BenchFailed(Exception):
    """A correctness check inside a benchmark failed: the script exits non-zero."""


class Bench:
    """A fresh database (on an embedded SecantusDB unless CORE4CELERY_MONGODB_URL is set) and workers."""

    def __init__(self, name: str, conf: dict[str, Any] | None = None, app: str = "bench.apps") -> None:
        self.name = name
        self.app = app
        self._saved_url = os.environ.get("CORE4CELERY_MONGODB_URL")
        self.server = TestServer()
        self.url = self.server.start_database(f"bench_{name}")
        os.environ["CORE4CELERY_MONGODB_URL"] = self.url
        os.environ[CONF_ENV] = json.dumps(conf or {})
        self.workers: list[subprocess.Popen[bytes]] = []

    @property
    def server_label(self) -> str:
        return "external MongoDB" if self.server.external else "SecantusDB 0.7.0b3 (embedded)"

    def worker(self, concurrency: int = 2, name: str | None = None, events: bool = False,
               app: str | None = None) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}  # no root-user warning banner
        cmd = [sys.executable, "-m", "celery", "-q", "-A", app or self.app, "worker", "-c", str(concurrency),
               "-l", "warning", "-n", f"{name or f'w{len(self.workers) + 1}'}@%h", "--without-gossip", "--without-mingle",
               "--without-heartbeat", *(["-E"] if events else [])]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True)
        self.workers.append(proc)
        return proc

    def wait_workers(self, registry: Any, count: int, timeout: float = 90) -> None:
        """Until ``count`` of the workers this bench started (by pid) are registered."""
        query = {"pid": {"$in": [p.pid for p in self.workers if p.poll() is None]}, "concurrency": {"$gt": 0}}
        wait_until(lambda: registry.workers.count_documents(query) >= count, timeout, f"{count} workers", 0.1)

    def stop_workers(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        self.workers.clear()

    def __enter__(self) -> Bench:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop_workers()
        self.server.stop()
        if self._saved_url is None:
            os.environ.pop("CORE4CELERY_MONGODB_URL", None)
        else:
            os.environ["CORE4CELERY_MONGODB_URL"] = self._saved_url


def forget_workers(core4: Any) -> None:
    """After SIGKILLing workers: drop their registrations and free the dispatch mutex they may hold
    (for up to dispatch_lease), so the next configuration starts from a clean slate."""
    core4.connection.workers.delete_many({})
    core4.connection.control.update_many({"_id": MUTEX}, {"$set": {"until": EPOCH, "owner": None}})


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise BenchFailed(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return value


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def save(name: str, report: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    return path


def run(main: Any) -> None:
    """Exit 1 with the failed check's message; everything else is a crash with a traceback."""
    try:
        sys.exit(main())
    except BenchFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)


def plot(name: str, draw: Any, title: str) -> Path:
    """Draw one figure with matplotlib's file backend and save it next to the JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    draw(ax)
    ax.set_title(title)
    fig.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def wait_drained(core4: Any, timeout: float = 30) -> None:
    """Every core4 job journaled: none lost, none stuck."""
    try:
        wait_until(lambda: core4.connection.jobs.count_documents({}) == 0, timeout, "every job to be journaled", 0.05)
    except BenchFailed:
        left = core4.connection.jobs.count_documents({})
        raise BenchFailed(f"{left} core4 jobs still live after the run") from None
