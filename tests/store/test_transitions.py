"""Every transition of the state table through its JobStore method, checked on the stored documents
and on the slots document (who holds which slots, how many worker slots are idle)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId

from core4celery.clock import EPOCH, later, now
from core4celery.config.options import JobOptions
from core4celery.errors import JobExists
from core4celery.store.document import new_job, ticket_header
from core4celery.store.jobs import DEFAULT_QUEUE, Claim
from core4celery.store.states import State

from .conftest import CAPACITY, TICKET_LEASE, CommandHook, Registry, lock, untokened


def close_to(stamp: Any, expected: Any, seconds: float = 5.0) -> bool:
    assert stamp is not None and expected is not None
    return abs(stamp - expected) <= timedelta(seconds=seconds)


# -- enqueue --------------------------------------------------------------------
def test_enqueue_stores_a_pending_job_and_signals_dispatchers(reg: Registry) -> None:
    before = reg.generation()
    doc = reg.enqueue("enq", {"x": 1}, priority=5, max_parallel=2, attempts=3)
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "pending"
    assert live["args"] == {"x": 1} and live["args_hash"] == doc["args_hash"]
    assert (live["priority"], live["max_parallel"], live["attempts"], live["attempts_left"]) == (5, 2, 3, 3)
    assert live["trial"] == 0 and live["locked"] is None and live["query_at"] == doc["query_at"]
    assert "dispatched_until" not in live and "inactive_at" not in live
    assert reg.generation() == before + 1
    assert reg.holders("enq") == [] and reg.free() == CAPACITY


def test_enqueue_refuses_a_second_live_job_with_the_same_name_and_args(reg: Registry) -> None:
    first = reg.enqueue("dup", {"x": 1})
    with pytest.raises(JobExists) as caught:
        reg.enqueue("dup", {"x": 1})
    assert caught.value.job_id == str(first["_id"])
    assert reg.connection.jobs.count_documents({"name": "dup"}) == 1
    reg.enqueue("dup", {"x": 2})  # other arguments: another job
    reg.enqueue("other", {"x": 1})  # other name: another job
    assert reg.connection.jobs.count_documents({"name": "dup"}) == 2


def test_enqueue_of_the_same_document_twice_is_one_job(reg: Registry) -> None:
    """A retried insert whose first reply was lost: the job's own id, not a JobExists."""
    doc = new_job("again", {"x": 1}, JobOptions(), query_at=now())
    reg.store.enqueue(doc)
    reg.store.enqueue(doc)
    assert reg.connection.jobs.count_documents({"name": "again"}) == 1


def test_enqueue_dispatched_with_an_idle_slot_inserts_the_job_holding_its_slots(reg: Registry) -> None:
    before = reg.generation()
    doc = new_job("offer", {"x": 1}, JobOptions(max_parallel=2), query_at=now(), queue=DEFAULT_QUEUE)
    stamp = now()
    assert reg.store.enqueue_dispatched(doc, TICKET_LEASE) is True
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "pending" and live["query_at"] is None and live["trial"] == 0
    assert close_to(live["dispatched_until"], later(TICKET_LEASE, stamp))
    assert untokened(reg.slots().holders["offer"]) == [{"id": doc["_id"], "q": DEFAULT_QUEUE}]
    assert reg.free() == CAPACITY - 1
    assert reg.generation() == before  # nothing became due: its ticket is published at once
    assert reg.store.due(later(60), 10) == []
    run = reg.start(doc)  # the ticket carries the enqueued document's fields
    assert run.trial == 1 and reg.live(doc["_id"])["state"] == "running"
    assert reg.store.complete(run, "done", now()) and reg.give(run)


@pytest.mark.parametrize("why", ["no idle worker slot", "max_parallel reached", "paused"])
def test_enqueue_dispatched_without_an_idle_slot_enqueues_the_job_to_wait(reg: Registry, why: str) -> None:
    if why == "no idle worker slot":
        reg.provide({DEFAULT_QUEUE: 0})
    elif why == "max_parallel reached":
        reg.dispatched("wait-offer", max_parallel=1)
    else:
        reg.store.pause(True)
    state = reg.slots()
    doc = new_job("wait-offer", {"x": 1}, JobOptions(max_parallel=1), query_at=now())
    assert reg.store.enqueue_dispatched(doc, TICKET_LEASE) is False
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "pending" and live["query_at"] == doc["query_at"] and "dispatched_until" not in live
    after = reg.slots()
    assert (after.free, after.holders) == (state.free, state.holders)  # no slot moved
    assert after.generation == state.generation + 1  # dispatchers see a waiting job
    assert [d["_id"] for d in reg.store.due(later(1), 10)] == [doc["_id"]]


def test_enqueue_dispatched_of_a_duplicate_gives_the_slots_back(reg: Registry) -> None:
    reg.enqueue("offer-dup", {"x": 1})
    doc = new_job("offer-dup", {"x": 1}, JobOptions(), query_at=now())
    with pytest.raises(JobExists):
        reg.store.enqueue_dispatched(doc, TICKET_LEASE)
    assert reg.holders("offer-dup") == [] and reg.free() == CAPACITY
    assert reg.live(doc["_id"]) is None


