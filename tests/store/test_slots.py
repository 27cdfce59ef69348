"""The slots document: idle worker slots per queue and ``max_parallel`` slots per name, each move one command.

Moves are made through :class:`Slots` with job ids that need no job document
(the slots document knows nothing else), and checked on the stored document
itself, so a move that changes anything it should not is caught. The
``reg`` fixture checks after every test that idle + held = the workers' slots.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from bson import ObjectId

from core4celery.clock import later, now
from core4celery.config.options import JobOptions
from core4celery.store.document import new_job
from core4celery.store.jobs import DEFAULT_QUEUE, SLOT_GRACE, Claim, holder_of
from core4celery.store.slots import Holder, Slots, field_key

from .conftest import CAPACITY, TICKET_LEASE, CommandHook, Registry, cut_short_completion

Q2 = "q2"


@pytest.fixture
def slots(reg: Registry) -> Slots:
    return Slots(reg.connection)


def holder(name: str = "s", queue: str = DEFAULT_QUEUE, limit: int = 1, job_id: ObjectId | None = None,
           token: ObjectId | None = None) -> Holder:
    return Holder(job_id=job_id or ObjectId(), name=name, queue=queue, limit=limit, token=token or ObjectId())


def entry(h: Holder) -> dict[str, object]:
    return {"id": h.job_id, "q": h.queue, "t": h.token}


def aged(seconds: float) -> ObjectId:
    """A job id created ``seconds`` ago (unique, unlike ObjectId.from_datetime)."""
    stamp = ObjectId.from_datetime(now() - timedelta(seconds=seconds))
    return ObjectId(stamp.binary[:4] + ObjectId().binary[4:])


# -- take -------------------------------------------------------------------------
def test_take_takes_an_idle_worker_slot_and_a_slot_of_the_name(reg: Registry, slots: Slots) -> None:
    before = reg.raw_slots()
    a = holder("take", limit=2)
    assert slots.take(a)
    after = reg.raw_slots()
    assert after["holders"]["take"] == [entry(a)]
    assert after["free"][DEFAULT_QUEUE] == CAPACITY - 1
    assert after["v"] == before["v"] + 1  # a change of free: a concurrent reconcile must not overwrite it
    assert after["generation"] == before["generation"]
    assert reg.store.holders("take") == [a.job_id]


def test_take_by_a_job_that_holds_already_moves_nothing(reg: Registry, slots: Slots) -> None:
    a = holder("take-twice", limit=3)
    assert slots.take(a)
    before = reg.raw_slots()
    assert not slots.take(a)
    assert reg.raw_slots() == before


def test_take_stops_at_max_parallel_and_takes_both_or_neither(reg: Registry, slots: Slots) -> None:
    taken = [holder("limit", limit=2) for _ in range(3)]
    assert [slots.take(h) for h in taken] == [True, True, False]
    assert reg.holders("limit") == [taken[0].job_id, taken[1].job_id]
    assert reg.free() == CAPACITY - 2  # the refused take left the worker slot idle
    assert slots.take(holder("other-name"))  # another name is not limited by this one


def test_take_needs_an_idle_slot_of_its_own_queue(reg: Registry, slots: Slots) -> None:
    reg.provide({DEFAULT_QUEUE: 1, Q2: 0})
    before = reg.raw_slots()
    assert not slots.take(holder("q", queue=Q2))
    assert reg.raw_slots() == before
    first = holder("q", queue=DEFAULT_QUEUE, limit=5)
    assert slots.take(first)
    assert not slots.take(holder("q", queue=DEFAULT_QUEUE, limit=5))
    assert reg.free() == 0 and reg.holders("q") == [first.job_id]
    reg.provide({DEFAULT_QUEUE: 1, Q2: 1})
    second = holder("q", queue=Q2, limit=5)
    assert slots.take(second)
    assert reg.slots().holders["q"] == [entry(first), entry(second)]
    assert reg.slots().free == {DEFAULT_QUEUE: 0, Q2: 0}


# -- give -------------------------------------------------------------------------
def test_give_returns_both_slots_and_giving_twice_changes_nothing(reg: Registry, slots: Slots) -> None:
    a, b = holder("give", limit=2), holder("give", limit=2)
    assert slots.take(a) and slots.take(b)
    assert slots.give(a)
    assert reg.slots().holders["give"] == [entry(b)] and reg.free() == CAPACITY - 1
    before = reg.raw_slots()
    assert not slots.give(a)
    assert reg.raw_slots() == before  # not even the version moved


def test_give_by_a_job_that_holds_nothing_changes_nothing(reg: Registry, slots: Slots) -> None:
    assert slots.take(holder("held"))
    before = reg.raw_slots()
    assert not slots.give(holder("held"))
    assert not slots.give(holder("never-taken"))
    assert reg.raw_slots() == before


def test_give_of_a_job_on_another_queue_frees_that_queues_slot(reg: Registry, slots: Slots) -> None:
    reg.provide({DEFAULT_QUEUE: 2, Q2: 2})
    a = holder("give-q2", queue=Q2)
    assert slots.take(a)
    assert reg.slots().free == {DEFAULT_QUEUE: 2, Q2: 1}
    assert slots.give(a)
    assert reg.slots().free == {DEFAULT_QUEUE: 2, Q2: 2}


# -- transfer ---------------------------------------------------------------------
def test_transfer_within_a_name_replaces_the_holder_in_place(reg: Registry, slots: Slots) -> None:
    """A name at its limit hands its slot to its own next job: no idle moment, no room needed."""
    first, old, new = holder("same", limit=2), holder("same", limit=2), holder("same", limit=2)
    assert slots.take(first) and slots.take(old)
    before = reg.raw_slots()
    assert slots.transfer(old, new)
    after = reg.raw_slots()
    assert after["holders"]["same"] == [entry(first), entry(new)]
    assert after["free"] == before["free"] and after["v"] == before["v"]  # no worker slot moved
    moved = reg.raw_slots()
    assert not slots.transfer(old, new)  # old holds nothing any more
    assert not slots.transfer(old, holder("same", limit=2))
    assert reg.raw_slots() == moved


def test_transfer_within_a_name_across_queues(reg: Registry, slots: Slots) -> None:
    reg.provide({DEFAULT_QUEUE: 2, Q2: 1})
    old, new = holder("same-q", limit=1), holder("same-q", queue=Q2, limit=1)
    assert slots.take(old)
    assert slots.transfer(old, new)
    state = reg.slots()
    assert state.holders["same-q"] == [entry(new)]
    assert state.free == {DEFAULT_QUEUE: 2, Q2: 0}  # the old queue's worker slot is idle again


def test_transfer_between_names(reg: Registry, slots: Slots) -> None:
    other = holder("to", limit=2)
    old, new = holder("from", limit=1), holder("to", limit=2)
    assert slots.take(other) and slots.take(old)
    before = reg.raw_slots()
    assert slots.transfer(old, new)
    after = reg.raw_slots()
    assert after["holders"]["from"] == [] and after["holders"]["to"] == [entry(other), entry(new)]
    assert after["free"] == before["free"]
    assert not slots.transfer(old, holder("to", limit=5))  # given away already
    assert reg.raw_slots() == after


def test_transfer_between_names_across_queues(reg: Registry, slots: Slots) -> None:
    reg.provide({DEFAULT_QUEUE: 1, Q2: 1})
    old, new = holder("from-q"), holder("to-q", queue=Q2)
    assert slots.take(old)
    assert slots.transfer(old, new)
    state = reg.slots()
    assert state.holders == {"from-q": [], "to-q": [entry(new)]}
    assert state.free == {DEFAULT_QUEUE: 1, Q2: 0}


def test_transfer_to_a_job_whose_name_is_full_moves_nothing(reg: Registry, slots: Slots) -> None:
    full = holder("full", limit=1)
    old = holder("giver", limit=1)
    assert slots.take(full) and slots.take(old)
    before = reg.raw_slots()
    assert not slots.transfer(old, holder("full", limit=1))
    assert reg.raw_slots() == before
    assert slots.transfer(old, holder("full", limit=2))  # with room for one more it goes


def test_transfer_to_a_queue_without_an_idle_slot_moves_nothing(reg: Registry, slots: Slots) -> None:
    reg.provide({DEFAULT_QUEUE: 1, Q2: 0})
    old = holder("no-idle")
    assert slots.take(old)
    before = reg.raw_slots()
    assert not slots.transfer(old, holder("no-idle", queue=Q2, limit=2))  # same name
    assert not slots.transfer(old, holder("elsewhere", queue=Q2))  # other name
    assert reg.raw_slots() == before


def test_transfer_to_a_job_that_holds_already_moves_nothing(reg: Registry, slots: Slots) -> None:
    old, new = holder("dup", limit=3), holder("dup", limit=3)
    other_name = holder("dup-b", limit=3)
    assert slots.take(old) and slots.take(new) and slots.take(other_name)
    before = reg.raw_slots()
    assert not slots.transfer(old, new)
    assert not slots.transfer(other_name, new)
    assert reg.raw_slots() == before


# -- pause ------------------------------------------------------------------------
def test_pause_blocks_take_and_transfer_but_not_give(reg: Registry, slots: Slots) -> None:
    a, b = holder("pause", limit=3), holder("pause", limit=3)
    assert slots.take(a) and slots.take(b)
    generation = reg.generation()
    reg.store.pause(True)
    state = reg.slots()
    assert state.paused and state.generation == generation + 1  # dispatchers look again
    assert not state.room(holder("pause", limit=3)) and not state.room(holder("pause", limit=3), handed=a)
    before = reg.raw_slots()
    assert not slots.take(holder("pause", limit=3))
    assert not slots.take(holder("other"))
    assert not slots.transfer(a, holder("pause", limit=3))
    assert not slots.transfer(a, holder("other"))
    assert reg.raw_slots() == before
    assert slots.give(b)  # a finished job still returns its slots
    reg.store.pause(False)
    assert not reg.slots().paused and reg.generation() == generation + 2
    assert slots.transfer(a, holder("pause", limit=3)) and slots.take(holder("other"))


# -- reconcile --------------------------------------------------------------------
def test_reconcile_sets_idle_slots_to_workers_slots_minus_holders_per_queue(reg: Registry, slots: Slots) -> None:
    reg.provide({DEFAULT_QUEUE: 5, Q2: 5})
    for h in (holder("r", limit=9), holder("r", limit=9), holder("r2", queue=Q2)):
        assert slots.take(h)
    assert reg.store.reconcile({DEFAULT_QUEUE: 4, Q2: 1, "q3": 2})
    assert reg.slots().free == {DEFAULT_QUEUE: 2, Q2: 0, "q3": 2}
    # the workers of q2 left: its holder is counted against nothing
    assert reg.store.reconcile({DEFAULT_QUEUE: 4})
    assert reg.slots().free == {DEFAULT_QUEUE: 2, Q2: -1}
    assert not slots.take(holder("r3", queue=Q2))
    reg.capacity = {DEFAULT_QUEUE: 4}
    reg.check_slots()
    # an unchanged count is no write
    version = reg.slots().version
    assert reg.store.reconcile({DEFAULT_QUEUE: 4})
    assert reg.slots().version == version


def test_reconcile_refuses_when_a_slot_moved_since_its_read(reg: Registry, other: Registry, slots: Slots,
                                                          hook: CommandHook) -> None:
    """The count is computed from one read of the document; a take in between must not be overwritten."""
    stale = reg.slots()
    assert Slots(other.connection).take(holder("moved"))
    before = reg.raw_slots()
    assert not slots.reconcile({DEFAULT_QUEUE: 7}, stale.version)
    assert reg.raw_slots() == before
    # the same through JobStore.reconcile: another process takes right after its read
    late = holder("moved-late")
    hook.arm("find", reg.connection.gates.name, lambda: Slots(other.connection).take(late))
    assert reg.store.reconcile({DEFAULT_QUEUE: 7}) is False
    assert hook.fired == 1
    assert reg.free() == CAPACITY - 2  # the take stands; the reconcile wrote nothing
    assert reg.store.reconcile({DEFAULT_QUEUE: 7})  # the next pass applies
    assert reg.free() == 7 - 2
    reg.capacity = {DEFAULT_QUEUE: 7}


# -- names that are not field names -----------------------------------------------
def test_names_and_queues_with_dots_and_dollars(reg: Registry, slots: Slots) -> None:
    queue = "q.dotted$"
    reg.provide({DEFAULT_QUEUE: CAPACITY, queue: 2})
    a, b = holder("pkg.mod.$task", queue=queue, limit=2), holder("pkg.mod.$task", queue=queue, limit=2)
    c = holder("pkg.other", queue=queue)
    assert slots.take(a) and slots.take(b)
    assert not slots.take(holder("pkg.mod.$task", queue=queue, limit=2))  # limit: a dotted name is one name
    raw = reg.raw_slots()
    assert field_key("pkg.mod.$task") in raw["holders"] and field_key(queue) in raw["free"]
    assert all("." not in key and not key.startswith("$") for key in [*raw["holders"], *raw["free"]])
    state = reg.slots()
    assert state.holders["pkg.mod.$task"] == [entry(a), entry(b)] and state.free[queue] == 0
    assert slots.transfer(a, c)
    assert slots.give(b) and slots.give(c)
    assert reg.slots().free[queue] == 2


# -- repair -----------------------------------------------------------------------
def test_repair_slots_frees_holders_whose_job_neither_waits_for_its_ticket_nor_runs(reg: Registry,
                                                                                   slots: Slots) -> None:
    dispatched = reg.dispatched("repair", max_parallel=9)
    running, _ = reg.running("repair", max_parallel=9)
    deferred, deferred_run = reg.running("repair", max_parallel=9, defer_time=600)
    assert reg.store.defer(deferred_run, now(), "later") is not None  # its process died before giving
    failed, failed_run = reg.running("repair", max_parallel=9, attempts=1)
    assert reg.store.fail(failed_run, {"exception": "E", "traceback": None, "at": now()}, now()) is not None
    # a completion whose process died before giving, of a job enqueued long ago
    old = new_job("repair", {"old": 1}, JobOptions(max_parallel=9), query_at=now(), job_id=aged(SLOT_GRACE + 60))
    reg.store.enqueue(old)
    assert reg.store.claim(dict(old), now(), TICKET_LEASE) is Claim.TICKET
    completed = reg.start(old)
    assert reg.store.complete(completed, "done", now())
    assert len(reg.holders("repair")) == 5
    assert reg.store.repair_slots() == 0, "runs that ended a moment ago are handing their slots over"
    assert reg.store.repair_slots(grace=0) == 3
    assert reg.holders("repair") == [dispatched["_id"], running["_id"]]
    assert reg.free() == CAPACITY - 2
    assert reg.store.repair_slots(grace=0) == 0
    assert not reg.give(deferred_run) and not reg.give(completed)  # freed once: a late finisher gives nothing
    assert failed["_id"] not in reg.holders("repair") and deferred["_id"] not in reg.holders("repair")


def test_repair_slots_frees_a_holder_without_a_job_after_the_grace(reg: Registry, slots: Slots) -> None:
    """An enqueue that took its slots and died before its insert: freed once its claim is older than the grace.

    The claim's age counts, not the job's: a job enqueued long ago may have been claimed just now.
    """
    ghost = holder("ghost", token=aged(SLOT_GRACE + 5))
    fresh = holder("ghost-young", job_id=aged(SLOT_GRACE + 60), token=aged(SLOT_GRACE - 20))
    assert slots.take(ghost) and slots.take(fresh)
    assert reg.store.repair_slots() == 1
    assert reg.holders("ghost") == [] and reg.holders("ghost-young") == [fresh.job_id]


def test_repair_slots_frees_the_slots_a_claim_took_for_a_job_killed_meanwhile(
    reg: Registry, other: Registry, hook: CommandHook,
) -> None:
    """However a killed job came to hold slots (see the xfail below), repair returns them."""
    doc = reg.enqueue("killed-holder")
    hook.arm("update", reg.connection.jobs.name, lambda: other.store.kill(other.live(doc["_id"]), "operator"))
    reg.store.claim(doc, now(), TICKET_LEASE)
    assert hook.fired == 1 and reg.live(doc["_id"])["state"] == "killed"
    reg.store.repair_slots(grace=0)
    assert reg.holders("killed-holder") == [] and reg.free() == CAPACITY


# -- known bugs -------------------------------------------------------------------
@pytest.mark.xfail(strict=True, reason=(
    "JobStore.claim marks the job dispatched, then takes its slots: a kill (or a remove) landing between the two "
    "frees nothing (the job holds nothing yet), then the take succeeds and claim returns TICKET for a killed job, "
    "which keeps its slots until repair_slots; claim should re-check the job after the take (or undo on GONE)"))
def test_a_job_killed_between_the_claims_mark_and_take_gets_no_ticket_and_holds_no_slot(
    reg: Registry, other: Registry, hook: CommandHook,
) -> None:
    doc = reg.enqueue("kill-claim")
    hook.arm("update", reg.connection.jobs.name, lambda: other.store.kill(other.live(doc["_id"]), "operator"))
    claim = reg.store.claim(doc, now(), TICKET_LEASE)
    assert hook.fired == 1 and reg.live(doc["_id"])["state"] == "killed"
    assert reg.holders("kill-claim") == [], "a killed job holds slots"
    assert claim is Claim.GONE


def test_repair_slots_does_not_free_the_slots_of_a_job_dispatched_again_meanwhile(
    reg: Registry, other: Registry, hook: CommandHook,
) -> None:
    doc = reg.dispatched("retaken")
    requeued_at = later(TICKET_LEASE + 5)
    claims: list[Claim] = []

    def requeue() -> None:  # after repair's read of the slots document: another node requeues the lost ticket
        assert other.store.requeue_lost(requeued_at) == 1
        # after repair's read of the job (pending, no ticket): a dispatcher claims it again
        hook.arm("find", reg.connection.jobs.name, lambda: claims.append(
            other.store.claim(other.live(doc["_id"]), later(1, requeued_at), TICKET_LEASE)))

    hook.arm("find", reg.connection.gates.name, requeue)
    reg.store.repair_slots(grace=0)
    assert claims == [Claim.TICKET]
    assert hook.fired == 2
    assert "dispatched_until" in reg.live(doc["_id"])  # a ticket is out for it ...
    assert reg.holders("retaken") == [doc["_id"]], "a dispatched job holds no slot"  # ... so it must hold its slots


def on_q2(reg: Registry) -> None:
    """Workers for two queues; the test's jobs run on q2."""
    reg.provide({DEFAULT_QUEUE: CAPACITY, Q2: 1})


