"""Guarded races: two processes (two clients, two JobStores) on the same job, and finishers run twice.

Free races run in threads released together and are repeated; the windows
between the two commands of a move are hit exactly with :class:`CommandHook`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from bson import ObjectId

from core4celery.clock import later, now
from core4celery.store.jobs import Claim
from core4celery.store.states import State
from tests.workers import wait_for

from .conftest import RUN_LEASE, TICKET_LEASE, CommandHook, Job, Registry, lock, race

ROUNDS = 6


def journal_name(reg: Registry) -> str:
    return reg.connection.journal.name


def jobs_name(reg: Registry) -> str:
    return reg.connection.jobs.name


def cut_short_completion(reg: Registry, doc: Job, result: object) -> ObjectId:
    """What JobStore.complete leaves when its process dies after the journal insert, before the delete."""
    stamp = now()
    final = {
        **doc, "state": State.COMPLETE.value, "result": result, "finished_at": stamp,
        "runtime": (stamp - doc["started_at"]).total_seconds(), "locked": None,
        "run": doc["locked"]["run"], "prog": {"value": 1.0, "message": ""},
        "attempts_left": doc["attempts_left"] - 1, "rev": ObjectId(),
    }
    reg.connection.journal.insert_one(final)
    return final["rev"]


# -- dispatch and start ---------------------------------------------------------
def test_two_claimers_of_the_last_slot_one_ticket(reg: Registry, other: Registry) -> None:
    for round_ in range(ROUNDS):
        name = f"last-slot-{round_}"
        a, b = reg.enqueue(name, max_parallel=1), reg.enqueue(name, max_parallel=1)
        stamp = now()
        claims = race(partial(reg.store.claim, a, stamp, TICKET_LEASE), partial(other.store.claim, b, stamp, TICKET_LEASE))
        assert sorted(c.value for c in claims) == ["full", "ticket"], claims
        winner = a if claims[0] is Claim.TICKET else b
        loser = b if winner is a else a
        assert reg.holders(name) == [winner["_id"]]
        assert "dispatched_until" in reg.live(winner["_id"])
        assert "dispatched_until" not in reg.live(loser["_id"])


def test_two_claimers_of_the_same_job_one_ticket(reg: Registry, other: Registry) -> None:
    for round_ in range(ROUNDS):
        name = f"same-job-{round_}"
        doc = reg.enqueue(name, max_parallel=3)
        stamp = now()
        claims = race(partial(reg.store.claim, doc, stamp, TICKET_LEASE),
                      partial(other.store.claim, doc, stamp, TICKET_LEASE))
        assert sorted(c.value for c in claims) == ["held", "ticket"], claims
        assert reg.holders(name) == [doc["_id"]]


def test_two_starts_of_the_same_ticket_one_run(reg: Registry, other: Registry) -> None:
    for _ in range(ROUNDS):
        doc = reg.dispatched("two-starts")
        locks = [lock("w1"), lock("w2")]
        started = race(partial(reg.store.start, doc["_id"], locks[0]), partial(other.store.start, doc["_id"], locks[1]))
        winners = [i for i, s in enumerate(started) if s is not None]
        assert len(winners) == 1, started
        live = reg.live(doc["_id"])
        assert live is not None and live["trial"] == 1 and live["locked"] == locks[winners[0]]
        assert started[winners[0]] == live
        assert reg.store.complete(live, None, now())


def test_start_racing_requeue_lost_one_outcome(reg: Registry, other: Registry) -> None:
    for round_ in range(ROUNDS):
        name = f"start-requeue-{round_}"
        doc = reg.dispatched(name)
        started, requeued = race(partial(reg.store.start, doc["_id"], lock()),
                                 partial(other.store.requeue_lost, later(TICKET_LEASE + 5)))
        live = reg.live(doc["_id"])
        assert live is not None
        assert (started is None) == (requeued == 1), (started, requeued)
        if started is not None:
            assert live["state"] == "running" and reg.holders(name) == [doc["_id"]]
        else:
            assert live["state"] == "pending" and live["query_at"] is not None and reg.holders(name) == []
        assert "dispatched_until" not in live


# -- kill against complete ------------------------------------------------------
def check_one_outcome(reg: Registry, doc: Job, completed: bool, killed: bool, witness: Job) -> None:
    """Exactly one ending holds; journal and live agree; the job's slot is freed and no other."""
    assert completed != killed, (completed, killed)
    live = reg.live(doc["_id"])
    if completed:
        assert live is None
        assert reg.journal_count(doc["_id"]) == 1
        assert reg.journaled(doc["_id"])["state"] == "complete"
    else:
        assert live is not None and live["state"] == "killed" and live["locked"] is None
        assert reg.journal_count(doc["_id"]) == 0
    assert reg.holders(doc["name"]) == [witness["_id"]]


