from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from core4celery.devserver import TestServer

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def mongo_base() -> Iterator[str]:
    ARTIFACTS.mkdir(exist_ok=True)
    server = TestServer(ARTIFACTS / "mongo-server.log", test_commands=True)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(scope="session")
def core4_server_url(mongo_base: str) -> str:
    """The core4celery.testing fixtures (the pytest plugin of this package) use the suite's server."""
    return mongo_base


@pytest.fixture
def db_url(core4_database_url: str) -> str:
    """A fresh database on the suite's server for each test, dropped afterwards (the plugin's fixture)."""
    return core4_database_url
