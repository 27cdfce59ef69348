"""Guarded races: two processes (two clients, two JobStores) on the same job, and finishers run twice.

Free races run in threads released together and are repeated; the windows
between the two commands of a move are hit exactly with :class:`CommandHook`.
The completion's fast path is ``aggregate`` (the server copies the live job
into the journal with ``$merge``) then ``delete`` on the jobs collection; its
fallback and the removers propose a full document with ``insert`` into the
journal.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from core4celery.clock import later, now
from core4celery.store.document import Run, ticket_header
from core4celery.store.jobs import Claim
from core4celery.store.states import State
from tests.workers import wait_for

from .conftest import (
    CAPACITY,
    RUN_LEASE,
    TICKET_LEASE,
    CommandHook,
    Job,
    Registry,
    cut_short_completion,
    lock,
    race,
)

ROUNDS = 6


def journal_name(reg: Registry) -> str:
    return reg.connection.journal.name


def jobs_name(reg: Registry) -> str:
    return reg.connection.jobs.name


# -- dispatch and start ---------------------------------------------------------
def test_two_claimers_of_the_last_slot_one_ticket(reg: Registry, other: Registry) -> None:
    """max_parallel=1: both marks land, one take wins; the loser's mark is undone."""
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
        lost = reg.live(loser["_id"])
        assert "dispatched_until" not in lost and lost["query_at"] == stamp  # due again
    assert reg.free() == CAPACITY - ROUNDS


def test_two_claimers_of_the_last_worker_slot_one_ticket(reg: Registry, other: Registry) -> None:
    """Different names (no max_parallel limit between them): the one idle worker slot decides."""
    for round_ in range(ROUNDS):
        reg.provide({"celery": round_ + 1})  # the earlier rounds' winners hold theirs: one slot is idle
        assert reg.free() == 1
        a, b = reg.enqueue(f"worker-a-{round_}"), reg.enqueue(f"worker-b-{round_}")
        stamp = now()
        claims = race(partial(reg.store.claim, a, stamp, TICKET_LEASE), partial(other.store.claim, b, stamp, TICKET_LEASE))
        assert sorted(c.value for c in claims) == ["full", "ticket"], claims
        assert reg.free() == 0
        winner, loser = (a, b) if claims[0] is Claim.TICKET else (b, a)
        assert reg.holders(winner["name"]) == [winner["_id"]] and reg.holders(loser["name"]) == []
        assert "dispatched_until" not in reg.live(loser["_id"])


def test_two_claimers_of_the_same_job_one_ticket(reg: Registry, other: Registry) -> None:
    for round_ in range(ROUNDS):
        name = f"same-job-{round_}"
        doc = reg.enqueue(name, max_parallel=3)
        stamp = now()
        claims = race(partial(reg.store.claim, doc, stamp, TICKET_LEASE),
                      partial(other.store.claim, doc, stamp, TICKET_LEASE))
        assert sorted(c.value for c in claims) == ["gone", "ticket"], claims
        assert reg.holders(name) == [doc["_id"]]
    assert reg.free() == CAPACITY - ROUNDS  # the loser moved no slot


def test_many_claimers_of_a_few_worker_slots(reg: Registry, registries: Callable[[], Registry]) -> None:
    """Eight processes, eight jobs of different names, three idle worker slots: three tickets, nothing else moved."""
    reg.provide({"celery": 3})
    claimers = [registries() for _ in range(8)]
    docs = [reg.enqueue(f"many-{i}") for i in range(8)]
    stamp = now()
    claims = race(*(partial(c.store.claim, d, stamp, TICKET_LEASE) for c, d in zip(claimers, docs, strict=True)))
    assert sorted(c.value for c in claims) == ["full"] * 5 + ["ticket"] * 3, claims
    assert reg.free() == 0
    for doc, claim in zip(docs, claims, strict=True):
        assert reg.holders(doc["name"]) == ([doc["_id"]] if claim is Claim.TICKET else [])
        assert ("dispatched_until" in reg.live(doc["_id"])) == (claim is Claim.TICKET)


