from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from core4celery.devserver import TestServer, database_url

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def mongo_base() -> Iterator[str]:
    ARTIFACTS.mkdir(exist_ok=True)
    server = TestServer(ARTIFACTS / "mongo-server.log", test_commands=True)
    url = server.start()
    yield url
    server.stop()


@pytest.fixture
def db_url(mongo_base: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = database_url(mongo_base, name)
    yield url
    client: MongoClient[Any] = MongoClient(url)
    client.drop_database(name)
    client.close()