def test_kill_racing_complete_one_outcome(reg: Registry, other: Registry) -> None:
    for round_ in range(ROUNDS):
        name = f"kill-complete-{round_}"
        witness = reg.running(name, max_parallel=2)
        doc = reg.running(name, max_parallel=2)
        completed, killed = race(partial(reg.store.complete, doc, "r", now()), partial(other.store.kill, doc, "race"))
        check_one_outcome(reg, doc, completed, killed, witness)


def test_kill_between_the_journal_copy_and_the_delete(reg: Registry, other: Registry, hook: CommandHook) -> None:
    """The kill lands in the window of the move: the completion takes its copy back and reports False."""
    witness = reg.running("kill-window", max_parallel=2)
    doc = reg.running("kill-window", max_parallel=2)
    killed: list[bool] = []
    hook.arm("insert", journal_name(reg), lambda: killed.append(other.store.kill(doc, "in the window")))
    completed = reg.store.complete(doc, "r", now())
    assert hook.fired == 1 and killed == [True]
    check_one_outcome(reg, doc, completed, killed[0], witness)


def test_kill_just_after_the_delete(reg: Registry, other: Registry, hook: CommandHook) -> None:
    witness = reg.running("kill-after", max_parallel=2)
    doc = reg.running("kill-after", max_parallel=2)
    killed: list[bool] = []
    hook.arm("delete", jobs_name(reg), lambda: killed.append(other.store.kill(doc, "too late")))
    completed = reg.store.complete(doc, "r", now())
    assert hook.fired == 1 and killed == [False]
    check_one_outcome(reg, doc, completed, killed[0], witness)


def test_request_kill_in_the_window_is_carried_into_the_journal(reg: Registry, other: Registry,
                                                                 hook: CommandHook) -> None:
    """A flag written during the move changes the live rev: the completion re-reads and journals it."""
    doc = reg.running("flag-window")
    hook.arm("insert", journal_name(reg), lambda: other.store.request_kill(doc["_id"]))
    assert reg.store.complete(doc, "r", now())
    assert reg.live(doc["_id"]) is None
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["state"] == "complete" and copy["killed_at"] is not None
    assert reg.journal_count(doc["_id"]) == 1 and reg.holders("flag-window") == []


# -- a run that lost its lease --------------------------------------------------
def lost_lease(reg: Registry, other: Registry, name: str) -> tuple[Job, Job]:
    """Run 1 is recovered by another process and run 2 has started: (run 1's doc, the live doc)."""
    old = reg.running(name, attempts=3)
    assert other.store.recover(old, "lease expired")
    new = other.claim_and_start(old, worker="w2")
    return old, new


def test_a_run_that_lost_its_lease_cannot_end_the_job(reg: Registry, other: Registry) -> None:
    old, new = lost_lease(reg, other, "lost")
    assert reg.store.complete(old, "stale", now()) is False
    assert reg.store.defer(old, now(), "stale") is None
    assert reg.store.fail(old, {"exception": "E", "traceback": None, "at": now()}, now()) is None
    assert reg.store.flag(old, "zombie_at", now()) is False
    reg.store.progress(old, 0.7, "stale")
    assert reg.live(old["_id"]) == new  # nothing written
    assert reg.journal_count(old["_id"]) == 0  # the completion's proposal was taken back
    assert reg.holders("lost") == [old["_id"]]  # run 2 keeps its slot
    assert reg.store.complete(new, "fresh", now())
    assert reg.journaled(old["_id"])["result"] == "fresh"


def test_a_run_recovered_before_it_completes_cannot_complete(reg: Registry, other: Registry,
                                                            hook: CommandHook) -> None:
    doc = reg.running("lost-first", attempts=2)
    assert other.store.recover(doc, "lease expired")
    pending = reg.live(doc["_id"])
    proposed: list[int] = []
    hook.arm("insert", journal_name(reg), lambda: proposed.append(other.journal_count(doc["_id"])))
    assert reg.store.complete(doc, "stale", now()) is False
    assert proposed == [1]  # the completion did write its copy ...
    assert reg.live(doc["_id"]) == pending
    assert pending is not None and pending["state"] == "pending" and pending["attempts_left"] == 2
    assert reg.journal_count(doc["_id"]) == 0  # ... and took it back
    assert reg.holders("lost-first") == []


