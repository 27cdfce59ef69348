"""pytest fixtures for users' core4 jobs, registered as the pytest plugin ``core4celery``.

Modelled on ``celery.contrib.pytest``; every name starts with ``core4_`` so it
clashes neither with Celery's fixtures nor with a project's own. Nothing starts
until a test asks for a fixture that needs it:

- ``core4_server_url`` (session): a MongoDB-wire test server (SecantusDB, in memory, its own process),
  or the server named by ``CORE4CELERY_MONGODB_URL``;
- ``core4_database_url``: a fresh database on it for each test, dropped afterwards;
- ``core4_app``: a Celery app on that database with ``Core4(app)`` applied, current while the test runs,
  built from ``core4_config`` (settings) and ``core4_includes`` (modules whose ``shared_task`` jobs it gets);
- ``core4_worker``: a real ``celery worker`` (prefork) for the app module named by ``core4_app_module``,
  started on that database, registered before the test runs and killed after it;
  ``core4_worker_parameters`` sets ``concurrency`` (1), extra command-line ``arguments`` and ``env``.
"""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# pytest loads this module in every session of a project that has core4celery installed:
# Celery, pymongo and core4celery itself are imported only by the fixtures that need them
if TYPE_CHECKING:
    from celery import Celery

    from .worker import WorkerProcess


@pytest.fixture(scope="session")
def core4_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Override it to use a server of your own (return its URL)."""
    from ..devserver import TestServer

    server = TestServer(tmp_path_factory.mktemp("core4-server") / "server.log")
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def core4_database_url(core4_server_url: str) -> Iterator[str]:
    from pymongo import MongoClient

    from ..devserver import database_url

    name = f"core4_test_{uuid.uuid4().hex[:12]}"
    url = database_url(core4_server_url, name)
    yield url
    client: MongoClient[Any] = MongoClient(url)
    try:
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture(scope="session")
def core4_config() -> dict[str, Any]:
    """Celery and ``core4celery_*`` settings of ``core4_app``; override it."""
    return {}


@pytest.fixture(scope="session")
def core4_includes() -> Sequence[str]:
    """Modules imported for ``core4_app`` (their ``shared_task`` jobs are registered on it); override it."""
    return ()


@pytest.fixture(scope="session")
def core4_app_module() -> str | None:
    """The module ``celery -A`` loads for ``core4_worker``, e.g. ``"myproj.app"``; override it."""
    return None


@pytest.fixture(scope="session")
def core4_worker_parameters() -> dict[str, Any]:
    """``concurrency`` (default 1), ``arguments`` (extra ``celery worker`` options), ``env``; override it."""
    return {}


@pytest.fixture
def core4_app(core4_database_url: str, core4_config: dict[str, Any], core4_includes: Sequence[str]) -> Iterator[Celery]:
    from celery import Celery
    from celery.contrib.testing.app import setup_default_app

    from ..core import Core4

    for module in core4_includes:  # before the app: shared tasks then bind to it when Core4 finalizes it
        importlib.import_module(module)
    app = Celery("core4_test", set_as_current=False)
    app.conf.update({"broker_url": core4_database_url, "core4celery_mongodb_url": core4_database_url,
                     "worker_hijack_root_logger": False, **core4_config})
    core4 = Core4(app)
    with setup_default_app(app):
        app.set_current()
        app.set_default()
        try:
            yield app
        finally:
            core4.close()


@pytest.fixture
def core4_worker(core4_app: Celery, core4_database_url: str, core4_app_module: str | None,
                 core4_worker_parameters: dict[str, Any], request: pytest.FixtureRequest,
                 tmp_path: Path) -> Iterator[WorkerProcess]:
    from .worker import WorkerProcess

    if not core4_app_module:
        raise pytest.UsageError('core4_worker needs the module of your app: define a fixture '
                                '`core4_app_module` returning its name, e.g. "myproj.app"')
    parameters = dict(core4_worker_parameters)
    worker = WorkerProcess(
        core4_app_module, core4_database_url, f"core4-test-{uuid.uuid4().hex[:8]}",
        concurrency=int(parameters.get("concurrency", 1)), log_path=tmp_path / "core4-worker.log",
        extra=parameters.get("arguments", ()), env=parameters.get("env"), cwd=request.config.rootpath,
        pythonpath=[path for path in sys.path if path and os.path.isdir(path)],
    )
    worker.start()
    try:
        worker.wait_registered(core4_app.core4celery)
        yield worker
    finally:
        worker.kill9()  # the test is over and its database is dropped next: no warm shutdown to wait for
        worker.stop()