# -- claim ----------------------------------------------------------------------
def test_claim_ticket_takes_the_slots_and_marks_the_job_dispatched(reg: Registry) -> None:
    doc = reg.enqueue("claim")
    stamp = now()
    assert reg.store.claim(doc, stamp, TICKET_LEASE) is Claim.TICKET
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "pending"  # users still see a waiting job
    assert live["query_at"] is None
    assert close_to(live["dispatched_until"], later(TICKET_LEASE, stamp))
    assert live["rev"] is not None
    assert untokened(reg.slots().holders["claim"]) == [{"id": doc["_id"], "q": DEFAULT_QUEUE}]
    assert reg.free() == CAPACITY - 1


@pytest.mark.parametrize("how", ["dispatched", "running"])
def test_claim_of_a_job_holding_its_slots_is_gone_and_moves_nothing(reg: Registry, how: str) -> None:
    """A stale candidate (dispatched by another process meanwhile) costs one failed update, no slot."""
    doc = reg.dispatched("held")
    if how == "running":
        reg.start(doc)
    live = reg.live(doc["_id"])
    state = reg.slots()
    assert reg.store.claim(doc, now(), TICKET_LEASE) is Claim.GONE
    assert reg.live(doc["_id"]) == live
    assert reg.slots() == state


def test_claim_respects_max_parallel(reg: Registry) -> None:
    docs = [reg.enqueue("par", max_parallel=2) for _ in range(3)]
    stamp = now()
    claims = [reg.store.claim(doc, stamp, TICKET_LEASE) for doc in docs]
    assert claims == [Claim.TICKET, Claim.TICKET, Claim.FULL]
    assert reg.holders("par") == [docs[0]["_id"], docs[1]["_id"]]
    assert reg.free() == CAPACITY - 2
    third = reg.live(docs[2]["_id"])  # marked first, then the mark was undone: due as before
    assert third is not None and "dispatched_until" not in third and third["query_at"] == stamp
    assert third["state"] == "pending" and [d["_id"] for d in reg.store.due(later(1), 10)] == [docs[2]["_id"]]
    # a given slot goes to the next claim
    first = reg.start(docs[0])
    assert reg.store.complete(first, None, now())
    assert reg.store.claim(third, later(1), TICKET_LEASE) is Claim.FULL  # the ending alone frees nothing
    assert reg.give(first)
    assert reg.store.claim(reg.live(docs[2]["_id"]), later(1), TICKET_LEASE) is Claim.TICKET
    assert reg.holders("par") == [docs[1]["_id"], docs[2]["_id"]]


def test_claim_without_an_idle_worker_slot_is_full(reg: Registry) -> None:
    reg.provide({DEFAULT_QUEUE: 1})
    first, second = reg.enqueue("idle-a"), reg.enqueue("idle-b")  # different names: only the worker slot limits
    stamp = now()
    assert reg.store.claim(first, stamp, TICKET_LEASE) is Claim.TICKET
    assert reg.store.claim(second, stamp, TICKET_LEASE) is Claim.FULL
    assert reg.free() == 0 and reg.holders("idle-b") == []
    assert "dispatched_until" not in reg.live(second["_id"])
    reg.provide({DEFAULT_QUEUE: 2})  # another worker came
    assert reg.free() == 1
    assert reg.store.claim(reg.live(second["_id"]), later(1), TICKET_LEASE) is Claim.TICKET


def test_claim_for_a_queue_without_idle_slots_is_full(reg: Registry) -> None:
    doc = reg.enqueue("other-queue", queue="q2")  # nobody consumes q2
    assert reg.store.claim(doc, now(), TICKET_LEASE) is Claim.FULL
    assert reg.free() == CAPACITY and reg.holders("other-queue") == []
    reg.provide({DEFAULT_QUEUE: CAPACITY, "q2": 1})
    assert reg.store.claim(reg.live(doc["_id"]), later(1), TICKET_LEASE) is Claim.TICKET
    assert untokened(reg.slots().holders["other-queue"]) == [{"id": doc["_id"], "q": "q2"}]
    assert reg.free("q2") == 0 and reg.free() == CAPACITY


def test_claim_while_paused_is_full(reg: Registry) -> None:
    doc = reg.enqueue("paused")
    reg.store.pause(True)
    assert reg.store.claim(doc, now(), TICKET_LEASE) is Claim.FULL
    assert reg.holders("paused") == [] and "dispatched_until" not in reg.live(doc["_id"])
    reg.store.pause(False)
    assert reg.store.claim(reg.live(doc["_id"]), later(1), TICKET_LEASE) is Claim.TICKET


