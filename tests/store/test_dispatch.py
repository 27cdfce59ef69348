"""The Dispatcher's paths over the store: hand over (a run ended), offer (enqueue), tick (timer).

The Dispatcher is built from the store as ``Core4`` builds it, with a Celery
app on the MongoDB broker of the test's database: a published ticket is a
document in the broker's ``messages`` collection, read back here.
"""

from __future__ import annotations

import json
from typing import Any

from core4celery.clock import later, now
from core4celery.config.options import JobOptions
from core4celery.dispatch.dispatcher import Dispatcher
from core4celery.store.document import TICKET_HEADER, Run, new_job, ticket_header
from core4celery.store.jobs import DEFAULT_QUEUE, Claim

from .conftest import TICKET_LEASE, CommandHook, Job, Registry, holder_of_run, lock, untokened

Q2 = "q2"


def tickets(reg: Registry) -> list[dict[str, Any]]:
    """The tickets published so far: task id, task name, queue and the job's fields from the header."""
    found = []
    for message in reg.connection.db["messages"].find().sort("_id", 1):
        headers = json.loads(message["payload"])["headers"]
        found.append({"id": headers["id"], "task": headers["task"], "queue": message["queue"],
                      "fields": headers[TICKET_HEADER]})
    return found


def due(reg: Registry, doc: Job) -> bool:
    live = reg.live(doc["_id"])
    return "dispatched_until" not in live and live["query_at"] is not None and live["query_at"] <= now()


# -- hand over --------------------------------------------------------------------
def test_hand_over_gives_the_finished_runs_slots_to_the_highest_priority_due_job(
    reg: Registry, dispatcher: Dispatcher,
) -> None:
    reg.provide({DEFAULT_QUEUE: 1})
    finished, run = reg.running("done")
    low = reg.enqueue("low", priority=0)
    high = reg.enqueue("high", priority=5)
    not_yet = reg.enqueue("not-yet", priority=9)
    reg.connection.jobs.update_one({"_id": not_yet["_id"]}, {"$set": {"query_at": later(600), "front_at": later(600)}})
    assert reg.store.claim(high, now(), TICKET_LEASE) is Claim.FULL  # no idle slot: it waits
    assert reg.store.complete(run, "ok", now())

    dispatcher.hand_over(holder_of_run(run))

    assert reg.holders("done") == [] and reg.holders("high") == [high["_id"]]
    assert reg.free() == 0  # the slot went straight on: never idle
    live = reg.live(high["_id"])
    assert live["query_at"] is None and "dispatched_until" in live
    assert due(reg, low) and reg.holders("low") == []
    (ticket,) = tickets(reg)
    assert ticket["id"] == str(high["_id"]) and ticket["task"] == "high" and ticket["queue"] == DEFAULT_QUEUE
    assert ticket["fields"] == ticket_header(live)
    # the ticket starts the job with its own fields, no read
    started = reg.store.start(high["_id"], "high", lock("w2"), ticket["fields"])
    assert started is not None and started.trial == 1
    assert reg.live(finished["_id"]) is None


def test_hand_over_within_a_name_at_its_limit(reg: Registry, dispatcher: Dispatcher) -> None:
    """max_parallel=1: the next job of the same name can only ever get a slot this way or after a give."""
    reg.provide({DEFAULT_QUEUE: 3})
    _, run = reg.running("single", max_parallel=1)
    waiting = reg.enqueue("single", max_parallel=1)
    assert reg.store.claim(waiting, now(), TICKET_LEASE) is Claim.FULL
    assert reg.store.defer(run, now(), "later") is not None  # a deferred run hands over too

    dispatcher.hand_over(holder_of_run(run))

    assert reg.holders("single") == [waiting["_id"]]
    assert reg.free() == 2  # no worker slot moved
    assert [t["id"] for t in tickets(reg)] == [str(waiting["_id"])]


def test_hand_over_gives_the_slots_back_when_nothing_is_due(reg: Registry, dispatcher: Dispatcher) -> None:
    reg.provide({DEFAULT_QUEUE: 2})
    _, run = reg.running("alone")
    later_job = reg.enqueue("later")
    reg.connection.jobs.update_one({"_id": later_job["_id"]}, {"$set": {"query_at": later(600), "front_at": later(600)}})
    assert reg.store.complete(run, "ok", now())

    dispatcher.hand_over(holder_of_run(run))

    assert reg.holders("alone") == [] and reg.free() == 2
    assert tickets(reg) == []
    before = reg.raw_slots()
    dispatcher.hand_over(holder_of_run(run))  # a repeated hand-over changes nothing
    assert reg.raw_slots() == before and tickets(reg) == []


