"""core4's schedules: one elected scheduler, ticks claimed once, one catch-up, skips counted.

Each scheduler here has its own client (as separate workers would) and reads
a shared test clock, so an hour passes in no time; jobs are enqueued through
a real ``Core4`` on the test server (no worker: they wait, so a tick's job
still exists until the test removes it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from celery import Celery

from core4celery import Core4, Core4Task
from core4celery.config.cron import Cron, parse_cron
from core4celery.config.settings import Settings
from core4celery.store.schedules import ScheduleStore
from core4celery.worker.scheduler import Scheduler, Tick, scheduled_tasks

from .conftest import Registry, race

LEASE = 10.0
START = datetime(2026, 3, 2, 9, 0, 30)  # a Monday, half a minute past a whole minute


class Clock:
    def __init__(self) -> None:
        self.at = START

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


@pytest.fixture
def core4(settings: Settings, db_url: str) -> Iterator[Core4]:
    app = Celery("sched-store", broker=db_url)
    core4 = Core4(app, settings=settings)

    @app.task(base=Core4Task, bind=True, shared=False, name="s.every_five", author="test", schedule="*/5 * * * *")
    def every_five(self: Core4Task) -> None:
        pass

    @app.task(base=Core4Task, bind=True, shared=False, name="s.needs_args", author="test")
    def needs_args(self: Core4Task, n: int) -> None:
        pass

    yield core4
    core4.close()
    app.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


Make = Callable[..., Scheduler]


@pytest.fixture
def make(core4: Core4, registries: Callable[[], Registry], clock: Clock) -> Make:
    """A scheduler with its own client; ``schedules`` defaults to the app's scheduled tasks."""

    def build(owner: str, schedules: dict[str, Cron] | None = None, paused: Callable[[], bool] = lambda: False) -> Scheduler:
        store = ScheduleStore(registries().connection)
        found = scheduled_tasks(core4.app.tasks) if schedules is None else schedules
        return Scheduler(store, owner, LEASE, lambda: found, core4.enqueue, paused=paused, clock=clock)

    return build


def state(core4: Core4, name: str = "s.every_five") -> dict[str, object]:
    doc = core4.schedules.states().get(name)
    assert doc is not None, name
    return doc


def live_jobs(core4: Core4, name: str = "s.every_five") -> int:
    return core4.connection.jobs.count_documents({"name": name})


def fired(ticks: list[Tick]) -> list[Tick]:
    return [tick for tick in ticks if tick.outcome == "fired"]


def test_the_first_sight_of_a_schedule_fires_nothing_and_counts_from_then(core4: Core4, make: Make,
                                                                          clock: Clock) -> None:
    assert make("a").beat() == []
    assert state(core4)["last_run"] == START
    assert state(core4)["next_run"] == datetime(2026, 3, 2, 9, 5)
    assert state(core4)["skipped"] == 0
    clock.advance(minutes=4)
    assert make("a").beat() == []  # 09:04:30, next run 09:05
    clock.advance(minutes=1)
    [tick] = make("a").beat()
    assert (tick.name, tick.outcome, tick.at) == ("s.every_five", "fired", clock.at)
    assert state(core4)["last_job"] == tick.job_id and core4.get(tick.job_id or "")["state"] == "pending"
    assert state(core4)["next_run"] == datetime(2026, 3, 2, 9, 10)


def test_of_two_schedulers_only_the_lease_holder_fires_and_a_tick_fires_once(core4: Core4, make: Make,
                                                                             clock: Clock) -> None:
    a, b = make("a"), make("b")
    a.beat()
    assert a.leading and not b.beat() and not b.leading
    for _ in range(3):
        clock.advance(minutes=5)  # past the lease as well: whichever comes first takes it, the other stays out
        ticks = race(a.beat, b.beat)
        assert len(fired(ticks[0] + ticks[1])) == 1
        assert a.leading != b.leading
        core4.remove(fired(ticks[0] + ticks[1])[0].job_id or "")
    assert live_jobs(core4) == 0


def test_two_schedulers_claiming_the_same_tick_only_one_moves_the_bookmark(core4: Core4,
                                                                          registries: Callable[[], Registry]) -> None:
    """Even two schedulers that both believe they lead (a stalled holder wakes after its lease) fire a tick once."""
    first = ScheduleStore(registries().connection)
    second = ScheduleStore(registries().connection)
    cron = "*/5 * * * *"
    first.begin("s.every_five", cron, START, datetime(2026, 3, 2, 9, 5))
    tick = START + timedelta(minutes=5)
    for _ in range(5):
        last = state(core4)["last_run"]
        won = race(lambda: first.claim("s.every_five", cron, last, tick, tick, "a"),  # noqa: B023
                   lambda: second.claim("s.every_five", cron, last, tick, tick, "b"))  # noqa: B023
        assert sorted(won) == [False, True]
        tick += timedelta(minutes=5)
    # a retried claim (its first reply lost) finds its own claim and still holds it
    last, holder = state(core4)["last_run"], state(core4)["claimed_by"]
    assert (first if holder == "a" else second).claim("s.every_five", cron, START, last, last, str(holder))
    assert not (second if holder == "a" else first).claim("s.every_five", cron, START, last, last, "c")


