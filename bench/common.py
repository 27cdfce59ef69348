"""What every benchmark needs: its own server, real worker processes, results on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import TracebackType
from typing import Any

from core4celery.devserver import TestServer

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("CORE4CELERY_BENCH_RESULTS") or REPO / "bench" / "results")
CONF_ENV = "CORE4CELERY_BENCH_CONF"
_traces: dict[tuple[int, str], Any] = {}


def trace_collection(url: str) -> Any:
    """The ``bench_trace`` collection of ``url``'s database, where jobs record their start and finish;
    one client per process (pool children must not share their parent's)."""
    from pymongo import MongoClient

    key = (os.getpid(), url)
    if key not in _traces:
        _traces[key] = MongoClient(url).get_default_database()["bench_trace"]
    return _traces[key]


def count_commands() -> Path:
    """Turn on command counting in this process and in every worker started after this call."""
    from core4celery.metrics import ENV, install_from_env

    directory = Path(tempfile.mkdtemp(prefix="core4celery-commands-"))
    os.environ[ENV] = str(directory)
    install_from_env()
    return directory


def counted(directory: Path) -> Counter[str]:
    """Every process's counts once their flush threads have written what they sent so far."""
    from core4celery.metrics import FLUSH_INTERVAL, read_counts

    time.sleep(3 * FLUSH_INTERVAL)  # each process rewrites its file every FLUSH_INTERVAL
    return read_counts(directory)


def wait_per_job(before: Counter[str], after: Counter[str], jobs: int, detail: bool = False) -> dict[str, float]:
    """Milliseconds per job spent waiting for server replies, by code path (all processes summed).

    ``detail``: by path and command name instead.
    """
    from core4celery.metrics import TIME_PREFIX

    paths: Counter[str] = Counter()
    for key, micros in (after - before).items():
        if key.startswith(TIME_PREFIX):
            path = key[len(TIME_PREFIX):]
            paths[path if detail else path.split("/", 1)[0]] += micros
    return {path: round(n / 1000 / jobs, 2) for path, n in sorted(paths.items())}


def per_job(before: Counter[str], after: Counter[str], jobs: int, detail: bool = False) -> dict[str, float]:
    """Commands per job by code path (the part before the slash), plus the total.

    ``detail``: by path and command name (``dispatch/update``) instead.
    """
    from core4celery.metrics import TIME_PREFIX

    paths: Counter[str] = Counter()
    for key, n in (after - before).items():
        if not key.startswith(TIME_PREFIX):
            paths[key if detail else key.split("/", 1)[0]] += n
    result = {path: n / jobs for path, n in sorted(paths.items())}
    result["total"] = sum(paths.values()) / jobs
    return result


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

    def stop_worker(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        self.workers.remove(proc)

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
    """After SIGKILLing workers: drop their registrations and their idle slots, so the next
    configuration starts from a clean slate."""
    core4.nodes.forget_all()
    core4.dispatcher.reconcile()


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