@pytest.mark.parametrize("how", ["not due", "killed", "removal requested", "deleted"])
def test_claim_of_a_job_no_longer_due_is_gone_and_holds_no_slot(reg: Registry, how: str) -> None:
    doc = reg.enqueue("gone")
    if how == "not due":
        reg.connection.jobs.update_one({"_id": doc["_id"]}, {"$set": {"query_at": later(600), "front_at": later(600)}})
    elif how == "killed":
        assert reg.store.kill(doc, "test")
    elif how == "removal requested":
        assert reg.store.request_remove(doc["_id"])
    else:
        reg.connection.jobs.delete_one({"_id": doc["_id"]})
    before = reg.live(doc["_id"])
    assert reg.store.claim(doc, now(), TICKET_LEASE) is Claim.GONE
    assert reg.holders("gone") == [] and reg.free() == CAPACITY
    assert reg.live(doc["_id"]) == before


# -- start ----------------------------------------------------------------------
def test_start_makes_the_job_running_under_the_run_lock(reg: Registry, hook: CommandHook) -> None:
    doc = reg.dispatched("start", defer_max=120, attempts=3, defer_time=7, error_time=8, progress_interval=2,
                         max_parallel=4)
    ticket = ticket_header(reg.live(doc["_id"]))
    locked = lock("w-start")
    with hook.record() as commands:
        run = reg.store.start(doc["_id"], "start", locked, ticket)
    assert commands == [("update", reg.connection.jobs.name)]  # the ticket's fields save the read
    assert run is not None
    live = reg.live(doc["_id"])
    assert live["state"] == "running"
    assert live["trial"] == 1
    assert live["locked"] == locked
    assert live["started_at"] == locked["at"]
    assert live["inactive_at"] == locked["at"] + timedelta(seconds=120)
    assert "dispatched_until" not in live
    assert live["attempts_left"] == 3  # starting uses no attempt; the ending does
    assert (run.job_id, run.name, run.token, run.rev, run.started_at) == (
        doc["_id"], "start", locked["run"], live["rev"], locked["at"])
    assert (run.trial, run.attempts_left, run.runtime) == (1, 3, 0.0)
    assert (run.defer_time, run.error_time, run.progress_interval) == (7, 8, 2)
    assert (run.queue, run.max_parallel, run.args) == (DEFAULT_QUEUE, 4, None)
    assert reg.holders("start") == [doc["_id"]]  # running: still its slots


def test_start_without_the_tickets_fields_reads_the_job(reg: Registry, hook: CommandHook) -> None:
    """A ticket without the header (published by an older dispatcher): the same run, plus a read."""
    doc = reg.dispatched("start-read", {"a": 1}, attempts=2, defer_time=5)
    with_header = reg.store.start(doc["_id"], "start-read", lock(), ticket_header(reg.live(doc["_id"])))
    assert with_header is not None
    assert reg.store.recover(reg.live(doc["_id"]), "again")  # a second trial, to see the trial count read back
    assert reg.store.claim(reg.live(doc["_id"]), later(1), TICKET_LEASE) is Claim.TICKET
    locked = lock()
    with hook.record() as commands:
        run = reg.store.start(doc["_id"], "start-read", locked, None)
    assert [command for command, _ in commands] == ["update", "find"]
    assert run is not None
    live = reg.live(doc["_id"])
    assert live["trial"] == 2 and live["locked"] == locked
    assert (run.trial, run.attempts_left, run.defer_time, run.token, run.rev) == (2, 2, 5, locked["run"], live["rev"])
    assert run.args == {"a": 1}  # the arguments come with the read


def test_a_second_start_of_the_same_ticket_is_refused(reg: Registry) -> None:
    doc = reg.dispatched("dup-start")
    first = reg.start(doc, "w1")
    started = reg.live(doc["_id"])
    ticket = ticket_header(doc)
    assert reg.store.start(doc["_id"], "dup-start", lock("w2"), ticket) is None
    assert reg.store.start(doc["_id"], "dup-start", lock("w2"), None) is None
    live = reg.live(doc["_id"])
    assert live == started  # nothing written by the loser
    assert live["trial"] == 1 and live["locked"]["worker"] == "w1" and live["rev"] == first.rev


@pytest.mark.parametrize("how", ["never dispatched", "ticket requeued", "killed", "removal requested"])
def test_a_stale_ticket_does_not_start(reg: Registry, how: str) -> None:
    doc = reg.enqueue("stale") if how == "never dispatched" else reg.dispatched("stale")
    if how == "ticket requeued":
        assert reg.store.requeue_lost(later(TICKET_LEASE + 5)) == 1
    elif how == "killed":
        assert reg.store.kill(reg.live(doc["_id"]), "test")
    elif how == "removal requested":
        assert reg.store.request_remove(doc["_id"])
    before = reg.live(doc["_id"])
    assert reg.store.start(doc["_id"], "stale", lock(), ticket_header(doc)) is None
    assert reg.store.start(doc["_id"], "stale", lock(), None) is None
    assert reg.live(doc["_id"]) == before
    assert before is not None and before["state"] != "running"