def test_a_dead_schedulers_lease_is_taken_over_after_it_expires(core4: Core4, make: Make, clock: Clock) -> None:
    a, b = make("a"), make("b")
    a.beat()
    assert core4.schedules.leader()["by"] == "a"  # type: ignore[index]
    clock.advance(seconds=LEASE - 1)
    assert not b.beat() and not b.leading  # a's lease still runs ("a" died without a word)
    clock.advance(seconds=2)
    clock.at = clock.at.replace(minute=5, second=1)  # a tick is due as well: 09:05 passed
    [tick] = b.beat()
    assert b.leading and tick.outcome == "fired" and core4.schedules.leader()["by"] == "b"  # type: ignore[index]
    assert a.beat() == [] and not a.leading  # "a" comes back: b holds the lease now
    assert live_jobs(core4) == 1


def test_a_resigning_scheduler_hands_the_lease_on_at_once(core4: Core4, make: Make) -> None:
    a, b = make("a"), make("b")
    a.beat()
    assert not b.beat() and not b.leading
    a.resign()
    assert core4.schedules.leader()["by"] is None  # type: ignore[index]
    b.beat()
    assert b.leading and not a.leading


def test_after_a_long_gap_one_catch_up_run_at_most(core4: Core4, make: Make, clock: Clock) -> None:
    a = make("a")
    a.beat()
    clock.advance(hours=3)  # 36 ticks of */5 were missed
    assert [tick.outcome for tick in a.beat()] == ["fired"]
    assert a.beat() == []  # the same moment again: nothing more
    assert live_jobs(core4) == 1
    core4.remove(str(state(core4)["last_job"]))
    clock.advance(minutes=4)  # 12:04:30: the next tick is 12:05
    assert a.beat() == []
    clock.advance(minutes=1)
    assert [tick.outcome for tick in a.beat()] == ["fired"]


def test_a_tick_whose_job_still_exists_is_skipped_logged_and_counted(core4: Core4, make: Make, clock: Clock,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    a = make("a")
    a.beat()
    clock.advance(minutes=5)
    [first] = a.beat()
    assert first.outcome == "fired"
    with caplog.at_level(logging.INFO, logger="core4celery.worker.scheduler"):
        for n in (1, 2):
            clock.advance(minutes=5)
            [tick] = a.beat()
            assert (tick.outcome, tick.job_id) == ("skipped", first.job_id)
            assert state(core4)["skipped"] == n
    skips = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skips) == 2 and all(r.levelno == logging.INFO for r in skips)
    assert first.job_id in skips[0].getMessage()
    assert live_jobs(core4) == 1
    core4.remove(first.job_id or "")
    clock.advance(minutes=5)
    [again] = a.beat()
    assert again.outcome == "fired" and again.job_id != first.job_id and state(core4)["skipped"] == 2


def test_a_crash_between_claim_and_enqueue_loses_that_tick_only(core4: Core4, make: Make, clock: Clock) -> None:
    """At most once: the claim is the decision; the scheduler that takes over fires the next tick."""
    a, b = make("a"), make("b")
    a.beat()
    clock.advance(minutes=5)
    cron = "*/5 * * * *"
    assert core4.schedules.claim("s.every_five", cron, START, clock.at, clock.at, "a")  # then "a" dies
    clock.advance(seconds=LEASE + 1)
    assert b.beat() == [] and b.leading  # the claimed tick is not fired again
    assert live_jobs(core4) == 0
    clock.advance(minutes=5)
    assert [tick.outcome for tick in b.beat()] == ["fired"]


def test_nothing_fires_while_paused_and_one_catch_up_follows_the_resume(core4: Core4, make: Make,
                                                                        clock: Clock) -> None:
    paused = [True]
    a = make("a", paused=lambda: paused[0])
    paused[0] = False
    a.beat()
    paused[0] = True
    clock.advance(minutes=30)
    assert a.beat() == [] and a.leading  # it keeps the lease meanwhile
    paused[0] = False
    assert [tick.outcome for tick in a.beat()] == ["fired"]
    assert live_jobs(core4) == 1


def test_a_changed_cron_counts_from_the_change(core4: Core4, make: Make, clock: Clock) -> None:
    make("a").beat()
    clock.advance(hours=1)
    hourly = make("a", {"s.every_five": parse_cron("0 * * * *")})
    assert hourly.beat() == []  # the old bookmark belonged to another cron: no catch-up
    assert state(core4)["cron"] == "0 * * * *" and state(core4)["last_run"] == clock.at
    assert state(core4)["next_run"] == datetime(2026, 3, 2, 11, 0)


def test_a_schedule_that_cannot_be_enqueued_records_the_error(core4: Core4, make: Make, clock: Clock) -> None:
    """A task whose arguments are required is refused on each tick, with the reason kept for the CLI."""
    a = make("a", {"s.needs_args": parse_cron("* * * * *")})
    a.beat()
    clock.advance(minutes=1)
    [tick] = a.beat()
    assert tick.outcome == "failed"
    error = state(core4, "s.needs_args")["last_error"]
    assert isinstance(error, dict) and "missing a required argument: 'n'" in error["message"]


def test_an_app_without_schedules_never_takes_the_lease(core4: Core4, make: Make) -> None:
    a = make("a", {})
    assert a.beat() == [] and not a.leading
    assert core4.schedules.leader() is None
