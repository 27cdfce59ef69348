"""The front: dispatchers scan a bounded set of waiting jobs, and priority and FIFO still hold.

A keeper of size 4 (trimmed above 8, refilled below 2 relevant jobs) stands in
for the default 500 so that each rule shows with a handful of jobs.
"""

from __future__ import annotations

from core4celery.clock import now
from core4celery.config.options import JobOptions
from core4celery.dispatch.dispatcher import Dispatcher
from core4celery.dispatch.front import FrontKeeper
from core4celery.store.document import new_job
from core4celery.store.jobs import DEFAULT_QUEUE, Claim, dispatch_key

from .conftest import TICKET_LEASE, Job, Registry

SIZE = 4


def in_front(reg: Registry) -> list[object]:
    """Ids of the jobs in the front, in dispatch order."""
    docs = reg.connection.jobs.find({"front_at": {"$ne": None}}, {"force": 1, "priority": 1})
    return [doc["_id"] for doc in sorted(docs, key=dispatch_key)]


def ids(docs: list[Job]) -> list[object]:
    return [doc["_id"] for doc in docs]


def claim(reg: Registry, docs: list[Job]) -> None:
    for doc in docs:
        assert reg.store.claim(dict(doc), now(), TICKET_LEASE) is Claim.TICKET


def trimmed(reg: Registry) -> tuple[FrontKeeper, list[Job], list[Job]]:
    """3 jobs of priority 0, then 6 of priority 1 (9 > 8): the keeper trims the front to 4."""
    low = [reg.enqueue("front", priority=0) for _ in range(3)]
    high = [reg.enqueue("front", priority=1) for _ in range(6)]
    keeper = FrontKeeper(reg.store, size=SIZE)
    keeper.keep()
    return keeper, low, high


def test_a_front_past_twice_its_size_keeps_the_first_jobs_in_dispatch_order(reg: Registry) -> None:
    _, low, high = trimmed(reg)
    assert in_front(reg) == ids(high[:4])
    assert reg.slots().spill == (False, 1)  # the highest rank that had to leave
    assert all(reg.live(doc["_id"])["query_at"] is not None for doc in low + high)  # all still waiting


def test_a_new_job_joins_the_front_only_when_it_outranks_every_job_outside(reg: Registry,
                                                                           dispatcher: Dispatcher) -> None:
    trimmed(reg)
    reg.provide({DEFAULT_QUEUE: 0})  # no idle slot: offers enqueue to wait
    same = new_job("front", {"n": "same"}, JobOptions(priority=1), query_at=now())
    above = new_job("front", {"n": "above"}, JobOptions(priority=2), query_at=now())
    assert not dispatcher.offer(same) and not dispatcher.offer(above)
    assert same["_id"] not in in_front(reg)  # queues behind the priority-1 jobs outside (FIFO)
    assert in_front(reg)[0] == above["_id"]


def test_refills_bring_in_the_jobs_outside_in_dispatch_order_until_none_is_left(reg: Registry) -> None:
    keeper, low, high = trimmed(reg)
    claim(reg, high[:4])
    keeper.keep()
    assert in_front(reg) == ids(high[4:] + low[:2])
    assert reg.slots().spill == (False, 0)  # the first job still outside ranks 0
    claim(reg, high[4:] + low[:2])
    keeper.keep()
    assert in_front(reg) == ids(low[2:])
    assert reg.slots().spill is None


def test_dispatchers_claim_nothing_ranked_below_the_spill(reg: Registry, dispatcher: Dispatcher) -> None:
    old = new_job("front", {"n": "old"}, JobOptions(priority=0), query_at=now())
    keeper, _, high = trimmed(reg)
    reg.store.enqueue(old)  # an old job due again joins the front whatever its rank
    assert dispatcher.tick() == 4
    assert all("dispatched_until" in reg.live(doc["_id"]) for doc in high[:4])
    assert reg.live(old["_id"]).get("dispatched_until") is None  # priority-1 jobs still wait outside
    keeper.keep()  # brings them in; the spill falls to 0
    assert dispatcher.tick() == 5  # the two priority-1 jobs, then the oldest three of priority 0
    assert all("dispatched_until" in reg.live(doc["_id"]) for doc in [*high[4:], old])


def test_a_job_left_outside_that_outranks_the_keepers_list_is_read_again(reg: Registry) -> None:
    keeper, low, high = trimmed(reg)
    claim(reg, high[:4])
    keeper.keep()  # reads the 5 outside, brings in 4; low[2] is left (spill 0)
    stale = new_job("front", {"n": "stale"}, JobOptions(priority=3), query_at=now())
    reg.store.enqueue(stale, front=False)  # an enqueuer that still held an older, higher spill
    claim(reg, high[4:] + low[:2])
    keeper.keep()
    assert in_front(reg) == [stale["_id"], low[2]["_id"]]
    assert reg.slots().spill is None