def test_a_ticket_of_an_earlier_trial_does_not_start(reg: Registry) -> None:
    """The trial guard: a late duplicate of trial 1's ticket meets the job dispatched for trial 2; its fields
    (attempts left, runtime) are not the job's any more, so it must not start the job."""
    doc = reg.dispatched("old-ticket", attempts=3, error_time=0.001)
    old_ticket = ticket_header(reg.live(doc["_id"]))
    run = reg.start(doc)
    assert reg.store.fail(run, {"exception": "E", "traceback": None, "at": now()}, now()) is State.FAILED
    assert reg.give(run)
    assert reg.store.claim(reg.live(doc["_id"]), later(1), TICKET_LEASE) is Claim.TICKET
    dispatched = reg.live(doc["_id"])
    assert reg.store.start(doc["_id"], "old-ticket", lock(), old_ticket) is None
    assert reg.live(doc["_id"]) == dispatched
    second = reg.start(doc)  # the current ticket does start it
    assert (second.trial, second.attempts_left) == (2, 2)


def test_inactive_at_is_set_at_the_first_start_and_kept_on_later_starts(reg: Registry) -> None:
    first, run = reg.running("window", defer_time=0.001, defer_max=3600)
    window = first["inactive_at"]
    assert reg.store.defer(run, now(), "later") is not None
    assert reg.give(run)
    second, again = reg.claim_and_start(first)
    assert second["trial"] == 2 and again.trial == 2
    assert second["inactive_at"] == window
    assert second["started_at"] >= first["started_at"]


# -- endings of a run -----------------------------------------------------------
def test_complete_journals_the_final_copy_and_deletes_the_live_job(reg: Registry, hook: CommandHook) -> None:
    other, _ = reg.running("done", max_parallel=2)
    doc, run = reg.running("done", max_parallel=2, attempts=3)
    stamp = later(2, doc["started_at"])
    with hook.record() as commands:
        assert reg.store.complete(run, {"answer": 42}, stamp)
    jobs = reg.connection.jobs.name
    assert commands == [("aggregate", jobs), ("delete", jobs)]  # fast path: server-side copy, guarded delete
    assert reg.live(doc["_id"]) is None
    assert reg.journal_count(doc["_id"]) == 1
    final = reg.journaled(doc["_id"])
    assert final is not None
    assert final["state"] == "complete"
    assert final["result"] == {"answer": 42}
    assert final["run"] == doc["locked"]["run"]
    assert final["locked"] is None
    assert final["finished_at"] == stamp
    assert final["runtime"] == pytest.approx(2.0)
    assert final["prog"] == {"value": 1.0, "message": ""}
    assert final["attempts_left"] == 2
    assert final["trial"] == 1 and final["args"] == doc["args"]
    assert final["source_rev"] == run.rev and final["rev"] != run.rev
    assert final["started_at"] == doc["started_at"] and final["enqueued"] == doc["enqueued"]
    found = reg.store.find(doc["_id"])
    assert found is not None and found["journaled"] is True and found["result"] == {"answer": 42}
    # the ending frees nothing; the finishing process gives its slots, once
    assert reg.holders("done") == [other["_id"], doc["_id"]] and reg.free() == CAPACITY - 2
    assert reg.give(run)
    assert reg.holders("done") == [other["_id"]] and reg.free() == CAPACITY - 1
    state = reg.raw_slots()
    assert not reg.give(run)
    assert reg.raw_slots() == state


def test_complete_of_a_job_changed_during_the_run_journals_the_change(reg: Registry, hook: CommandHook) -> None:
    """A flag written during the run moves the live rev: the server copies nothing and the completion
    falls back to a full-document proposal carrying the flag."""
    doc, run = reg.running("changed", attempts=2)
    assert reg.store.flag(doc, "zombie_at", now())
    with hook.record() as commands:
        assert reg.store.complete(run, "r", now())
    journal = reg.connection.journal.name
    assert ("insert", journal) in commands  # the full-document proposal
    assert reg.live(doc["_id"]) is None and reg.journal_count(doc["_id"]) == 1
    copy = reg.journaled(doc["_id"])
    assert copy["state"] == "complete" and copy["result"] == "r" and copy["zombie_at"] is not None
    assert copy["attempts_left"] == 1 and copy["locked"] is None
    assert reg.give(run) and reg.holders("changed") == []


def test_complete_replaces_a_stale_journal_copy(reg: Registry) -> None:
    """A copy left by a mover that died before its delete (of an older version): the server-side copy meets
    it (a duplicate), and the completion's full-document proposal replaces it."""
    doc, run = reg.running("stale-copy")
    stale = {**doc, "rev": ObjectId(), "source_rev": ObjectId(), "state": "pending", "result": "stale"}
    reg.connection.journal.insert_one(stale)
    assert reg.store.complete(run, "fresh", now())
    assert reg.live(doc["_id"]) is None and reg.journal_count(doc["_id"]) == 1
    copy = reg.journaled(doc["_id"])
    assert copy["state"] == "complete" and copy["result"] == "fresh" and copy["run"] == run.token
    assert reg.give(run)


