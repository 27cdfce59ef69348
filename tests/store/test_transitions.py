"""Every transition of the state table through its JobStore method, checked on the stored documents."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId

from core4celery.clock import EPOCH, later, now
from core4celery.config.options import JobOptions
from core4celery.errors import JobExists
from core4celery.store.document import new_job
from core4celery.store.jobs import Claim
from core4celery.store.states import State

from .conftest import TICKET_LEASE, Registry, lock


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
    assert reg.holders("enq") == []


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


# -- claim ----------------------------------------------------------------------
def test_claim_ticket_takes_the_slot_and_marks_the_job_dispatched(reg: Registry) -> None:
    doc = reg.enqueue("claim")
    stamp = now()
    assert reg.store.claim(doc, stamp, TICKET_LEASE) is Claim.TICKET
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "pending"  # users still see a waiting job
    assert live["query_at"] is None
    assert close_to(live["dispatched_until"], later(TICKET_LEASE, stamp))
    assert live["rev"] is not None
    assert reg.holders("claim") == [doc["_id"]]


def test_claim_of_a_job_holding_its_slot_is_held(reg: Registry) -> None:
    doc = reg.enqueue("held")
    assert reg.store.claim(doc, now(), TICKET_LEASE) is Claim.TICKET
    rev = reg.live(doc["_id"])["rev"]
    assert reg.store.claim(doc, now(), TICKET_LEASE) is Claim.HELD
    assert reg.holders("held") == [doc["_id"]]
    assert reg.live(doc["_id"])["rev"] == rev
    reg.store.start(doc["_id"], lock())
    assert reg.store.claim(doc, now(), TICKET_LEASE) is Claim.HELD  # running: still its slot
    assert reg.holders("held") == [doc["_id"]]


def test_claim_respects_max_parallel(reg: Registry) -> None:
    docs = [reg.enqueue("par", max_parallel=2) for _ in range(3)]
    claims = [reg.store.claim(doc, now(), TICKET_LEASE) for doc in docs]
    assert claims == [Claim.TICKET, Claim.TICKET, Claim.FULL]
    assert reg.holders("par") == [docs[0]["_id"], docs[1]["_id"]]
    third = reg.live(docs[2]["_id"])
    assert third is not None and "dispatched_until" not in third and third["query_at"] == docs[2]["query_at"]
    # a freed slot goes to the next claim
    first = reg.store.start(docs[0]["_id"], lock())
    assert first is not None and reg.store.complete(first, None, now())
    assert reg.store.claim(docs[2], now(), TICKET_LEASE) is Claim.TICKET
    assert sorted(reg.holders("par")) == sorted([docs[1]["_id"], docs[2]["_id"]])


@pytest.mark.parametrize("how", ["not due", "killed", "removal requested", "deleted"])
def test_claim_of_a_job_no_longer_due_is_gone_and_holds_no_slot(reg: Registry, how: str) -> None:
    doc = reg.enqueue("gone")
    if how == "not due":
        reg.connection.jobs.update_one({"_id": doc["_id"]}, {"$set": {"query_at": later(600)}})
    elif how == "killed":
        assert reg.store.kill(doc, "test")
    elif how == "removal requested":
        assert reg.store.request_remove(doc["_id"])
    else:
        reg.connection.jobs.delete_one({"_id": doc["_id"]})
    before = reg.live(doc["_id"])
    assert reg.store.claim(doc, now(), TICKET_LEASE) is Claim.GONE
    assert reg.holders("gone") == []
    assert reg.live(doc["_id"]) == before


# -- start ----------------------------------------------------------------------
def test_start_makes_the_job_running_under_the_run_lock(reg: Registry) -> None:
    doc = reg.dispatched("start", defer_max=120)
    locked = lock("w-start")
    started = reg.store.start(doc["_id"], locked)
    assert started is not None
    live = reg.live(doc["_id"])
    assert started == live
    assert live["state"] == "running"
    assert live["trial"] == 1
    assert live["locked"] == locked
    assert live["started_at"] == locked["at"]
    assert live["inactive_at"] == locked["at"] + timedelta(seconds=120)
    assert "dispatched_until" not in live
    assert live["attempts_left"] == 1  # starting uses no attempt; the ending does
    assert reg.holders("start") == [doc["_id"]]


def test_a_second_start_of_the_same_ticket_is_refused(reg: Registry) -> None:
    doc = reg.dispatched("dup-start")
    first = reg.store.start(doc["_id"], lock("w1"))
    assert first is not None
    assert reg.store.start(doc["_id"], lock("w2")) is None
    live = reg.live(doc["_id"])
    assert live == first  # nothing written by the loser
    assert live["trial"] == 1 and live["locked"]["worker"] == "w1"


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
    assert reg.store.start(doc["_id"], lock()) is None
    assert reg.live(doc["_id"]) == before
    assert before is not None and before["state"] != "running"


def test_inactive_at_is_set_at_the_first_start_and_kept_on_later_starts(reg: Registry) -> None:
    first = reg.running("window", defer_time=0.001, defer_max=3600)
    window = first["inactive_at"]
    assert reg.store.defer(first, now(), "later") is not None
    second = reg.claim_and_start(first)
    assert second["trial"] == 2
    assert second["inactive_at"] == window
    assert second["started_at"] >= first["started_at"]


# -- endings of a run -----------------------------------------------------------
def test_complete_journals_the_final_copy_and_deletes_the_live_job(reg: Registry) -> None:
    other = reg.running("done", max_parallel=2)
    doc = reg.running("done", max_parallel=2, attempts=3)
    stamp = later(2, doc["started_at"])
    assert reg.store.complete(doc, {"answer": 42}, stamp)
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
    assert reg.holders("done") == [other["_id"]]  # its own slot freed, no other
    found = reg.store.find(doc["_id"])
    assert found is not None and found["journaled"] is True and found["result"] == {"answer": 42}


def test_defer_waits_defer_time_and_frees_the_slot(reg: Registry) -> None:
    doc = reg.running("defer", defer_time=90)
    stamp = later(1, doc["started_at"])
    query_at = reg.store.defer(doc, stamp, "not yet")
    assert query_at == stamp + timedelta(seconds=90)
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "deferred"
    assert live["query_at"] == query_at
    assert live["locked"] is None and live["run"] == doc["locked"]["run"]
    assert live["finished_at"] == stamp and live["runtime"] == pytest.approx(1.0)
    assert live["last_error"]["exception"] == "JobDeferred('not yet')"
    assert live["attempts_left"] == doc["attempts_left"]  # deferring uses no attempt
    assert reg.holders("defer") == []
    assert reg.journal_count(doc["_id"]) == 0


def test_fail_with_attempts_left_is_failed_and_due_after_error_time(reg: Registry) -> None:
    doc = reg.running("fail", attempts=2, error_time=30)
    stamp = now()
    error = {"exception": "ValueError('x')", "traceback": ["line"], "at": stamp}
    assert reg.store.fail(doc, error, stamp) is State.FAILED
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "failed"
    assert live["attempts_left"] == 1
    assert live["query_at"] == stamp + timedelta(seconds=30)
    assert live["last_error"] == error
    assert live["locked"] is None
    assert reg.holders("fail") == []


def test_fail_without_attempts_left_is_error(reg: Registry) -> None:
    doc = reg.running("error", attempts=2, error_time=0.001)
    assert reg.store.fail(doc, {"exception": "E1", "traceback": None, "at": now()}, now()) is State.FAILED
    second = reg.claim_and_start(doc)
    stamp = now()
    assert reg.store.fail(second, {"exception": "E2", "traceback": None, "at": stamp}, stamp) is State.ERROR
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "error"
    assert live["attempts_left"] == 0
    assert live["query_at"] is None
    assert live["last_error"]["exception"] == "E2"
    assert live["trial"] == 2
    assert reg.holders("error") == []
    assert reg.store.due(later(3600), 100) == []  # a final job is never due


def test_inactivate_ends_a_deferred_job_due_again(reg: Registry) -> None:
    doc = reg.running("inactive", defer_time=0.001)
    assert reg.store.defer(doc, now(), "wait") is not None
    deferred = reg.live(doc["_id"])
    assert deferred is not None
    stamp = later(1)
    assert reg.store.inactivate(deferred, stamp)
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "inactive" and live["query_at"] is None and live["finished_at"] == stamp
    assert not reg.store.inactivate(deferred, stamp)  # once
    assert reg.holders("inactive") == []


def test_inactivate_refuses_jobs_that_are_not_deferred_and_due(reg: Registry) -> None:
    pending = reg.enqueue("not-inactive")
    assert not reg.store.inactivate(pending, later(1))
    doc = reg.running("not-inactive", defer_time=600)
    assert reg.store.defer(doc, now(), "wait") is not None
    assert not reg.store.inactivate(doc, now())  # deferred, not yet due
    assert reg.live(pending["_id"])["state"] == "pending"
    assert reg.live(doc["_id"])["state"] == "deferred"


def test_requeue_lost_reissues_expired_tickets_only(reg: Registry) -> None:
    lost = reg.dispatched("requeue", max_parallel=5)
    running = reg.running("requeue", max_parallel=5)
    assert reg.store.requeue_lost(now()) == 0  # within the lease
    before = reg.generation()
    stamp = later(TICKET_LEASE + 5)
    assert reg.store.requeue_lost(stamp) == 1
    live = reg.live(lost["_id"])
    assert live is not None
    assert "dispatched_until" not in live and live["query_at"] == stamp and live["state"] == "pending"
    assert reg.holders("requeue") == [running["_id"]]
    assert reg.generation() == before + 1
    assert reg.store.requeue_lost(stamp) == 0
    assert reg.store.claim(live, stamp, TICKET_LEASE) is Claim.TICKET  # due again


def test_recover_puts_a_dead_run_back_in_the_queue_without_using_an_attempt(reg: Registry) -> None:
    doc = reg.running("recover", attempts=2)
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
    assert reg.holders("recover") == []
    assert reg.generation() == before + 1
    assert reg.journal_count(doc["_id"]) == 0
    assert not reg.store.recover(doc, "again")  # a second recovery of the same run changes nothing
    assert reg.live(doc["_id"]) == live
    again = reg.claim_and_start(doc)
    assert again["trial"] == 2 and again["attempts_left"] == 2


def test_recover_of_a_run_asked_to_die_ends_it_killed(reg: Registry) -> None:
    doc = reg.running("recover-kill")
    assert reg.store.request_kill(doc["_id"])
    assert reg.store.recover(reg.live(doc["_id"]), "lease expired")
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "killed" and live["locked"] is None
    assert reg.holders("recover-kill") == []


def test_expired_runs_lists_running_jobs_past_their_lease(reg: Registry) -> None:
    doc = reg.running("expired")
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
    assert reg.holders("kill-wait") == []
    assert not reg.store.kill(reg.live(doc["_id"]), "twice")


def test_kill_of_a_running_job(reg: Registry) -> None:
    doc = reg.running("kill-run", attempts=2)
    assert reg.store.kill(doc, "by test")
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["state"] == "killed"
    assert live["locked"] is None and live["killed_at"] is not None
    assert live["runtime"] >= 0
    assert live["attempts_left"] == 2
    assert reg.holders("kill-run") == []
    assert reg.store.complete(doc, "late", now()) is False  # the killed run cannot complete any more
    assert reg.journal_count(doc["_id"]) == 0


def test_kill_of_a_running_job_by_an_older_run_is_refused(reg: Registry) -> None:
    old = reg.running("kill-old")
    assert reg.store.recover(old, "lease expired")
    new = reg.claim_and_start(old)
    assert not reg.store.kill(old, "stale")
    assert reg.live(old["_id"]) == new
    assert reg.holders("kill-old") == [old["_id"]]


def test_request_kill_flags_a_running_job_only(reg: Registry) -> None:
    pending = reg.enqueue("request-kill")
    assert not reg.store.request_kill(pending["_id"])
    doc = reg.running("request-kill")
    assert reg.store.request_kill(doc["_id"])
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "running" and live["killed_at"] is not None
    assert not reg.store.request_kill(doc["_id"])  # set once
    assert reg.live(doc["_id"])["killed_at"] == live["killed_at"]
    assert reg.live(pending["_id"])["killed_at"] is None


@pytest.mark.parametrize("ending", ["fail", "defer"])
def test_a_kill_requested_during_the_run_wins_over_its_failure_or_deferral(reg: Registry, ending: str) -> None:
    doc = reg.running("kill-wins", attempts=3)
    assert reg.store.request_kill(doc["_id"])
    if ending == "fail":
        reg.store.fail(doc, {"exception": "E", "traceback": None, "at": now()}, now())
    else:
        reg.store.defer(doc, now(), "later")
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "killed" and live["attempts_left"] == 3 and live["locked"] is None
    assert live["query_at"] is None
    assert reg.holders("kill-wins") == []


@pytest.mark.parametrize("ending", ["fail", "defer"])
def test_an_ending_overruled_by_a_kill_does_not_report_itself(reg: Registry, ending: str) -> None:
    doc = reg.running("kill-report", attempts=3)
    assert reg.store.request_kill(doc["_id"])
    if ending == "fail":
        reported: Any = reg.store.fail(doc, {"exception": "E", "traceback": None, "at": now()}, now())
    else:
        reported = reg.store.defer(doc, now(), "later")
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
    assert reg.holders("remove") == []  # the dispatched job's slot is freed
    assert reg.store.remove(doc["_id"]) is None
    assert reg.store.start(doc["_id"], lock()) is None  # its ticket arrives late


def test_remove_of_a_running_job_waits_unless_hard(reg: Registry) -> None:
    doc = reg.running("remove-run")
    assert reg.store.request_remove(doc["_id"])
    assert reg.store.remove(doc["_id"]) is None
    assert reg.store.sweep_removed() == 0
    assert reg.live(doc["_id"])["state"] == "running"
    removed = reg.store.remove(doc["_id"], hard=True)
    assert removed is not None
    assert reg.live(doc["_id"]) is None
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["state"] == "running" and "result" not in copy
    assert reg.holders("remove-run") == []
    # its process runs on; none of its endings writes anything
    assert reg.store.complete(doc, "late", now()) is False
    assert reg.store.defer(doc, now(), "late") is None
    assert reg.store.fail(doc, {"exception": "E", "traceback": None, "at": now()}, now()) is None
    assert reg.journaled(doc["_id"]) == copy
    assert reg.live(doc["_id"]) is None


def test_sweep_removed_journals_flagged_jobs_that_are_not_running(reg: Registry) -> None:
    waiting = reg.enqueue("sweep")
    running = reg.running("sweep")
    kept = reg.enqueue("sweep")
    assert reg.store.request_remove(waiting["_id"]) and reg.store.request_remove(running["_id"])
    assert reg.store.sweep_removed() == 1
    assert reg.live(waiting["_id"]) is None and reg.journal_count(waiting["_id"]) == 1
    assert reg.live(running["_id"]) is not None and reg.live(kept["_id"]) is not None
    assert reg.store.complete(running, "ok", now())  # a flagged run may still complete
    assert reg.journaled(running["_id"])["state"] == "complete"


# -- restart --------------------------------------------------------------------
def test_restart_waiting_makes_a_deferred_or_failed_job_due_now(reg: Registry) -> None:
    doc = reg.running("restart", defer_time=3600)
    assert reg.store.defer(doc, now(), "later") is not None
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
    doc = reg.running("claim-restart")
    assert reg.store.fail(doc, {"exception": "E", "traceback": None, "at": now()}, now()) is State.ERROR
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
    doc = reg.running("flag")
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
    doc = reg.running("progress")
    reg.store.progress(doc, 0.5, "half")
    live = reg.live(doc["_id"])
    assert live is not None
    assert live["prog"] == {"value": 0.5, "message": "half"}
    assert live["locked"]["heartbeat"] >= doc["locked"]["heartbeat"]
    assert live["rev"] == doc["rev"]  # progress is not a transition
    assert reg.store.recover(live, "lost")
    after = reg.live(doc["_id"])
    reg.store.progress(doc, 0.9, "stale")
    assert reg.live(doc["_id"]) == after


def test_renew_extends_the_leases_of_the_workers_own_running_jobs(reg: Registry) -> None:
    mine = reg.running("renew", worker="w1", max_parallel=5)
    theirs = reg.running("renew", worker="w2", max_parallel=5)
    waiting = reg.enqueue("renew", max_parallel=5)
    reg.store.renew("w1", [mine["_id"], theirs["_id"], waiting["_id"]], 600)
    assert close_to(reg.live(mine["_id"])["locked"]["lease_until"], later(600))
    assert reg.live(theirs["_id"])["locked"] == theirs["locked"]
    assert reg.live(waiting["_id"]) == waiting
    assert [d["_id"] for d in reg.store.expired_runs(later(60))] == [theirs["_id"]]


def test_repair_gates_frees_slots_nobody_uses(reg: Registry) -> None:
    dispatched = reg.dispatched("repair", max_parallel=5)
    running = reg.running("repair", max_parallel=5)
    waiting = reg.enqueue("repair", max_parallel=5)
    ghost = ObjectId()
    reg.connection.gates.update_one({"_id": "repair"}, {"$push": {"holders": {"$each": [waiting["_id"], ghost]}}})
    assert len(reg.holders("repair")) == 4
    assert reg.store.repair_gates() == 2
    assert sorted(reg.holders("repair")) == sorted([dispatched["_id"], running["_id"]])
    assert reg.store.repair_gates() == 0


# -- reads that the dispatcher relies on ----------------------------------------
def test_due_orders_force_then_priority_then_fifo(reg: Registry) -> None:
    low = reg.enqueue("order", priority=0)
    high = reg.enqueue("order", priority=5)
    low2 = reg.enqueue("order", priority=0)
    forced = reg.enqueue("order", priority=-3, force=True)
    later_job = reg.enqueue("order", priority=9)
    reg.connection.jobs.update_one({"_id": later_job["_id"]}, {"$set": {"query_at": later(600)}})
    assert [d["_id"] for d in reg.store.due(now(), 10)] == [forced["_id"], high["_id"], low["_id"], low2["_id"]]
    assert [d["_id"] for d in reg.store.due(now(), 2)] == [forced["_id"], high["_id"]]


def test_busy_by_queue_counts_running_and_dispatched_jobs(reg: Registry) -> None:
    reg.running("busy", max_parallel=5)
    reg.dispatched("busy", max_parallel=5)
    reg.enqueue("busy", max_parallel=5)
    assert reg.store.busy_by_queue() == {None: 2}
    assert reg.store.due(EPOCH, 10) == []