@pytest.mark.parametrize("how", ["kill", "recover", "remove"])
def test_freeing_with_the_full_document_returns_the_worker_slot_to_the_jobs_queue(reg: Registry, how: str) -> None:
    on_q2(reg)
    doc, _ = reg.running("q2-job", queue=Q2)
    assert reg.slots().free == {DEFAULT_QUEUE: CAPACITY, Q2: 0}
    if how == "kill":
        assert reg.store.kill(doc, "by test")
    elif how == "recover":
        assert reg.store.recover(doc, "lease expired")
    else:
        assert reg.store.request_remove(doc["_id"]) and reg.store.remove(doc["_id"], hard=True) is not None
    assert reg.holders("q2-job") == []
    assert reg.slots().free == {DEFAULT_QUEUE: CAPACITY, Q2: 1}


@pytest.mark.parametrize("how", ["requeue_lost", "recover an expired run", "finish a cut-short completion",
                                 "kill a run of this worker"])
def test_housekeeping_returns_the_worker_slot_to_the_jobs_own_queue(reg: Registry, how: str) -> None:
    on_q2(reg)
    if how == "requeue_lost":
        reg.dispatched("q2-job", queue=Q2)
        assert reg.store.requeue_lost(later(TICKET_LEASE + 5)) == 1
    else:
        doc, run = reg.running("q2-job", queue=Q2)
        if how == "finish a cut-short completion":
            cut_short_completion(reg, run, "done")
        if how == "kill a run of this worker":
            assert reg.store.request_kill(doc["_id"])
            (mine,) = reg.store.running_on("w1")
            assert reg.store.kill(mine, "killed on request")
        else:
            (expired,) = reg.store.expired_runs(later(60))
            assert reg.store.recover(expired, "lease expired")
    assert reg.holders("q2-job") == []
    assert reg.slots().free == {DEFAULT_QUEUE: CAPACITY, Q2: 1}