def test_defer_waits_defer_time_and_keeps_the_slots_until_given(reg: Registry) -> None:
    doc, run = reg.running("defer", defer_time=90)
    stamp = later(1, doc["started_at"])
    query_at = reg.store.defer(run, stamp, "not yet")
    assert query_at == stamp + timedelta(seconds=90)
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "deferred"
    assert live["query_at"] == query_at
    assert live["locked"] is None and live["run"] == doc["locked"]["run"]
    assert live["finished_at"] == stamp and live["runtime"] == pytest.approx(1.0)
    assert live["last_error"]["exception"] == "JobDeferred('not yet')"
    assert live["attempts_left"] == doc["attempts_left"]  # deferring uses no attempt
    assert reg.journal_count(doc["_id"]) == 0
    assert reg.holders("defer") == [doc["_id"]]  # the ending frees nothing
    assert reg.give(run)
    assert reg.holders("defer") == [] and reg.free() == CAPACITY


def test_fail_with_attempts_left_is_failed_and_due_after_error_time(reg: Registry) -> None:
    doc, run = reg.running("fail", attempts=2, error_time=30)
    stamp = now()
    error = {"exception": "ValueError('x')", "traceback": ["line"], "at": stamp}
    assert reg.store.fail(run, error, stamp) is State.FAILED
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "failed"
    assert live["attempts_left"] == 1
    assert live["query_at"] == stamp + timedelta(seconds=30)
    assert live["last_error"] == error
    assert live["locked"] is None
    assert reg.holders("fail") == [doc["_id"]]
    assert reg.give(run) and reg.holders("fail") == []


def test_fail_without_attempts_left_is_error(reg: Registry) -> None:
    doc, run = reg.running("error", attempts=2, error_time=0.001)
    assert reg.store.fail(run, {"exception": "E1", "traceback": None, "at": now()}, now()) is State.FAILED
    assert reg.give(run)
    _, second = reg.claim_and_start(doc)
    assert second.attempts_left == 1
    stamp = now()
    assert reg.store.fail(second, {"exception": "E2", "traceback": None, "at": stamp}, stamp) is State.ERROR
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "error"
    assert live["attempts_left"] == 0
    assert live["query_at"] is None
    assert live["last_error"]["exception"] == "E2"
    assert live["trial"] == 2
    assert reg.give(second) and reg.holders("error") == []
    assert reg.store.due(later(3600), 100) == []  # a final job is never due


def test_runtime_adds_up_over_the_trials(reg: Registry) -> None:
    doc, run = reg.running("runtime", defer_time=0.001)
    ended = later(3, run.started_at)
    assert reg.store.defer(run, ended, "later") is not None
    assert reg.give(run)
    assert reg.store.claim(reg.live(doc["_id"]), later(1, ended), TICKET_LEASE) is Claim.TICKET
    second = reg.start(doc)
    assert second.runtime == pytest.approx(3.0)  # carried by the ticket
    assert reg.store.complete(second, None, later(2, second.started_at))
    assert reg.journaled(doc["_id"])["runtime"] == pytest.approx(5.0)
    assert reg.give(second)


def test_inactivate_ends_a_deferred_job_due_again(reg: Registry) -> None:
    doc, run = reg.running("inactive", defer_time=0.001)
    assert reg.store.defer(run, now(), "wait") is not None
    assert reg.give(run)
    deferred = reg.live(doc["_id"])
    assert deferred is not None
    stamp = later(1)
    assert reg.store.inactivate(deferred, stamp)
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "inactive" and live["query_at"] is None and live["finished_at"] == stamp
    assert not reg.store.inactivate(deferred, stamp)  # once
    assert reg.holders("inactive") == [] and reg.free() == CAPACITY


def test_inactivate_refuses_jobs_that_are_not_deferred_and_due(reg: Registry) -> None:
    pending = reg.enqueue("not-inactive")
    assert not reg.store.inactivate(pending, later(1))
    doc, run = reg.running("not-inactive", defer_time=600)
    assert reg.store.defer(run, now(), "wait") is not None
    assert reg.give(run)
    assert not reg.store.inactivate(reg.live(doc["_id"]), now())  # deferred, not yet due
    assert reg.live(pending["_id"])["state"] == "pending"
    assert reg.live(doc["_id"])["state"] == "deferred"


def test_requeue_lost_reissues_expired_tickets_only(reg: Registry) -> None:
    lost = reg.dispatched("requeue", max_parallel=5)
    running, _ = reg.running("requeue", max_parallel=5)
    assert reg.store.requeue_lost(now()) == 0  # within the lease
    before = reg.generation()
    stamp = later(TICKET_LEASE + 5)
    assert reg.store.requeue_lost(stamp) == 1
    live = reg.live(lost["_id"])
    assert live is not None
    assert "dispatched_until" not in live and live["query_at"] == stamp and live["state"] == "pending"
    assert reg.holders("requeue") == [running["_id"]]  # requeue frees the lost ticket's slots itself
    assert reg.free() == CAPACITY - 1
    assert reg.generation() == before + 1
    assert reg.store.requeue_lost(stamp) == 0
    assert reg.store.claim(live, stamp, TICKET_LEASE) is Claim.TICKET  # due again