def test_a_recovery_that_lands_inside_the_move_makes_the_completion_take_its_copy_back(
    reg: Registry, other: Registry, hook: CommandHook,
) -> None:
    """Recovery read the journal (no copy of the run yet), then the completer proposed, then recovery wrote."""
    doc = reg.running("lost-window", attempts=2)
    checked, proposed = threading.Event(), threading.Event()
    recovered: list[bool] = []

    def after_its_journal_read() -> None:  # recovery's copy_of_run found no copy of the run
        checked.set()
        proposed.wait(30)

    def recovering_node() -> None:
        hook.arm("aggregate", journal_name(other), after_its_journal_read)
        recovered.append(other.store.recover(doc, "lease expired"))

    def recovery_landed() -> bool:
        live = reg.connection.jobs.find_one({"_id": doc["_id"]}, {"state": 1})
        return live is not None and live["state"] == "pending"

    def in_the_window() -> None:
        proposed.set()
        wait_for(recovery_landed, 30, what="the other node's recovery")

    node = threading.Thread(target=recovering_node, daemon=True)
    node.start()
    assert checked.wait(30), "the recovering node did not read the journal"
    hook.arm("insert", journal_name(reg), in_the_window)
    completed = reg.store.complete(doc, "stale", now())
    node.join(30)
    assert not node.is_alive() and recovered == [True]
    assert hook.fired == 2
    assert completed is False
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "pending" and live["attempts_left"] == 2
    assert reg.journal_count(doc["_id"]) == 0  # the proposal was taken back
    assert reg.holders("lost-window") == []


# -- finishers run twice --------------------------------------------------------
def test_recover_finishes_a_completion_cut_short(reg: Registry) -> None:
    witness = reg.running("cut-short", max_parallel=2)
    doc = reg.running("cut-short", max_parallel=2)
    rev = cut_short_completion(reg, doc, {"v": 1})
    expired = [d for d in reg.store.expired_runs(later(RUN_LEASE + 5)) if d["_id"] == doc["_id"]]
    assert len(expired) == 1
    assert reg.store.recover(expired[0], "lease expired")  # the projected doc housekeeping passes
    assert reg.live(doc["_id"]) is None
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["rev"] == rev and copy["result"] == {"v": 1} and copy["state"] == "complete"
    assert reg.holders("cut-short") == [witness["_id"]]
    generation = reg.generation()
    assert not reg.store.recover(doc, "again")  # the second time changes nothing
    assert reg.journaled(doc["_id"]) == copy and reg.journal_count(doc["_id"]) == 1
    assert reg.holders("cut-short") == [witness["_id"]] and reg.generation() == generation


def test_recover_of_a_cut_short_completion_from_two_nodes_at_once(reg: Registry, other: Registry) -> None:
    for round_ in range(ROUNDS):
        name = f"cut-short-2-{round_}"
        witness = reg.running(name, max_parallel=2)
        doc = reg.running(name, max_parallel=2)
        rev = cut_short_completion(reg, doc, round_)
        results = race(partial(reg.store.recover, doc, "node a"), partial(other.store.recover, doc, "node b"))
        assert sorted(results) == [False, True]
        assert reg.live(doc["_id"]) is None
        copy = reg.journaled(doc["_id"])
        assert copy is not None and copy["rev"] == rev and copy["result"] == round_
        assert reg.journal_count(doc["_id"]) == 1
        assert reg.holders(name) == [witness["_id"]]


def test_recover_of_a_dead_run_from_two_nodes_at_once(reg: Registry, other: Registry) -> None:
    for round_ in range(ROUNDS):
        name = f"recover-2-{round_}"
        doc = reg.running(name, attempts=2)
        before = reg.generation()
        results = race(partial(reg.store.recover, doc, "node a"), partial(other.store.recover, doc, "node b"))
        assert sorted(results) == [False, True]
        live = reg.live(doc["_id"])
        assert live is not None and live["state"] == "pending" and live["attempts_left"] == 2
        assert reg.holders(name) == []
        assert reg.generation() == before + 1  # signalled once
        assert reg.journal_count(doc["_id"]) == 0


