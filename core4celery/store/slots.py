"""Worker slots and ``max_parallel`` slots in one small document, taken and freed in one command.

``free.<queue>`` counts idle worker slots of the workers consuming that queue;
``holders.<name>`` lists the jobs (``{id, q, t}``: job id, queue, claim token) that hold
one of the task's ``max_parallel`` slots and a worker slot of their queue
(dispatched or running). A ticket exists only for a job that holds both,
and each move is one guarded update of this document:

* take: an idle slot of the queue and a slot of the name (enqueue, timer pass);
* transfer: a finishing job hands both straight to the next waiting job;
* give: a finished job returns both when nothing waits.

The holder list makes ``give`` and ``transfer`` idempotent (guarded by "still
holds"), so a repeated or raced command changes nothing the second time. The
document also carries the pause switch (a paused cluster takes nothing) and
the due generation (bumped whenever a job becomes due out of turn, so cached
candidate lists are refreshed). ``free`` is recomputed from the alive workers'
slots minus the holders of each queue by :meth:`Slots.reconcile`, from one
snapshot of the document and guarded by a version that every change of
``free`` bumps, so a reconcile never races a take or a give.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from .connection import Connection, Doc

SLOTS = "slots"


def field_key(name: str) -> str:
    """Task and queue names may hold dots (and could start with '$'): not as MongoDB field names."""
    return name.replace(".", "\u2024").replace("$", "\uff04")


def rank_key(rank: tuple[bool, int]) -> str:
    return f"{int(rank[0])}:{rank[1]}"


def rank_of_key(key: str) -> tuple[bool, int]:
    force, priority = key.split(":")
    return bool(int(force)), int(priority)


def projects_of(name: str) -> list[str]:
    """Every project a job name is under: ``a.b.job`` is under ``a`` and ``a.b`` (core4's project maintenance)."""
    parts = name.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def name_of(key: str) -> str:
    return key.replace("\u2024", ".").replace("\uff04", "$")


@dataclass(frozen=True)
class Holder:
    """A job as the slots document knows it.

    ``token`` names one claim of the job's slots (the job document and its
    ticket carry it): a late give, hand-over or repair of an earlier claim of
    the same job can never free the slots of a later one.
    """

    job_id: ObjectId
    name: str
    queue: str
    limit: int = 0  # its max_parallel (needed to take or receive a slot)
    token: ObjectId | None = None
    node_limit: int = 0  # its max_per_node (0: none); its queue is then one worker's own queue


@dataclass(frozen=True)
class SlotState:
    free: dict[str, int]
    holders: dict[str, list[Doc]]  # name -> [{"id": job id, "q": queue}]
    paused: bool
    generation: int
    version: int
    ranks: dict[str, int]  # generation per rank of newly due jobs ("any": an old job due again)
    spill: tuple[bool, int] | None = None  # new jobs of this rank or lower wait outside the front (see front.py)
    projects: tuple[str, ...] = ()  # paused projects: no job whose name is under one of them takes a slot
    keeper: tuple[str, datetime] | None = None  # (owner, lease end): the process doing the cluster's upkeep

    def active(self) -> list[ObjectId]:
        """Every job holding slots (a ticket out or running)."""
        return [entry["id"] for held in self.holders.values() for entry in held]

    def kept_by_other(self, owner: str, stamp: datetime) -> bool:
        """Another process holds the keeper's lease: ``owner`` need not even try to take it."""
        return self.keeper is not None and self.keeper[0] != owner and self.keeper[1] >= stamp

    def outranks(self, since: Mapping[str, int], rank: tuple[bool, int]) -> bool:
        """Did a job ranking above ``rank`` (or any old job) become due since ``since`` was read?"""
        for key, n in self.ranks.items():
            if since.get(key) == n:
                continue
            if key == "any":
                return True
            if rank_of_key(key) > rank:
                return True
        return False

    def room(self, holder: Holder, handed: Holder | None = None) -> bool:
        """Could ``holder`` get its slots now (``handed``: slots a finishing job would give it)?"""
        if self.paused or set(projects_of(holder.name)) & set(self.projects):
            return False
        queue_ok = (handed is not None and handed.queue == holder.queue) or self.free.get(holder.queue, 0) > 0
        name_ok = (handed is not None and handed.name == holder.name) or (
            len(self.holders.get(holder.name, [])) < holder.limit
        )
        return queue_ok and name_ok and self.node_room(holder, handed)

    def node_room(self, holder: Holder, handed: Holder | None = None) -> bool:
        if not holder.node_limit:
            return True
        passing = handed.job_id if handed is not None else None
        on_node = sum(1 for entry in self.holders.get(holder.name, [])
                      if entry["q"] == holder.queue and entry["id"] != passing)
        return on_node < holder.node_limit

    def held_by_queue(self) -> dict[str, int]:
        held: dict[str, int] = {}
        for entries in self.holders.values():
            for entry in entries:
                held[entry["q"]] = held.get(entry["q"], 0) + 1
        return held


class Slots:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._created = False

    def _update(self, guard: Mapping[str, Any], update: Mapping[str, Any], what: str,
                array_filters: list[Mapping[str, Any]] | None = None) -> bool:
        self._ensure()
        gates = self._connection.gates
        result = self._connection.outage.run(
            lambda: gates.update_one({"_id": SLOTS, **guard}, dict(update), array_filters=array_filters), what
        )
        return result.matched_count == 1

    def _ensure(self) -> None:
        if self._created:
            return
        gates = self._connection.gates
        try:
            self._connection.outage.run(lambda: gates.update_one(
                {"_id": SLOTS},
                {"$setOnInsert": {"free": {}, "holders": {}, "paused": False, "generation": 0, "v": 0, "ranks": {}}},
                upsert=True,
            ), "create the slots document")
        except DuplicateKeyError:  # a concurrent upsert created it
            pass
        self._created = True

    def read(self) -> SlotState:
        self._ensure()
        gates = self._connection.gates
        found: Doc | None = self._connection.outage.run(lambda: gates.find_one({"_id": SLOTS}), "read the slots")
        return self._state(found or {})

    @staticmethod
    def _state(doc: Doc) -> SlotState:
        return SlotState(
            free={name_of(k): int(v) for k, v in (doc.get("free") or {}).items()},
            holders={name_of(k): list(v) for k, v in (doc.get("holders") or {}).items()},
            paused=bool(doc.get("paused")), generation=int(doc.get("generation") or 0), version=int(doc.get("v") or 0),
            ranks={k: int(v) for k, v in (doc.get("ranks") or {}).items()},
            spill=rank_of_key(doc["spill"]) if doc.get("spill") else None,
            projects=tuple(doc.get("projects") or ()),
            keeper=_keeper(doc.get("keeper")),
        )

    @staticmethod
    def _room_guard(holder: Holder) -> dict[str, Any]:
        name = field_key(holder.name)
        return {f"holders.{name}.{holder.limit - 1}": {"$exists": False}, f"holders.{name}.id": {"$ne": holder.job_id},
                "paused": {"$ne": True}, "projects": {"$nin": projects_of(holder.name)}}

    @staticmethod
    def _entry(holder: Holder) -> Doc:
        return {"id": holder.job_id, "q": holder.queue, "t": holder.token}

    @staticmethod
    def _holds(holder: Holder) -> Doc:
        return {"$elemMatch": {"id": holder.job_id, "t": holder.token}}

    @staticmethod
    def _node_guard(holder: Holder, passing: Holder | None = None) -> dict[str, Any]:
        """Fewer than ``node_limit`` holders of the name on the holder's worker queue (``passing``: one
        that leaves in the same update does not count)."""
        if not holder.node_limit:
            return {}
        on_queue: dict[str, Any] = {"$eq": ["$$this.q", holder.queue]}
        if passing is not None:
            on_queue = {"$and": [on_queue, {"$ne": ["$$this.id", passing.job_id]}]}
        held = {"$ifNull": [f"$holders.{field_key(holder.name)}", []]}
        return {"$expr": {"$lt": [{"$size": {"$filter": {"input": held, "cond": on_queue}}}, holder.node_limit]}}

    def take(self, holder: Holder) -> bool:
        """An idle slot of its queue and a slot of its name, both or neither."""
        queue = field_key(holder.queue)
        guard = {**self._room_guard(holder), **self._node_guard(holder), f"free.{queue}": {"$gt": 0}}
        update = {"$inc": {f"free.{queue}": -1, "v": 1}, "$push": {f"holders.{field_key(holder.name)}": self._entry(holder)}}
        return self._update(guard, update, f"take a slot for {holder.job_id}")

    def give(self, holder: Holder) -> bool:
        """Return both slots; False (and no change) when the job holds none."""
        guard, update = self._give(holder)
        return self._update(guard, update, f"free the slot of {holder.job_id}")

    def give_and_read(self, holder: Holder) -> SlotState | None:
        """``give`` that also returns the document as the give left it, in one command.

        None when the job held nothing (or a retried give met its own first attempt).
        """
        self._ensure()
        gates = self._connection.gates
        guard, update = self._give(holder)
        doc = self._connection.outage.run(lambda: gates.find_one_and_update(
            {"_id": SLOTS, **guard}, update, return_document=ReturnDocument.AFTER,
        ), f"free the slot of {holder.job_id}")
        return None if doc is None else self._state(doc)

    def _give(self, holder: Holder) -> tuple[dict[str, Any], dict[str, Any]]:
        name = field_key(holder.name)
        update = {"$inc": {f"free.{field_key(holder.queue)}": 1, "v": 1},
                  "$pull": {f"holders.{name}": {"id": holder.job_id, "t": holder.token}}}
        return {f"holders.{name}": self._holds(holder)}, update

    def transfer(self, old: Holder, new: Holder) -> bool:
        """``old``'s slots go straight to ``new``: one command, no idle moment, no other taker in between."""
        old_name, new_name = field_key(old.name), field_key(new.name)
        guard: dict[str, Any] = {f"holders.{old_name}": self._holds(old), "paused": {"$ne": True},
                                 "projects": {"$nin": projects_of(new.name)}, **self._node_guard(new, old)}
        update: dict[str, Any] = {}
        if old.queue != new.queue:
            guard[f"free.{field_key(new.queue)}"] = {"$gt": 0}
            update["$inc"] = {f"free.{field_key(old.queue)}": 1, f"free.{field_key(new.queue)}": -1, "v": 1}
        else:  # workers left (or drain): a queue over its slots hands nothing on, it shrinks
            guard[f"free.{field_key(new.queue)}"] = {"$gte": 0}
        what = f"hand the slot of {old.job_id} to {new.job_id}"
        if old_name == new_name:
            guard[f"holders.{new_name}.id"] = {"$ne": new.job_id}
            update["$set"] = {f"holders.{new_name}.$[held]": self._entry(new)}
            return self._update(guard, update, what, array_filters=[{"held.id": old.job_id, "held.t": old.token}])
        guard.update(self._room_guard(new))
        guard[f"holders.{old_name}"] = self._holds(old)
        update["$pull"] = {f"holders.{old_name}": {"id": old.job_id, "t": old.token}}
        update["$push"] = {f"holders.{new_name}": self._entry(new)}
        return self._update(guard, update, what)

    def drop(self, name: str, entry: Doc) -> bool:
        """Repair: free the slots of exactly this claim (a job neither dispatched nor running)."""
        return self.give(Holder(job_id=entry["id"], name=name, queue=entry["q"], token=entry.get("t")))

    def reconcile(self, free: Mapping[str, int], version: int) -> bool:
        """Set the idle slots per queue, unless a slot moved since ``version`` was read."""
        values = {field_key(queue): n for queue, n in free.items()}
        return self._update({"v": version}, {"$set": {"free": values}, "$inc": {"v": 1}}, "reconcile the slots")

    def bump(self, rank: tuple[bool, int] | None = None) -> None:
        """A job became due out of turn: cached candidate lists may be stale.

        ``rank`` (force, priority) of a new job: a cache is stale only for it if
        its next candidate ranks lower (same rank: the new job queues behind, FIFO).
        Without a rank (restart, recovery: an old job due again) every cache is stale.
        """
        key = f"ranks.{rank_key(rank)}" if rank is not None else "ranks.any"
        self._update({}, {"$inc": {"generation": 1, key: 1}}, "signal a due job")

    def spill(self, rank: tuple[bool, int] | None) -> None:
        """New jobs ranking ``rank`` or lower wait outside the front from now on (None: all enter it)."""
        value = None if rank is None else rank_key(rank)
        self._update({}, {"$set": {"spill": value}}, "set the front's spill rank")

    def lead(self, owner: str, seconds: float, stamp: Any, patience: float = 0.0) -> bool:
        """Take or renew the keeper's lease (one process does the cluster's upkeep and keeps the front).

        ``patience``: take over a lease only once it has been expired this long (see worker/step.py).
        """
        expired = stamp - timedelta(seconds=patience)
        guard = {"$or": [{"keeper.by": owner}, {"keeper.until": {"$lt": expired}}, {"keeper": None}]}
        until = stamp + timedelta(seconds=seconds)
        return self._update(guard, {"$set": {"keeper": {"by": owner, "until": until}}}, "lead the front")

    def resign(self, owner: str) -> None:
        """Give up the keeper's lease at once (a stopping worker), so the next beat of another takes it."""
        self._update({"keeper.by": owner}, {"$set": {"keeper": None}}, "resign the keeper's lease")

    def pause_project(self, project: str, paused: bool) -> None:
        update = {"$addToSet" if paused else "$pull": {"projects": project}, "$inc": {"generation": 1, "ranks.any": 1}}
        self._update({}, update, f"{'pause' if paused else 'resume'} project {project}")

    def pause(self, paused: bool) -> None:
        self._update({}, {"$set": {"paused": paused}, "$inc": {"generation": 1, "ranks.any": 1}},
                     "pause" if paused else "resume")


def _keeper(value: Any) -> tuple[str, datetime] | None:
    if not isinstance(value, dict) or not isinstance(value.get("until"), datetime):
        return None
    return str(value.get("by")), value["until"]