def test_recover_puts_a_dead_run_back_in_the_queue_without_using_an_attempt(reg: Registry) -> None:
    doc, _ = reg.running("recover", attempts=2)
    before = reg.generation()
    assert reg.store.recover(doc, "lease expired")
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "pending"
    assert live["locked"] is None
    assert close_to(live["query_at"], now())
    assert live["attempts_left"] == 2
    assert live["last_error"]["exception"] == "WorkerLost('lease expired')"
    assert live["last_error"]["worker"] == "w1"
    assert reg.holders("recover") == [] and reg.free() == CAPACITY  # recovery frees the slots itself
    assert reg.generation() == before + 1
    assert reg.journal_count(doc["_id"]) == 0
    state = reg.slots()
    assert not reg.store.recover(doc, "again")  # a second recovery of the same run changes nothing
    assert reg.live(doc["_id"]) == live and reg.slots() == state
    again, second = reg.claim_and_start(doc)
    assert again["trial"] == 2 and again["attempts_left"] == 2 and second.trial == 2
    assert reg.holders("recover") == [doc["_id"]] and reg.free() == CAPACITY - 1


def test_recover_of_a_run_asked_to_die_ends_it_killed(reg: Registry) -> None:
    doc, _ = reg.running("recover-kill")
    assert reg.store.request_kill(doc["_id"])
    assert reg.store.recover(reg.live(doc["_id"]), "lease expired")
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "killed" and live["locked"] is None
    assert reg.holders("recover-kill") == [] and reg.free() == CAPACITY


def test_expired_runs_lists_running_jobs_past_their_lease(reg: Registry) -> None:
    doc, _ = reg.running("expired")
    assert reg.store.expired_runs(now()) == []
    expired = reg.store.expired_runs(later(60))
    assert [d["_id"] for d in expired] == [doc["_id"]]


# -- kill -----------------------------------------------------------------------
@pytest.mark.parametrize("dispatched", [False, True])
def test_kill_of_a_waiting_job(reg: Registry, dispatched: bool) -> None:
    doc = reg.dispatched("kill-wait") if dispatched else reg.enqueue("kill-wait")
    assert reg.store.kill(reg.live(doc["_id"]), "by test")
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "killed"
    assert live["killed_at"] is not None and live["query_at"] is None
    assert "dispatched_until" not in live
    assert live["last_error"]["exception"] == "JobKilled('by test')"
    assert reg.holders("kill-wait") == [] and reg.free() == CAPACITY
    assert not reg.store.kill(reg.live(doc["_id"]), "twice")


def test_kill_of_a_running_job(reg: Registry) -> None:
    doc, run = reg.running("kill-run", attempts=2)
    assert reg.store.kill(doc, "by test")
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "killed"
    assert live["locked"] is None and live["killed_at"] is not None
    assert live["runtime"] >= 0
    assert live["attempts_left"] == 2
    assert reg.holders("kill-run") == [] and reg.free() == CAPACITY  # kill frees the slots itself
    assert reg.store.complete(run, "late", now()) is False  # the killed run cannot complete any more
    assert reg.journal_count(doc["_id"]) == 0
    assert reg.live(doc["_id"]) == live


def test_kill_of_a_running_job_by_an_older_run_is_refused(reg: Registry) -> None:
    old, _ = reg.running("kill-old")
    assert reg.store.recover(old, "lease expired")
    new, _ = reg.claim_and_start(old)
    assert not reg.store.kill(old, "stale")
    assert reg.live(old["_id"]) == new
    assert reg.holders("kill-old") == [old["_id"]]


def test_request_kill_flags_a_running_job_only(reg: Registry) -> None:
    pending = reg.enqueue("request-kill")
    assert not reg.store.request_kill(pending["_id"])
    doc, _ = reg.running("request-kill")
    assert reg.store.request_kill(doc["_id"])
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "running" and live["killed_at"] is not None
    assert not reg.store.request_kill(doc["_id"])  # set once
    assert reg.live(doc["_id"])["killed_at"] == live["killed_at"]
    assert reg.live(pending["_id"])["killed_at"] is None
    assert reg.holders("request-kill") == [doc["_id"]]  # the run goes on until its worker ends it


@pytest.mark.parametrize("ending", ["fail", "defer"])
def test_a_kill_requested_during_the_run_wins_over_its_failure_or_deferral(reg: Registry, ending: str) -> None:
    doc, run = reg.running("kill-wins", attempts=3)
    assert reg.store.request_kill(doc["_id"])
    if ending == "fail":
        reg.store.fail(run, {"exception": "E", "traceback": None, "at": now()}, now())
    else:
        reg.store.defer(run, now(), "later")
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "killed" and live["attempts_left"] == 3 and live["locked"] is None
    assert live["query_at"] is None
    assert reg.holders("kill-wins") == [] and reg.free() == CAPACITY  # the kill freed them