def second_run_after_an_empty_scan(reg: Registry, dispatcher: Dispatcher) -> Run:
    """Two finished runs; the first one's hand-over scanned and found nothing due."""
    reg.provide({DEFAULT_QUEUE: 2})
    _, first = reg.running("idle-1")
    _, second = reg.running("idle-2")
    assert reg.store.complete(first, "ok", now()) and reg.store.complete(second, "ok", now())
    dispatcher.hand_over(holder_of_run(first))
    return second


def test_after_a_scan_found_nothing_due_a_hand_over_is_one_command(
    reg: Registry, dispatcher: Dispatcher, hook: CommandHook,
) -> None:
    second = second_run_after_an_empty_scan(reg, dispatcher)

    with hook.record() as sent:
        dispatcher.hand_over(holder_of_run(second))

    assert sent == [("findAndModify", reg.connection.gates.name)]
    assert reg.holders("idle-2") == [] and reg.free() == 2 and tickets(reg) == []


def test_a_job_enqueued_since_the_scan_that_found_nothing_gets_the_handed_slot(
    reg: Registry, dispatcher: Dispatcher,
) -> None:
    """The one-command hand-over gives the slot back, sees the due generation moved, and fills it."""
    second = second_run_after_an_empty_scan(reg, dispatcher)
    newcomer = reg.enqueue("newcomer")  # waits: enqueue() here does not take a slot

    dispatcher.hand_over(holder_of_run(second))

    assert reg.holders("newcomer") == [newcomer["_id"]] and reg.free() == 1
    (ticket,) = tickets(reg)
    assert ticket["id"] == str(newcomer["_id"])


def test_hand_over_while_paused_gives_the_slots_back(reg: Registry, dispatcher: Dispatcher) -> None:
    reg.provide({DEFAULT_QUEUE: 1})
    _, run = reg.running("paused")
    waiting = reg.enqueue("paused-next")
    assert reg.store.complete(run, "ok", now())
    reg.store.pause(True)

    dispatcher.hand_over(holder_of_run(run))

    assert reg.holders("paused") == [] and reg.holders("paused-next") == [] and reg.free() == 1
    assert due(reg, waiting) and tickets(reg) == []


def test_hand_over_passes_over_jobs_the_slots_cannot_serve(reg: Registry, dispatcher: Dispatcher) -> None:
    """The first due job waits on a queue without an idle slot, the second on a name at its limit: the third
    (lower priority) gets the slots."""
    reg.provide({DEFAULT_QUEUE: 2, Q2: 0})
    _, run = reg.running("finisher")
    reg.running("busy-name", max_parallel=1)
    other_queue = reg.enqueue("other-queue", priority=9, queue=Q2)
    full_name = reg.enqueue("busy-name", priority=8, max_parallel=1)
    eligible = reg.enqueue("eligible", priority=1)
    assert reg.store.complete(run, "ok", now())

    dispatcher.hand_over(holder_of_run(run))

    assert reg.holders("eligible") == [eligible["_id"]] and reg.holders("finisher") == []
    assert due(reg, other_queue) and due(reg, full_name)
    assert [t["id"] for t in tickets(reg)] == [str(eligible["_id"])]
    assert reg.slots().free == {DEFAULT_QUEUE: 0, Q2: 0}


def test_hand_over_across_queues(reg: Registry, dispatcher: Dispatcher) -> None:
    """A job of another queue with an idle slot there takes it; the finished run's worker slot becomes idle."""
    reg.provide({DEFAULT_QUEUE: 1, Q2: 1})
    _, run = reg.running("finisher")
    elsewhere = reg.enqueue("elsewhere", priority=5, queue=Q2)
    assert reg.store.complete(run, "ok", now())

    dispatcher.hand_over(holder_of_run(run))

    assert untokened(reg.slots().holders["elsewhere"]) == [{"id": elsewhere["_id"], "q": Q2}]
    assert reg.slots().free == {DEFAULT_QUEUE: 1, Q2: 0}
    (ticket,) = tickets(reg)
    assert ticket["id"] == str(elsewhere["_id"]) and ticket["queue"] == Q2 and ticket["fields"]["queue"] == Q2


def test_hand_over_of_slots_freed_already_moves_nothing(reg: Registry, dispatcher: Dispatcher) -> None:
    """The run's slots were freed meanwhile (a kill finished its completion, repair): no ticket, no slot moved."""
    reg.provide({DEFAULT_QUEUE: 1})
    _, run = reg.running("freed")
    waiting = reg.enqueue("freed-next")
    assert reg.store.complete(run, "ok", now())
    assert reg.give(run)
    before = reg.slots()

    dispatcher.hand_over(holder_of_run(run))

    assert reg.slots() == before and tickets(reg) == []
    assert due(reg, waiting) and reg.holders("freed-next") == []


