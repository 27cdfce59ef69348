"""Preparation of kombu's MongoDB broker collections.

kombu creates its capped ``messages.broadcast`` collection with a
check-then-create, so two processes connecting at the same moment can crash
one of them with "collection already exists". Creating it up front in every
process, tolerating the race, closes that window. The wake-up collection
idle workers wait on (:mod:`core4celery.wakeups`) is created here too.
"""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient
from pymongo.errors import CollectionInvalid, OperationFailure

from .wakeups import broker_database, prepare_wakeups

KOMBU_CAPPED_SIZE = 100_000


def prepare_broker(broker_url: str, transport_options: dict[str, Any]) -> None:
    if not broker_url.startswith(("mongodb://", "mongodb+srv://")):
        return
    database = broker_database(broker_url)
    name = transport_options.get("broadcast_collection", "messages.broadcast")
    size = int(transport_options.get("capped_queue_size", KOMBU_CAPPED_SIZE))
    client: MongoClient[dict[str, Any]] = MongoClient(broker_url, serverSelectionTimeoutMS=5000)
    try:
        db = client[database]
        if name not in db.list_collection_names():
            try:
                db.create_collection(name, capped=True, size=size)
            except (CollectionInvalid, OperationFailure):
                pass  # another process won the race: exactly what we wanted
        prepare_wakeups(db)
    finally:
        client.close()
