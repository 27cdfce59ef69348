"""Real ``celery worker`` processes for integration tests: the library's, with this repository's defaults."""

from __future__ import annotations

from pathlib import Path

from core4celery.testing import WorkerProcess as LibraryWorker
from core4celery.testing import wait_for

REPO = Path(__file__).resolve().parent.parent

__all__ = ["REPO", "WorkerProcess", "wait_for"]


class WorkerProcess(LibraryWorker):
    def __init__(self, url: str, name: str, concurrency: int = 2, app: str = "tests.apps.jobs",
                 log_dir: Path | None = None, extra: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        super().__init__(app, url, name, concurrency, log_path=(log_dir or Path("/tmp")) / f"worker-{name}.log",
                         extra=extra, env=env, cwd=REPO, pythonpath=[REPO], set_broker=False)
