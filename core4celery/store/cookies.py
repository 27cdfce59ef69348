"""Job cookies (core4's ``sys.cookie``): the only writer and reader of the cookies collection.

One small document per job *name* (``_id`` the name), its values under
``values``: what a scheduled incremental job keeps between runs (where it
stopped, counters). Every operation is one atomic single-document update
(``$set``/``$inc``/``$max``/``$min``/``$unset``, upserting), so two runs of the
same name never lose each other's increments. Values must be JSON (checked
before the write); keys are non-empty str without ``$``, ``.`` or NUL.
``last_runtime`` is written by the framework after each completion.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import OperationFailure

from ..config.numbers import check_number
from ..errors import InvalidArguments
from .connection import Connection
from .values import check_json

VALUES = "values"
LAST_RUNTIME = "last_runtime"


def check_key(key: Any, name: str) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidArguments(f"cookie of {name}: key {key!r} must be a non-empty str")
    if "$" in key or "." in key or "\x00" in key:
        raise InvalidArguments(f"cookie of {name}: key {key!r} may not contain '$', '.' or NUL")
    return key


class Cookie:
    """``self.cookie`` of a job: ``get``, ``set``, ``inc``, ``dec``, ``max``, ``min``, ``delete``, ``has_key``."""

    def __init__(self, store: CookieStore, name: str) -> None:
        self._store = store
        self.name = name

    def _path(self, key: Any) -> str:
        return f"{VALUES}.{check_key(key, self.name)}"

    def _value(self, key: str, value: Any) -> Any:
        check_json(value, f"cookie of {self.name}: value of {key!r}")
        return value

    def get(self, key: str, default: Any = None) -> Any:
        doc = self._store.collection.find_one({"_id": self.name}, {self._path(key): 1}) or {}
        return doc.get(VALUES, {}).get(key, default)

    def has_key(self, key: str) -> bool:
        return self._store.collection.count_documents({"_id": self.name, self._path(key): {"$exists": True}}) > 0

    __contains__ = has_key

    def set(self, *pair: Any, **values: Any) -> None:
        """``set(key, value)`` or ``set(key1=v1, key2=v2)``: one write for all of them."""
        if pair and len(pair) != 2:
            raise InvalidArguments(f"cookie of {self.name}: set() takes a key and a value, or key=value pairs")
        items = {pair[0]: pair[1], **values} if pair else values
        if not items:
            raise InvalidArguments(f"cookie of {self.name}: set() needs at least one key")
        update = {self._path(key): self._value(key, value) for key, value in items.items()}
        self._store.update(self.name, {"$set": update})

    def inc(self, key: str, by: float = 1) -> Any:
        """Add ``by`` atomically (a missing key counts from 0); returns the new value."""
        return self._number("$inc", key, by)

    def dec(self, key: str, by: float = 1) -> Any:
        check_number(f"cookie of {self.name}: dec() of {key!r} by", by, InvalidArguments)
        return self._number("$inc", key, -by)

    def max(self, key: str, value: Any) -> Any:
        """Keep the larger of the stored and the given value; returns the stored one."""
        return self._number("$max", key, value)

    def min(self, key: str, value: Any) -> Any:
        return self._number("$min", key, value)

    def _number(self, operator: str, key: str, value: Any) -> Any:
        path = self._path(key)
        check_number(f"cookie of {self.name}: {operator[1:]}() of {key!r} with", value, InvalidArguments)
        doc = self._store.update(self.name, {operator: {path: value}}, returned=path, what=f"{key!r}: ")
        return (doc or {}).get(VALUES, {}).get(key)

    def delete(self, key: str) -> bool:
        """Remove one key; False when it was not there."""
        path = self._path(key)
        result = self._store.collection.update_one({"_id": self.name, path: {"$exists": True}}, {"$unset": {path: ""}})
        return bool(result.modified_count)


class CookieStore:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    @property
    def collection(self) -> Any:
        return self._connection.cookies

    def cookie(self, name: str) -> Cookie:
        return Cookie(self, name)

    def update(self, name: str, update: dict[str, Any], returned: str | None = None, what: str = "") -> Any:
        """One atomic upserting update; ``returned``: the path to read back after it (a counter's new value)."""
        try:
            if returned is None:
                self.collection.update_one({"_id": name}, update, upsert=True)
                return None
            return self.collection.find_one_and_update({"_id": name}, update, {returned: 1}, upsert=True,
                                                       return_document=ReturnDocument.AFTER)
        except OperationFailure as exc:  # e.g. $inc of a key that holds a str
            raise InvalidArguments(f"cookie of {name}: {what}{(exc.details and exc.details.get('errmsg')) or exc}") from None

    def completed(self, name: str, finished_at: datetime) -> None:
        """core4 sets ``last_runtime`` (the completion time) after each completed run."""
        self.update(name, {"$set": {f"{VALUES}.{LAST_RUNTIME}": finished_at}})