def test_two_starts_of_the_same_ticket_one_run(reg: Registry, other: Registry) -> None:
    for _ in range(ROUNDS):
        doc = reg.dispatched("two-starts")
        ticket = ticket_header(reg.live(doc["_id"]))
        locks = [lock("w1"), lock("w2")]
        started = race(partial(reg.store.start, doc["_id"], "two-starts", locks[0], ticket),
                       partial(other.store.start, doc["_id"], "two-starts", locks[1], ticket))
        winners = [i for i, s in enumerate(started) if s is not None]
        assert len(winners) == 1, started
        live = reg.live(doc["_id"])
        assert live is not None and live["trial"] == 1 and live["locked"] == locks[winners[0]]
        run = started[winners[0]]
        assert run.token == live["locked"]["run"] and run.rev == live["rev"] and run.trial == 1
        assert reg.store.complete(run, None, now())
        assert reg.give(run)
    assert reg.holders("two-starts") == [] and reg.free() == CAPACITY


def test_start_racing_requeue_lost_one_outcome(reg: Registry, other: Registry) -> None:
    for round_ in range(ROUNDS):
        name = f"start-requeue-{round_}"
        doc = reg.dispatched(name)
        started, requeued = race(partial(reg.store.start, doc["_id"], name, lock(), ticket_header(doc)),
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
def check_one_outcome(reg: Registry, doc: Job, run: Run, completed: bool, killed: bool, witness: Job) -> None:
    """Exactly one ending holds; journal and live agree; the job's slots are freed (by the kill, or by the
    finisher that completed) and no other."""
    assert completed != killed, (completed, killed)
    live = reg.live(doc["_id"])
    if completed:
        assert live is None
        assert reg.journal_count(doc["_id"]) == 1
        assert reg.journaled(doc["_id"])["state"] == "complete"
        reg.give(run)  # the finisher gives (a no-op when the kill already finished the move and freed them)
    else:
        assert live is not None and live["state"] == "killed" and live["locked"] is None
        assert reg.journal_count(doc["_id"]) == 0
    assert reg.holders(doc["name"]) == [witness["_id"]]
    assert not reg.give(run)  # freed exactly once


def test_kill_racing_complete_one_outcome(reg: Registry, other: Registry) -> None:
    for round_ in range(ROUNDS):
        name = f"kill-complete-{round_}"
        witness, _ = reg.running(name, max_parallel=2)
        doc, run = reg.running(name, max_parallel=2)
        completed, killed = race(partial(reg.store.complete, run, "r", now()), partial(other.store.kill, doc, "race"))
        check_one_outcome(reg, doc, run, completed, killed, witness)


def test_kill_between_the_journal_copy_and_the_delete(reg: Registry, other: Registry, hook: CommandHook) -> None:
    """The kill lands in the window of the fast path: it finds the run's journal copy, so it finishes the
    completion (deletes the live job, frees the slots) instead of killing; the completer reports success."""
    witness, _ = reg.running("kill-window", max_parallel=2)
    doc, run = reg.running("kill-window", max_parallel=2)
    killed: list[bool] = []
    hook.arm("aggregate", jobs_name(reg), lambda: killed.append(other.store.kill(doc, "in the window")))
    completed = reg.store.complete(run, "r", now())
    assert hook.fired == 1 and killed == [False]
    assert reg.holders("kill-window") == [witness["_id"]]  # freed by the kill's finishing of the move
    check_one_outcome(reg, doc, run, completed, killed[0], witness)
    assert reg.journaled(doc["_id"])["result"] == "r"


def test_kill_landing_before_the_journal_copy(reg: Registry, other: Registry, hook: CommandHook) -> None:
    """The kill's journal check saw no copy; its write lands after the server-side copy: the copy is taken
    back and the job stays killed."""
    witness, _ = reg.running("kill-before", max_parallel=2)
    doc, run = reg.running("kill-before", max_parallel=2)
    checked, copied = threading.Event(), threading.Event()
    killed: list[bool] = []

    def after_its_journal_check() -> None:
        checked.set()
        assert copied.wait(30)

    def killer() -> None:
        hook.arm("aggregate", journal_name(other), after_its_journal_check)  # copy_of_run counts the journal
        killed.append(other.store.kill(doc, "early"))

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    assert checked.wait(30)

    def in_the_window() -> None:
        copied.set()
        wait_for(lambda: reg.live(doc["_id"])["state"] == "killed", 30, what="the kill")

    hook.arm("aggregate", jobs_name(reg), in_the_window)
    completed = reg.store.complete(run, "r", now())
    thread.join(30)
    assert hook.fired == 2 and killed == [True]
    check_one_outcome(reg, doc, run, completed, killed[0], witness)


def test_kill_just_after_the_delete(reg: Registry, other: Registry, hook: CommandHook) -> None:
    witness, _ = reg.running("kill-after", max_parallel=2)
    doc, run = reg.running("kill-after", max_parallel=2)
    killed: list[bool] = []
    hook.arm("delete", jobs_name(reg), lambda: killed.append(other.store.kill(doc, "too late")))
    completed = reg.store.complete(run, "r", now())
    assert hook.fired == 1 and killed == [False]
    check_one_outcome(reg, doc, run, completed, killed[0], witness)


def test_request_kill_in_the_window_is_carried_into_the_journal(reg: Registry, other: Registry,
                                                                 hook: CommandHook) -> None:
    """A flag written during the move changes the live rev: the guarded delete misses, and the completion
    re-reads the job and replaces its server-side copy with one carrying the flag."""
    doc, run = reg.running("flag-window")
    hook.arm("aggregate", jobs_name(reg), lambda: other.store.request_kill(doc["_id"]))
    assert reg.store.complete(run, "r", now())
    assert reg.live(doc["_id"]) is None
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["state"] == "complete" and copy["killed_at"] is not None
    assert copy["result"] == "r" and copy["source_rev"] != run.rev
    assert reg.journal_count(doc["_id"]) == 1
    assert reg.holders("flag-window") == [doc["_id"]] and reg.give(run) and reg.holders("flag-window") == []


# -- a run that lost its lease --------------------------------------------------
def lost_lease(reg: Registry, other: Registry, name: str) -> tuple[Job, Run, Job, Run]:
    """Run 1 is recovered by another process and run 2 has started: run 1's doc and run, the live doc, run 2."""
    old, old_run = reg.running(name, attempts=3)
    assert other.store.recover(old, "lease expired")
    new, new_run = other.claim_and_start(old, worker="w2")
    return old, old_run, new, new_run


def test_a_run_that_lost_its_lease_cannot_end_the_job(reg: Registry, other: Registry) -> None:
    old, old_run, new, new_run = lost_lease(reg, other, "lost")
    assert reg.store.complete(old_run, "stale", now()) is False
    assert reg.store.defer(old_run, now(), "stale") is None
    assert reg.store.fail(old_run, {"exception": "E", "traceback": None, "at": now()}, now()) is None
    assert reg.store.flag(old, "zombie_at", now()) is False
    reg.store.progress(old_run, 0.7, "stale")
    assert reg.live(old["_id"]) == new  # nothing written
    assert reg.journal_count(old["_id"]) == 0  # the server copied nothing: the rev guard
    assert reg.holders("lost") == [old["_id"]]  # run 2 keeps its slots (run 1 wrote no ending: it gives nothing)
    assert reg.store.complete(new_run, "fresh", now())
    assert reg.journaled(old["_id"])["result"] == "fresh"
    assert reg.give(new_run) and reg.holders("lost") == []


def test_a_run_recovered_before_it_completes_cannot_complete(reg: Registry, other: Registry,
                                                            hook: CommandHook) -> None:
    doc, run = reg.running("lost-first", attempts=2)
    assert other.store.recover(doc, "lease expired")
    pending = reg.live(doc["_id"])
    copied: list[int] = []
    hook.arm("aggregate", jobs_name(reg), lambda: copied.append(other.journal_count(doc["_id"])))
    assert reg.store.complete(run, "stale", now()) is False
    assert copied == [0]  # the server-side copy matched nothing: the start's rev is gone
    assert reg.live(doc["_id"]) == pending
    assert pending is not None and pending["state"] == "pending" and pending["attempts_left"] == 2
    assert reg.journal_count(doc["_id"]) == 0
    assert reg.holders("lost-first") == []


def test_a_recovery_that_lands_inside_the_move_makes_the_completion_take_its_copy_back(
    reg: Registry, other: Registry, hook: CommandHook,
) -> None:
    """Recovery read the journal (no copy of the run yet), then the completer's copy landed, then recovery wrote."""
    doc, run = reg.running("lost-window", attempts=2)
    checked, copied = threading.Event(), threading.Event()
    recovered: list[bool] = []

    def after_its_journal_read() -> None:  # recovery's copy_of_run found no copy of the run
        checked.set()
        copied.wait(30)

    def recovering_node() -> None:
        hook.arm("aggregate", journal_name(other), after_its_journal_read)
        recovered.append(other.store.recover(doc, "lease expired"))

    def recovery_landed() -> bool:
        live = reg.connection.jobs.find_one({"_id": doc["_id"]}, {"state": 1})
        return live is not None and live["state"] == "pending"

    def in_the_window() -> None:
        assert other.journal_count(doc["_id"]) == 1  # the completion's copy is there
        copied.set()
        wait_for(recovery_landed, 30, what="the other node's recovery")

    node = threading.Thread(target=recovering_node, daemon=True)
    node.start()
    assert checked.wait(30), "the recovering node did not read the journal"
    hook.arm("aggregate", jobs_name(reg), in_the_window)
    completed = reg.store.complete(run, "stale", now())
    node.join(30)
    assert not node.is_alive() and recovered == [True]
    assert hook.fired == 2
    assert completed is False
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "pending" and live["attempts_left"] == 2
    assert reg.journal_count(doc["_id"]) == 0  # the copy was taken back
    assert reg.holders("lost-window") == []


# -- finishers run twice --------------------------------------------------------
def test_recover_finishes_a_completion_cut_short(reg: Registry) -> None:
    witness, _ = reg.running("cut-short", max_parallel=2)
    doc, run = reg.running("cut-short", max_parallel=2)
    rev = cut_short_completion(reg, run, {"v": 1})
    expired = [d for d in reg.store.expired_runs(later(RUN_LEASE + 5)) if d["_id"] == doc["_id"]]
    assert len(expired) == 1
    assert reg.store.recover(expired[0], "lease expired")  # the projected doc housekeeping passes
    assert reg.live(doc["_id"]) is None
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["rev"] == rev and copy["result"] == {"v": 1} and copy["state"] == "complete"
    assert copy["args"] == doc["args"] and copy["run"] == run.token
    assert reg.holders("cut-short") == [witness["_id"]]  # recovery freed the dead finisher's slots
    generation = reg.generation()
    state = reg.slots()
    assert not reg.store.recover(doc, "again")  # the second time changes nothing
    assert reg.journaled(doc["_id"]) == copy and reg.journal_count(doc["_id"]) == 1
    assert reg.slots() == state and reg.generation() == generation


def test_recover_of_a_cut_short_completion_from_two_nodes_at_once(reg: Registry, other: Registry) -> None:
    for round_ in range(ROUNDS):
        name = f"cut-short-2-{round_}"
        witness, _ = reg.running(name, max_parallel=2)
        doc, run = reg.running(name, max_parallel=2)
        rev = cut_short_completion(reg, run, round_)
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
        doc, _ = reg.running(name, attempts=2)
        before = reg.generation()
        results = race(partial(reg.store.recover, doc, "node a"), partial(other.store.recover, doc, "node b"))
        assert sorted(results) == [False, True]
        live = reg.live(doc["_id"])
        assert live is not None and live["state"] == "pending" and live["attempts_left"] == 2
        assert reg.holders(name) == []
        assert reg.generation() == before + 1  # signalled once
        assert reg.journal_count(doc["_id"]) == 0
    assert reg.free() == CAPACITY


# -- two movers of the same job ------------------------------------------------
def interleave_moves(hook: CommandHook, command: str, collection: str, first_move: Callable[[], Any],
                     second_move: Callable[[], Any]) -> tuple[Any, Any]:
    """The first mover's journal copy lands (``command`` on ``collection``); the whole second move runs in that
    window (before the first mover's delete); then the first mover finishes. One copy per live version."""
    second_result: list[Any] = []

    def in_the_window() -> None:
        thread = threading.Thread(target=lambda: second_result.append(second_move()), daemon=True)
        thread.start()
        thread.join(20)
        assert not thread.is_alive(), "the second mover hung"

    hook.arm(command, collection, in_the_window)
    first_result = first_move()
    assert hook.fired == 1
    return first_result, second_result[0]


def test_two_removers_of_the_same_job_journal_it_once(reg: Registry, other: Registry, hook: CommandHook) -> None:
    """sweep_removed runs in every worker's housekeeping; two of them (or an operator) move the same job."""
    doc = reg.dispatched("remove-two")
    assert reg.store.request_remove(doc["_id"])
    first, second = interleave_moves(hook, "insert", journal_name(reg), partial(reg.store.remove, doc["_id"]),
                                     partial(other.store.remove, doc["_id"]))
    assert (first is None) != (second is None), (first, second)
    assert reg.live(doc["_id"]) is None
    assert reg.journal_count(doc["_id"]) == 1, "the removed job is in neither collection"
    assert reg.holders("remove-two") == [] and reg.free() == CAPACITY


def test_hard_remove_racing_complete_journals_the_job_once(reg: Registry, other: Registry, hook: CommandHook) -> None:
    """The remover's copy lands first; the completion (its fast path misses: the removal flag moved the rev)
    finds another mover holding this version and stands back."""
    doc, run = reg.running("hard-remove-complete")
    assert reg.store.request_remove(doc["_id"])
    removed, completed = interleave_moves(hook, "insert", journal_name(reg),
                                          partial(reg.store.remove, doc["_id"], hard=True),
                                          partial(other.store.complete, run, "r", now()))
    assert removed is not None and completed is False
    assert reg.live(doc["_id"]) is None
    assert reg.journal_count(doc["_id"]) == 1, "the job is in neither collection"
    assert reg.journaled(doc["_id"])["state"] == "running"
    assert reg.holders("hard-remove-complete") == [] and reg.free() == CAPACITY
    assert not reg.give(run)


def test_hard_remove_inside_the_fast_completion_journals_the_job_once(
    reg: Registry, other: Registry, hook: CommandHook,
) -> None:
    """The completion's server-side copy lands first; an operator flags and hard-removes the job in the window.
    The flag moved the live rev, so the completion's copy is of an older version: the remover replaces it and
    deletes the job; the completer finds its copy gone and reports nothing. One copy, one state, slots freed."""
    doc, run = reg.running("fast-remove")

    def operator() -> Any:
        assert other.store.request_remove(doc["_id"])
        return other.store.remove(doc["_id"], hard=True)

    completed, removed = interleave_moves(hook, "aggregate", jobs_name(reg),
                                          partial(reg.store.complete, run, "r", now()), operator)
    assert removed is not None and completed is False, (removed, completed)
    assert reg.live(doc["_id"]) is None
    assert reg.journal_count(doc["_id"]) == 1
    copy = reg.journaled(doc["_id"])
    assert copy["state"] == "running" and copy["removed_at"] is not None and "result" not in copy
    assert not reg.give(run)  # hard remove freed them
    assert reg.holders("fast-remove") == [] and reg.free() == CAPACITY


# -- a completion finished by another node's recovery ----------------------------
def test_recovery_finishing_a_slow_completion_keeps_its_journal_copy(
    reg: Registry, other: Registry, hook: CommandHook,
) -> None:
    """The completer's server-side copy lands; before its delete, another node's housekeeping sees the run's
    lease expired (e.g. the server was down longer than run_lease and the reply was lost, so the completer
    retries while the other node acts) and finishes the move. The completer's delete then matches nothing; it
    must find its own copy in place and report the completion, not take the only copy back."""
    witness, _ = reg.running("slow-complete", max_parallel=2)
    doc, run = reg.running("slow-complete", max_parallel=2)
    finished: list[bool] = []

    def other_node_recovers() -> None:
        live = other.live(doc["_id"])
        assert live is not None
        finished.append(other.store.recover(live, "lease expired"))

    hook.arm("aggregate", jobs_name(reg), other_node_recovers)
    completed = reg.store.complete(run, {"v": 42}, now())
    assert hook.fired == 1 and finished == [True]  # recovery finished the completion (the copy was there)
    assert reg.live(doc["_id"]) is None
    assert reg.holders("slow-complete") == [witness["_id"]]
    copy = reg.journaled(doc["_id"])
    assert copy is not None and copy["result"] == {"v": 42}, "the finished job is in neither collection"
    assert completed is True
    assert not reg.give(run)  # recovery gave them already


# -- an operator's restart against a ticket in flight --------------------------
def test_restart_of_a_dispatched_job_leaves_no_due_time_on_its_run(reg: Registry) -> None:
    doc, run = reg.running("restart-dispatched", attempts=2, error_time=0.001)
    assert reg.store.fail(run, {"exception": "E1", "traceback": None, "at": now()}, now()) is State.FAILED
    assert reg.give(run)
    failed = reg.live(doc["_id"])
    assert reg.store.claim(failed, later(1), TICKET_LEASE) is Claim.TICKET
    assert not reg.store.restart_waiting(doc["_id"])  # an operator restarts it while its ticket is in flight
    second = reg.start(doc)
    assert reg.store.fail(second, {"exception": "E2", "traceback": None, "at": now()}, now()) is State.ERROR
    live = reg.live(doc["_id"])
    assert live is not None and live["state"] == "error"
    assert reg.store.due(later(1), 10) == [], "an error job is listed as due"
    assert reg.give(second) and reg.holders("restart-dispatched") == []


def test_restart_racing_a_ticket_in_flight_one_outcome(reg: Registry, other: Registry) -> None:
    """restart_waiting against the dispatch mark of the same failed job: never both a ticket and a due time."""
    for round_ in range(ROUNDS):
        name = f"restart-race-{round_}"
        doc, run = reg.running(name, attempts=3, error_time=600)
        assert reg.store.fail(run, {"exception": "E", "traceback": None, "at": now()}, now()) is State.FAILED
        assert reg.give(run)
        failed = reg.live(doc["_id"])
        assert reg.store.restart_waiting(doc["_id"])  # due now
        due = reg.live(doc["_id"])
        claim, restarted = race(partial(reg.store.claim, due, later(1), TICKET_LEASE),
                                partial(other.store.restart_waiting, doc["_id"]))
        live = reg.live(doc["_id"])
        assert claim is Claim.TICKET, (claim, restarted)
        assert live["query_at"] is None and "dispatched_until" in live, live  # the ticket's run is the next one
        assert reg.holders(name) == [doc["_id"]]
        second = reg.start(failed)
        assert second.trial == 2
        assert reg.store.complete(second, "ok", now()) and reg.give(second)
