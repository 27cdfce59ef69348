"""Wake-ups: a small capped collection in the broker's database that idle workers wait on.

A worker's consumer that has had no message for ``IDLE_AFTER`` seconds stops
polling its queues every ``polling_interval`` and instead blocks on a
tailable await cursor of this collection (one server command per
``idle_wait``, see :mod:`core4celery.transport`). Whoever publishes a ticket
that may be for such a sleeping consumer rings: one insert, and every
sleeping worker polls its queues at once. A lost ring costs latency only:
the sleeper polls anyway after ``idle_wait``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import CollectionInvalid, OperationFailure, PyMongoError
from pymongo.uri_parser import parse_uri

from .process import PerProcess

log = logging.getLogger(__name__)

WAKEUPS = "messages.wakeups"
# A ring only has to be newer than a sleeper's cursor, so a few are plenty; and a capped
# insert costs in proportion to the documents kept on SecantusDB (5 ms at 1,000, 33 ms at 4,000).
CAPPED_SIZE = 1 << 16
CAPPED_MAX = 16
RING_MARGIN = 0.1  # seconds
KOMBU_DEFAULT_DATABASE = "kombu_default"


def ring_of(queue: str) -> dict[str, Any]:
    """A ring names what to poll (a queue or a broadcast exchange) and when it was rung (wall clock, as
    leases: a waiter skips rings older than its last poll, within ``RING_MARGIN`` of clock skew)."""
    return {"q": queue, "t": time.time()}


def broker_database(broker_url: str) -> str:
    return parse_uri(broker_url).get("database") or KOMBU_DEFAULT_DATABASE


def prepare_wakeups(db: Database[Any]) -> None:
    """The capped collection, never empty (a tailable cursor on an empty collection dies at once)."""
    if WAKEUPS not in db.list_collection_names():
        try:
            db.create_collection(WAKEUPS, capped=True, size=CAPPED_SIZE, max=CAPPED_MAX)
        except (CollectionInvalid, OperationFailure):
            pass  # created by another process meanwhile
    if db[WAKEUPS].find_one({}, {"_id": 1}) is None:
        db[WAKEUPS].insert_one({"q": None})


class Wakeups:
    def __init__(self, broker_url: str) -> None:
        self._url = broker_url
        self._database = broker_database(broker_url)
        self._client: PerProcess[MongoClient[dict[str, Any]]] = PerProcess(
            lambda: MongoClient(broker_url, serverSelectionTimeoutMS=2000)
        )

    def close(self) -> None:
        self._client.close_with(MongoClient.close)

    def ring(self, queue: str) -> None:
        """Best effort: a failed ring is logged, the ticket is picked up at the sleeper's next poll."""
        try:
            self._client.get()[self._database][WAKEUPS].insert_one(ring_of(queue))
        except PyMongoError as exc:
            log.debug("core4celery: could not ring the wake-up for queue %r: %s", queue, type(exc).__name__)