def test_a_hand_over_that_finds_its_slots_gone_stops_after_one_try(
    reg: Registry, dispatcher: Dispatcher, hook: CommandHook,
) -> None:
    """Each further candidate would cost a mark, a failed transfer and an undo (a 2,000-job burst ran at 4 jobs/s)."""
    reg.provide({DEFAULT_QUEUE: 1})
    _, run = reg.running("gone")
    waiting = [reg.enqueue("gone-next") for _ in range(20)]
    assert reg.store.complete(run, "ok", now())
    assert reg.give(run)  # e.g. slot repair freed them just before the hand-over

    with hook.record() as sent:
        dispatcher.hand_over(holder_of_run(run))

    on_jobs = [command for command, collection in sent if collection == reg.connection.jobs.name and command != "find"]
    assert on_jobs == ["update", "update"], sent  # one claim and its undo; nobody else is touched
    assert tickets(reg) == [] and all(due(reg, doc) for doc in waiting)


# -- offer and tick ---------------------------------------------------------------
def test_offer_publishes_at_once_with_an_idle_slot_and_else_enqueues(reg: Registry, dispatcher: Dispatcher) -> None:
    reg.provide({DEFAULT_QUEUE: 1})
    first = new_job("offered", {"x": 1}, JobOptions(), query_at=now(), queue=DEFAULT_QUEUE)
    second = new_job("offered", {"x": 2}, JobOptions(), query_at=now(), queue=DEFAULT_QUEUE)
    assert dispatcher.offer(first) is True
    assert dispatcher.offer(second) is False
    (ticket,) = tickets(reg)
    assert ticket["id"] == str(first["_id"]) and ticket["fields"] == ticket_header(reg.live(first["_id"]))
    assert reg.holders("offered") == [first["_id"]] and due(reg, second)


def test_tick_fills_the_idle_slots_in_dispatch_order(reg: Registry, dispatcher: Dispatcher) -> None:
    reg.provide({DEFAULT_QUEUE: 2})
    jobs = [reg.enqueue(f"tick-{i}", priority=i) for i in range(4)]
    assert dispatcher.tick() == 2
    assert [t["id"] for t in tickets(reg)] == [str(jobs[3]["_id"]), str(jobs[2]["_id"])]
    assert reg.free() == 0 and due(reg, jobs[0]) and due(reg, jobs[1])
    assert dispatcher.tick() == 0  # no idle slot


# -- claiming from a shared candidate list ----------------------------------------
def test_claim_first_takes_the_first_still_due_job_of_the_window_in_one_update(
    reg: Registry, other: Registry, hook: CommandHook,
) -> None:
    """Two processes walking the same cached list: what the other took first costs nothing."""
    reg.provide({DEFAULT_QUEUE: 5})
    docs = [reg.enqueue("window") for _ in range(5)]
    for doc in docs[:2]:
        assert other.store.claim(dict(doc), now(), TICKET_LEASE) is Claim.TICKET

    with hook.record() as sent:
        claim, claimed = reg.store.claim_first(docs, now(), TICKET_LEASE)

    assert claim is Claim.TICKET and claimed is not None and claimed["_id"] == docs[2]["_id"]
    # one update by _id (the server picks) and a read of what it marked: no find_one_and_update,
    # which reads the whole collection on SecantusDB
    assert [command for command, collection in sent if collection == reg.connection.jobs.name] == ["update", "find"]
    assert reg.holders("window") == [docs[0]["_id"], docs[1]["_id"], docs[2]["_id"]]
    assert "dispatched_until" in reg.live(docs[2]["_id"]) and due(reg, docs[3])


def test_claim_first_takes_the_oldest_of_its_rank(reg: Registry) -> None:
    """The window is one rank; the server walks the _id index, so the oldest due job goes first (FIFO)."""
    reg.provide({DEFAULT_QUEUE: 1})
    older = reg.enqueue("fifo")
    newer = reg.enqueue("fifo")
    claim, claimed = reg.store.claim_first([newer, older], now(), TICKET_LEASE)
    assert claim is Claim.TICKET and claimed is not None and claimed["_id"] == older["_id"]
    assert due(reg, newer)


def test_a_fill_claims_across_ranks_in_dispatch_order(reg: Registry, dispatcher: Dispatcher) -> None:
    reg.provide({DEFAULT_QUEUE: 3})
    low = reg.enqueue("ranked", priority=0)
    high = [reg.enqueue("ranked", priority=5) for _ in range(2)]
    assert dispatcher.tick() == 3
    assert [ticket["id"] for ticket in tickets(reg)] == [str(high[0]["_id"]), str(high[1]["_id"]), str(low["_id"])]


def test_claim_first_of_a_window_nobody_can_claim_any_more_is_gone(reg: Registry, other: Registry) -> None:
    reg.provide({DEFAULT_QUEUE: 3})
    docs = [reg.enqueue("taken") for _ in range(2)]
    for doc in docs:
        assert other.store.claim(dict(doc), now(), TICKET_LEASE) is Claim.TICKET
    assert reg.store.claim_first(docs, now(), TICKET_LEASE) == (Claim.GONE, None)
    assert reg.free() == 1
