"""core4's schedules with real workers: one tick, one job, whichever worker schedules; a killed scheduler is replaced.

The task's cron is set to a minute twelve hours away, so no tick comes round
by itself while the test runs; each tick is made due by moving the stored
``last_run`` back a day (the next cron time after it has passed).
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from typing import Any

from click.testing import CliRunner

from core4celery.cli import main
from core4celery.clock import now
from core4celery.config.cron import parse_cron
from tests.apps.schedules import build
from tests.conftest import ARTIFACTS
from tests.integration.conftest import Cluster
from tests.workers import WorkerProcess, wait_for

NAME = "sc.tick"


def far_cron() -> str:
    """A daily cron time twelve hours from now: it cannot come round during the test."""
    away = now() + timedelta(hours=12)
    return f"{away.minute} {away.hour} * * *"


class Schedules:
    """Workers of tests/apps/schedules.py and the test's own handle on the same registry."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cron = far_cron()
        self.app, self.core4 = build(cluster.url, self.cron)

    def worker(self, name: str) -> WorkerProcess:
        log_dir = ARTIFACTS / "workers"
        log_dir.mkdir(parents=True, exist_ok=True)
        proc = WorkerProcess(self.cluster.url, f"{self.cluster.test_name}-{name}", 1, app="tests.apps.schedules",
                             log_dir=log_dir, env={"TEST_SCHEDULE": self.cron}).start()
        self.cluster.workers.append(proc)
        self.cluster.wait_registered(proc)
        return proc

    def state(self) -> dict[str, Any] | None:
        return self.core4.schedules.states().get(NAME)

    def leader(self) -> str | None:
        lease = self.core4.schedules.leader() or {}
        return lease.get("by") if lease.get("until") and lease["until"] > now() else None

    def jobs(self) -> list[dict[str, Any]]:
        """Every job of the task ever enqueued (live or journaled)."""
        connection = self.core4.connection
        return [*connection.jobs.find({"name": NAME}), *connection.journal.find({"name": NAME})]

    def make_due(self) -> datetime:
        """Move the bookmark back a day: the tick is due at once. Returns the moved-back value."""
        back = now() - timedelta(days=1)
        self.core4.schedules.set_last_run(NAME, back)
        return back

    def fire_once(self, expected: int) -> dict[str, Any]:
        """Make one tick due; exactly one more job runs, and none after it while every worker beats twice."""
        previous = self.state()["last_run"]  # type: ignore[index]
        self.make_due()
        claimed = wait_for(lambda: (s := self.state()) and s["last_run"] > previous
                           and s.get("last_enqueued_at") == s["last_run"] and s, 30, what="the tick to be claimed and fired")
        job_id = claimed["last_job"]
        self.cluster.wait_journaled(job_id, timeout=30)
        workers = self.core4.connection.workers
        later = now() + timedelta(seconds=1.5)
        pids = [proc.pid for proc in self.cluster.workers]  # the running ones (a killed one is taken out)
        wait_for(lambda: all(w["heartbeat"] > later for w in workers.find({"pid": {"$in": pids}})), 30,
                 what="every worker to beat again")
        assert len(self.jobs()) == expected, self.jobs()
        return claimed


def test_each_due_tick_is_one_job_and_a_killed_scheduler_is_replaced(cluster: Cluster) -> None:
    sched = Schedules(cluster)
    procs = [sched.worker("a"), sched.worker("b")]
    wait_for(lambda: sched.state() and sched.leader(), 30, what="a worker to lead and begin the schedule")
    assert sched.state()["cron"] == sched.cron  # type: ignore[index]
    assert sched.jobs() == []  # a new schedule fires nothing for the past
    for n in (1, 2):
        sched.fire_once(n)
    holder = sched.leader()
    assert holder is not None
    [lead] = [proc for proc in procs if holder.endswith(f":{proc.pid}")]
    [survivor] = [proc for proc in procs if proc is not lead]
    lead.kill9()
    wait_for(lambda: (sched.leader() or "").endswith(f":{survivor.pid}"), 30, what="the other worker to take the lease")
    cluster.workers.remove(lead)
    claimed = sched.fire_once(3)
    assert claimed["claimed_by"].endswith(f":{survivor.pid}")
    wait_for(lambda: f"enqueued as job {claimed['last_job']}" in survivor.output(), 10, what="the survivor's log")
    assert "took the lease" in survivor.output()


def test_a_tick_whose_job_still_exists_is_skipped_and_counted(cluster: Cluster) -> None:
    sched = Schedules(cluster)
    proc = sched.worker("a")
    wait_for(lambda: sched.state() and sched.leader(), 30, what="the worker to lead and begin the schedule")
    waiting = sched.app.tasks[NAME].apply_async(countdown=3600).id  # the same job (no arguments), due in an hour
    back = sched.make_due()
    skipped = wait_for(lambda: (s := sched.state()) and s["last_run"] > back and s["skipped"] == 1 and s,
                       30, what="the tick to be skipped")
    assert skipped["last_job"] == waiting and [str(job["_id"]) for job in sched.jobs()] == [waiting]
    logged = f"skipped at {skipped['last_run']}, its job {waiting} still exists"
    wait_for(lambda: logged in proc.output(), 10, what="the skip in the worker's log")
    sched.core4.remove(waiting)
    sched.fire_once(2)
    assert sched.state()["skipped"] == 1  # type: ignore[index]


def cli(url: str, cron: str, *args: str) -> str:
    sys.modules.pop("tests.apps.schedules", None)  # the app module reads its URL at import
    result = CliRunner().invoke(main, ["-A", "tests.apps.schedules:app", *args],
                                env={"CORE4CELERY_MONGODB_URL": url, "TEST_SCHEDULE": cron})
    assert result.exit_code == 0, result.stdout + result.stderr
    return result.stdout


def test_schedules_command_lists_each_schedule_and_the_lease(cluster: Cluster) -> None:
    sched = Schedules(cluster)
    before = cli(cluster.url, sched.cron, "schedules").splitlines()
    assert before[0] == "scheduler: none (the next worker heartbeat takes the lease)"
    assert before[2].split()[:3] == [NAME, *sched.cron.split()[:2]]
    assert "a worker starts it on its next heartbeat" in before[2]
    proc = sched.worker("a")
    wait_for(lambda: sched.state() and sched.leader(), 30, what="the worker to lead and begin the schedule")
    claimed = sched.fire_once(1)
    lines = cli(cluster.url, sched.cron, "schedules").splitlines()
    assert lines[0].startswith(f"scheduler: {proc.name}@") and f":{proc.pid} (lease until " in lines[0]
    assert lines[1].split() == ["name", "cron", "last", "run", "(UTC)", "next", "run", "(UTC)", "skipped", "last",
                                "job"]
    row = lines[2]
    upcoming = parse_cron(sched.cron).next_after(claimed["last_run"])
    assert row.split() == [NAME, *sched.cron.split(), *f"{claimed['last_run']:%Y-%m-%d %H:%M:%S}".split(),
                           *f"{upcoming:%Y-%m-%d %H:%M:%S}".split(), "0", claimed["last_job"]]