@pytest.mark.parametrize("ending", ["fail", "defer"])
def test_an_ending_overruled_by_a_kill_does_not_report_itself(reg: Registry, ending: str) -> None:
    doc, run = reg.running("kill-report", attempts=3)
    assert reg.store.request_kill(doc["_id"])
    if ending == "fail":
        reported: Any = reg.store.fail(run, {"exception": "E", "traceback": None, "at": now()}, now())
    else:
        reported = reg.store.defer(run, now(), "later")
    assert reg.live(doc["_id"])["state"] == "killed"
    assert reported in (None, State.KILLED), f"{ending}() reported {reported!r} for a killed job"


# -- remove ---------------------------------------------------------------------
def test_request_remove_then_remove_journals_a_waiting_job(reg: Registry) -> None:
    doc = reg.dispatched("remove")
    assert reg.store.remove(doc["_id"]) is None  # not flagged: nothing happens
    assert reg.store.request_remove(doc["_id"])
    flagged = reg.live(doc["_id"])
    assert flagged is not None and flagged["removed_at"] is not None and flagged["query_at"] is None
    assert not reg.store.request_remove(doc["_id"])  # once
    removed = reg.store.remove(doc["_id"])
    assert removed is not None and removed["_id"] == doc["_id"]
    assert reg.live(doc["_id"]) is None
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["state"] == "pending" and copy["removed_at"] == flagged["removed_at"]
    assert reg.journal_count(doc["_id"]) == 1
    assert reg.holders("remove") == [] and reg.free() == CAPACITY  # the dispatched job's slots are freed
    assert reg.store.remove(doc["_id"]) is None
    assert reg.store.start(doc["_id"], "remove", lock(), ticket_header(doc)) is None  # its ticket arrives late


def test_remove_of_a_running_job_waits_unless_hard(reg: Registry) -> None:
    doc, run = reg.running("remove-run")
    assert reg.store.request_remove(doc["_id"])
    assert reg.store.remove(doc["_id"]) is None
    assert reg.store.sweep_removed() == 0
    assert reg.live(doc["_id"])["state"] == "running"
    removed = reg.store.remove(doc["_id"], hard=True)
    assert removed is not None
    assert reg.live(doc["_id"]) is None
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["state"] == "running" and "result" not in copy
    assert reg.holders("remove-run") == [] and reg.free() == CAPACITY
    # its process runs on; none of its endings writes anything
    assert reg.store.complete(run, "late", now()) is False
    assert reg.store.defer(run, now(), "late") is None
    assert reg.store.fail(run, {"exception": "E", "traceback": None, "at": now()}, now()) is None
    assert reg.journaled(doc["_id"]) == copy
    assert reg.live(doc["_id"]) is None


def test_sweep_removed_journals_flagged_jobs_that_are_not_running(reg: Registry) -> None:
    waiting = reg.enqueue("sweep")
    running, run = reg.running("sweep")
    kept = reg.enqueue("sweep")
    assert reg.store.request_remove(waiting["_id"]) and reg.store.request_remove(running["_id"])
    assert reg.store.sweep_removed() == 1
    assert reg.live(waiting["_id"]) is None and reg.journal_count(waiting["_id"]) == 1
    assert reg.live(running["_id"]) is not None and reg.live(kept["_id"]) is not None
    assert reg.store.complete(run, "ok", now())  # a flagged run may still complete
    assert reg.journaled(running["_id"])["state"] == "complete"
    assert reg.give(run)


# -- restart --------------------------------------------------------------------
def test_restart_waiting_makes_a_deferred_or_failed_job_due_now(reg: Registry) -> None:
    doc, run = reg.running("restart", defer_time=3600)
    assert reg.store.defer(run, now(), "later") is not None
    assert reg.give(run)
    before = reg.generation()
    assert reg.store.restart_waiting(doc["_id"])
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "deferred" and close_to(live["query_at"], now())
    assert reg.generation() == before + 1
    assert [d["_id"] for d in reg.store.due(now(), 10)] == [doc["_id"]]
    pending = reg.enqueue("restart")
    assert not reg.store.restart_waiting(pending["_id"])  # only deferred and failed
    assert reg.store.request_remove(doc["_id"])
    assert not reg.store.restart_waiting(doc["_id"])  # not when flagged for removal


