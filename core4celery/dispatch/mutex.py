"""A lease-based mutex with a lossless "run again" request.

Only one dispatcher pass runs at a time across the cluster, which keeps the
capacity arithmetic exact. A caller that finds the mutex taken leaves a
request behind instead of waiting; the holder sees it when it releases and
runs once more, so no wake-up is lost and nobody blocks.
"""

from __future__ import annotations

import time
from typing import Any

from bson import ObjectId
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from ..clock import EPOCH, later, now
from ..store.connection import Connection


class Mutex:
    def __init__(self, connection: Connection, name: str, lease: float) -> None:
        self._connection = connection
        self._name = name
        self._lease = lease
        self._created = False

    @property
    def _control(self) -> Collection[dict[str, Any]]:
        return self._connection.control

    def _ensure(self) -> None:
        if self._created:
            return
        try:
            self._control.update_one(
                {"_id": self._name},
                {"$setOnInsert": {"until": EPOCH, "owner": None, "again": False}},
                upsert=True,
            )
        except DuplicateKeyError:
            pass
        self._created = True

    def acquire(self) -> ObjectId | None:
        """Take the mutex, or ask the holder to run again; None means the holder will."""
        self._ensure()
        token = ObjectId()
        if self._take(token):
            return token
        self._control.update_one({"_id": self._name}, {"$set": {"again": True}})
        # the holder may have released between our two updates: try once more
        return token if self._take(token) else None

    def _take(self, token: ObjectId) -> bool:
        result = self._control.update_one(
            {"_id": self._name, "until": {"$lt": now()}},
            {"$set": {"until": later(self._lease), "owner": token, "again": False}},
        )
        return result.matched_count == 1

    def release(self, token: ObjectId) -> bool:
        """True when released; False means someone asked to run again (and the flag is cleared)."""
        freed = self._control.update_one(
            {"_id": self._name, "owner": token, "again": False},
            {"$set": {"until": EPOCH, "owner": None}},
        )
        if freed.matched_count:
            return True
        again = self._control.update_one(
            {"_id": self._name, "owner": token}, {"$set": {"again": False, "until": later(self._lease)}}
        )
        return again.matched_count == 0  # lease lost to someone else: nothing more to do

    def wait_free(self, poll: float = 0.01) -> bool:
        """Until nobody holds the mutex (or the holder's lease ran out); False if that took a whole lease."""
        deadline = time.monotonic() + self._lease
        while self._control.count_documents({"_id": self._name, "until": {"$gte": now()}}, limit=1):
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)
        return True

    def force_release(self, token: ObjectId) -> None:
        self._control.update_one({"_id": self._name, "owner": token}, {"$set": {"until": EPOCH, "owner": None}})
