"""Saved Celery groups: ``GroupResult.save()`` and ``GroupResult.restore(id)`` for core4 jobs.

A group is only a name for a list of job ids (its members are ordinary
jobs), so this collection holds nothing the jobs do not.
"""

from __future__ import annotations

from ..clock import now
from .connection import Connection


class Groups:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def save(self, group_id: str, member_ids: list[str]) -> None:
        groups = self._connection.groups
        self._connection.outage.run(
            lambda: groups.replace_one({"_id": group_id}, {"members": member_ids, "at": now()}, upsert=True),
            f"save group {group_id}")

    def restore(self, group_id: str) -> list[str] | None:
        doc = self._connection.groups.find_one({"_id": group_id})
        return None if doc is None else [str(member) for member in doc["members"]]

    def forget(self, group_id: str) -> None:
        groups = self._connection.groups
        self._connection.outage.run(lambda: groups.delete_one({"_id": group_id}), f"forget group {group_id}")
