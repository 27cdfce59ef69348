"""Housekeeping rounds: by id among the slot holders each second, over every job only now and then.

A query on anything but ``_id`` reads the whole jobs collection on SecantusDB,
so a round that queried it every second in every worker took the server at a
big backlog. These tests pin down what each kind of round looks at.
"""

from __future__ import annotations

from core4celery.clock import now
from core4celery.store.jobs import Claim
from core4celery.worker.housekeeping import Housekeeping

from .conftest import CommandHook, Registry, lock


def housekeeping(reg: Registry) -> Housekeeping:
    return Housekeeping(reg.store, reg.connection.outage, run_lease=0.0)  # run_lease 0: may recover at once


def test_a_round_between_full_rounds_looks_up_jobs_by_id_among_the_holders(reg: Registry, hook: CommandHook) -> None:
    keeper = housekeeping(reg)
    keeper.round(reg.store.slots().active())  # the first round of a process is a full one
    lost = reg.enqueue("lost")
    assert reg.store.claim(lost, now(), -1.0) is Claim.TICKET  # a ticket whose lease is over
    expired = reg.store.claim(reg.enqueue("expired"), now(), 30.0)
    assert expired is Claim.TICKET
    (running,) = [d for d in reg.connection.jobs.find({"name": "expired"})]
    assert reg.store.start(running["_id"], "expired", lock(run_lease=-1.0), None) is not None
    flagged = reg.enqueue("flagged")
    assert reg.store.request_remove(flagged["_id"])  # its remover died before moving it

    with hook.record():
        keeper.round(reg.store.slots().active())

    on_jobs = [query for command, collection, query in hook.queries if collection == reg.connection.jobs.name]
    assert on_jobs and all("_id" in query for query in on_jobs), on_jobs
    assert reg.live(lost["_id"])["query_at"] is not None  # requeued
    assert reg.live(running["_id"])["state"] != "running"  # recovered
    assert reg.live(flagged["_id"]) is not None  # not a holder: left to the next full round

    housekeeping(reg).round(reg.store.slots().active())  # a full round (a new process's first)
    assert reg.live(flagged["_id"]) is None and reg.journaled(flagged["_id"]) is not None