# -- two movers of the same job ------------------------------------------------
def interleave_moves(hook: CommandHook, first: Registry, first_move: Callable[[], Any],
                     second: Registry, second_move: Callable[[], Any]) -> tuple[Any, Any]:
    """The first mover's journal copy lands; the whole second move runs in that window (before the first
    mover's delete); then the first mover finishes. One copy per live version: the second must stand back."""
    second_result: list[Any] = []

    def in_the_window() -> None:
        thread = threading.Thread(target=lambda: second_result.append(second_move()), daemon=True)
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), "the second mover hung"

    hook.arm("insert", journal_name(first), in_the_window)
    first_result = first_move()
    assert hook.fired == 1
    return first_result, second_result[0]


def test_two_removers_of_the_same_job_journal_it_once(reg: Registry, other: Registry, hook: CommandHook) -> None:
    """sweep_removed runs in every worker's housekeeping; two of them (or an operator) move the same job."""
    doc = reg.enqueue("remove-two")
    assert reg.store.request_remove(doc["_id"])
    first, second = interleave_moves(hook, reg, partial(reg.store.remove, doc["_id"]),
                                     other, partial(other.store.remove, doc["_id"]))
    assert (first is None) != (second is None), (first, second)
    assert reg.live(doc["_id"]) is None
    assert reg.journal_count(doc["_id"]) == 1, "the removed job is in neither collection"


def test_hard_remove_racing_complete_journals_the_job_once(reg: Registry, other: Registry, hook: CommandHook) -> None:
    doc = reg.running("hard-remove-complete")
    assert reg.store.request_remove(doc["_id"])
    live = reg.live(doc["_id"])
    removed, completed = interleave_moves(hook, reg, partial(reg.store.remove, doc["_id"], hard=True),
                                          other, partial(other.store.complete, live, "r", now()))
    assert not (removed is not None and completed), (removed, completed)
    assert reg.live(doc["_id"]) is None
    assert reg.journal_count(doc["_id"]) == 1, "the job is in neither collection"
    assert reg.holders("hard-remove-complete") == []


# -- a completion finished by another node's recovery ----------------------------
def test_recovery_finishing_a_slow_completion_keeps_its_journal_copy(
    reg: Registry, other: Registry, hook: CommandHook,
) -> None:
    """The completer's journal insert lands; before its delete, another node's housekeeping sees the run's
    lease expired (e.g. the server was down longer than run_lease and the insert's reply was lost, so the
    completer retries while the other node acts) and finishes the move. The completer's delete then
    matches nothing (not retried), it finds no running doc, and calls take_back(rev) — deleting the only copy.
    """
    witness = reg.running("slow-complete", max_parallel=2)
    doc = reg.running("slow-complete", max_parallel=2)
    finished: list[bool] = []

    def other_node_recovers() -> None:
        live = other.live(doc["_id"])
        assert live is not None
        finished.append(other.store.recover(live, "lease expired"))

    hook.arm("insert", journal_name(reg), other_node_recovers)
    completed = reg.store.complete(doc, {"v": 42}, now())
    assert hook.fired == 1 and finished == [True]  # recovery finished the completion (the copy was there)
    assert reg.live(doc["_id"]) is None
    assert reg.holders("slow-complete") == [witness["_id"]]
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["result"] == {"v": 42}, "the finished job is in neither collection"
    assert completed is True


# -- an operator's restart against a ticket in flight --------------------------
def test_restart_of_a_dispatched_job_leaves_no_due_time_on_its_run(reg: Registry) -> None:
    doc = reg.running("restart-dispatched", attempts=2, error_time=0.001)
    assert reg.store.fail(doc, {"exception": "E1", "traceback": None, "at": now()}, now()) is State.FAILED
    failed = reg.live(doc["_id"])
    assert reg.store.claim(failed, later(1), TICKET_LEASE) is Claim.TICKET
    reg.store.restart_waiting(doc["_id"])  # an operator restarts it while its ticket is in flight
    run = reg.store.start(doc["_id"], lock())
    assert run is not None
    assert reg.store.fail(run, {"exception": "E2", "traceback": None, "at": now()}, now()) is State.ERROR
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "error"
    assert reg.store.due(later(1), 10) == [], "an error job is listed as due"