def test_a_paused_project_takes_no_slot_and_other_projects_do(reg: Registry) -> None:
    reg.store.pause_project("proj", True)
    inside = reg.enqueue("proj.sub.job")
    outside = reg.enqueue("project2.job")
    assert reg.store.claim(inside, later(1), TICKET_LEASE) is Claim.FULL  # the take's guard names the project
    assert reg.store.claim(outside, later(1), TICKET_LEASE) is Claim.TICKET
    assert not reg.slots().room(holder_of(reg.live(inside["_id"])))
    reg.store.pause_project("proj", False)
    assert reg.store.claim(reg.live(inside["_id"]), later(1), TICKET_LEASE) is Claim.TICKET


def test_max_per_node_is_guarded_in_the_take_itself(reg: Registry) -> None:
    reg.provide({DEFAULT_QUEUE: CAPACITY, "core4.w.a@h": 4, "core4.w.b@h": 4})
    docs = [reg.enqueue("capped", max_parallel=8) for _ in range(3)]
    first = holder_of({**docs[0], "max_per_node": 1, "route": "core4.w.a@h"}, ObjectId())
    second = holder_of({**docs[1], "max_per_node": 1, "route": "core4.w.a@h"}, ObjectId())
    other = holder_of({**docs[2], "max_per_node": 1, "route": "core4.w.b@h"}, ObjectId())
    slots = Slots(reg.connection)
    assert slots.take(first)
    assert not reg.slots().node_room(second) and not slots.take(second)  # a second one on worker a: refused
    assert slots.take(other)  # worker b has room
    assert slots.transfer(first, second)  # the one leaving worker a makes room for the next there
    assert set(reg.holders("capped")) == {docs[1]["_id"], docs[2]["_id"]}
    slots.give(second)
    slots.give(other)
