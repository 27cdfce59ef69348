"""A mother deferred until her children end is due again when the last of them ends (JobStore.wake_mother)."""

from __future__ import annotations

from datetime import timedelta

from core4celery.clock import now
from core4celery.config.options import JobOptions
from core4celery.store.document import new_job
from core4celery.store.jobs import Claim

from .conftest import TICKET_LEASE, Job, Registry


def child_of(reg: Registry, mother: Job, n: int) -> Job:
    doc = new_job("child", {"n": n}, JobOptions(), query_at=now(), mid=str(mother["_id"]))
    reg.store.enqueue(doc)
    return doc


def run_to_end(reg: Registry, doc: Job) -> None:
    assert reg.store.claim(reg.live(doc["_id"]), now(), TICKET_LEASE) is Claim.TICKET
    run = reg.start(doc)
    assert run.mid == doc["mid"]  # the ticket carries the mother
    assert reg.store.complete(run, None, now())
    assert reg.give(run)


def test_the_last_child_ending_makes_its_deferred_mother_due_now(reg: Registry) -> None:
    mother, run = reg.running("mother", defer_time=3600)
    children = [child_of(reg, mother, n) for n in range(2)]
    query_at = reg.store.defer(run, now(), "waiting for children")
    assert query_at is not None and query_at > now() + timedelta(seconds=3000)
    assert reg.give(run)
    run_to_end(reg, children[0])
    assert not reg.store.wake_mother(str(mother["_id"]))  # one child is still waiting
    assert reg.live(mother["_id"])["query_at"] == query_at
    generation = reg.slots().generation
    run_to_end(reg, children[1])
    assert reg.store.wake_mother(str(mother["_id"]))
    live = reg.live(mother["_id"])
    assert live["state"] == "deferred" and live["query_at"] <= now()
    assert live["front_at"] == live["query_at"]  # dispatchers see her
    assert reg.slots().generation > generation  # and rescan for her


def test_a_child_ending_while_its_mother_runs_makes_her_next_deferral_due_at_once(reg: Registry) -> None:
    mother, run = reg.running("mother", defer_time=3600)
    child = child_of(reg, mother, 0)
    run_to_end(reg, child)  # she saw it unfinished a moment ago and is about to defer
    assert reg.store.wake_mother(str(mother["_id"]))
    assert reg.live(mother["_id"])["woken_at"] is not None
    stamp = now()
    assert reg.store.defer(run, stamp, "waiting for children") == stamp
    live = reg.live(mother["_id"])
    assert live["state"] == "deferred" and live["query_at"] == stamp and "woken_at" not in live
    assert reg.give(run)


def test_the_mark_is_cleared_by_her_next_start(reg: Registry) -> None:
    mother, run = reg.running("mother", attempts=2, error_time=0.001)
    assert reg.store.wake_mother(str(mother["_id"]))  # no children at all: nothing unfinished
    error = {"exception": "ValueError('x')", "traceback": None, "at": now()}
    assert reg.store.fail(run, error, now()) is not None  # she failed instead of deferring: the mark stays
    assert reg.give(run)
    live = reg.live(mother["_id"])
    assert live["state"] == "failed" and live["woken_at"] is not None
    _, again = reg.claim_and_start(live)
    assert "woken_at" not in reg.live(mother["_id"])
    assert reg.give(again)


def test_nothing_happens_to_a_mother_that_is_not_waiting(reg: Registry) -> None:
    mother = reg.enqueue("mother")
    assert not reg.store.wake_mother(str(mother["_id"]))  # pending: not deferred, not running
    assert reg.live(mother["_id"])["query_at"] == mother["query_at"]