def test_claim_restart_journals_a_stopped_job_with_its_successor_id(reg: Registry) -> None:
    doc, run = reg.running("claim-restart")
    assert reg.store.fail(run, {"exception": "E", "traceback": None, "at": now()}, now()) is State.ERROR
    assert reg.give(run)
    pending = reg.enqueue("claim-restart")
    assert reg.store.claim_restart(pending["_id"], ObjectId()) is None  # not stopped
    child = ObjectId()
    archived = reg.store.claim_restart(doc["_id"], child)
    assert archived is not None
    assert archived["enqueued"]["child_id"] == child and archived["state"] == "error"
    assert reg.live(doc["_id"]) is None
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["enqueued"]["child_id"] == child and copy["state"] == "error"
    assert reg.store.claim_restart(doc["_id"], ObjectId()) is None
    assert reg.store.claim_restart(doc["_id"], child) is None
    assert reg.journal_count(doc["_id"]) == 1
    assert reg.live(pending["_id"])["state"] == "pending"


def test_claim_restart_by_two_operators_reserves_one_successor(reg: Registry) -> None:
    doc = reg.enqueue("restart-two")
    assert reg.store.kill(doc, "stop")
    # the first claim's reservation landed; a second operator with another child id loses
    first, second = ObjectId(), ObjectId()
    assert reg.store.claim_restart(doc["_id"], first) is not None
    assert reg.store.claim_restart(doc["_id"], second) is None
    assert reg.journaled(doc["_id"])["enqueued"]["child_id"] == first


# -- care of running jobs -------------------------------------------------------
def test_flag_is_set_once_by_the_current_run(reg: Registry) -> None:
    doc, _ = reg.running("flag")
    stamp = now()
    assert reg.store.flag(doc, "zombie_at", stamp)
    live = reg.live(doc["_id"])
    assert live is not None and live["zombie_at"] == stamp and live["state"] == "running" and live["wall_at"] is None
    assert not reg.store.flag(doc, "zombie_at", later(5))
    assert reg.live(doc["_id"])["zombie_at"] == stamp
    assert reg.store.flag(doc, "wall_at", stamp)
    assert reg.store.recover(reg.live(doc["_id"]), "lost")
    reg.claim_and_start(doc)
    stale = reg.live(doc["_id"])
    assert not reg.store.flag(doc, "zombie_at", later(10))  # the old run's token
    assert reg.live(doc["_id"]) == stale


def test_progress_is_written_by_the_current_run_only(reg: Registry) -> None:
    doc, run = reg.running("progress")
    reg.store.progress(run, 0.5, "half")
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["prog"] == {"value": 0.5, "message": "half"}
    assert live["locked"]["heartbeat"] >= doc["locked"]["heartbeat"]
    assert live["rev"] == doc["rev"] == run.rev  # progress is not a transition: the fast completion still applies
    assert reg.store.recover(live, "lost")
    after = reg.live(doc["_id"])
    reg.store.progress(run, 0.9, "stale")
    assert reg.live(doc["_id"]) == after


def test_renew_extends_the_leases_of_the_workers_own_running_jobs(reg: Registry) -> None:
    mine, _ = reg.running("renew", worker="w1", max_parallel=5)
    theirs, _ = reg.running("renew", worker="w2", max_parallel=5)
    waiting = reg.enqueue("renew", max_parallel=5)
    reg.store.renew("w1", [mine["_id"], theirs["_id"], waiting["_id"]], 600)
    assert close_to(reg.live(mine["_id"])["locked"]["lease_until"], later(600))
    assert reg.live(theirs["_id"])["locked"] == theirs["locked"]
    assert reg.live(waiting["_id"]) == waiting
    assert [d["_id"] for d in reg.store.expired_runs(later(60))] == [theirs["_id"]]


# -- reads that the dispatcher relies on ----------------------------------------
def test_due_orders_force_then_priority_then_fifo(reg: Registry) -> None:
    low = reg.enqueue("order", priority=0)
    high = reg.enqueue("order", priority=5)
    low2 = reg.enqueue("order", priority=0)
    forced = reg.enqueue("order", priority=-3, force=True)
    later_job = reg.enqueue("order", priority=9)
    reg.connection.jobs.update_one({"_id": later_job["_id"]}, {"$set": {"query_at": later(600), "front_at": later(600)}})
    assert [d["_id"] for d in reg.store.due(now(), 10)] == [forced["_id"], high["_id"], low["_id"], low2["_id"]]
    assert [d["_id"] for d in reg.store.due(now(), 2)] == [forced["_id"], high["_id"]]


def test_due_candidates_carry_the_tickets_fields(reg: Registry) -> None:
    doc = reg.enqueue("fields", attempts=4, defer_time=3, queue="q9")
    (candidate,) = reg.store.due(now(), 10)
    assert ticket_header(candidate) == ticket_header(reg.live(doc["_id"]))
    assert candidate["queue"] == "q9" and candidate["attempts_left"] == 4


def test_busy_by_queue_counts_running_and_dispatched_jobs(reg: Registry) -> None:
    reg.running("busy", max_parallel=5)
    reg.dispatched("busy", max_parallel=5)
    reg.enqueue("busy", max_parallel=5)
    assert reg.store.busy_by_queue() == {None: 2}
    assert reg.store.due(EPOCH, 10) == []
    assert reg.free() == CAPACITY - 2
