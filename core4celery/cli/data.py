"""What jobs left besides their outcome: ``log`` (core4's ``sys.log``) and ``stdout`` (``sys.stdout``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import click
from bson import ObjectId

from ..config.settings import LOG_LEVELS
from ..core import Core4
from ..store.connection import Doc
from ..store.states import FINAL
from . import handle, main
from .jobs import documents

FOLLOW_INTERVAL = 0.5
FINAL_STATES = {state.value for state in FINAL}


def lines(records: Iterable[Doc]) -> Iterable[str]:
    """Time (UTC), level, job and run, host, logger, message (and traceback)."""
    for doc in records:
        yield (f"{doc['created']:%Y-%m-%d %H:%M:%S} {doc['level']:8} {doc['job_id']} [{doc['trial']}] "
               f"{doc['hostname']} {doc['logger']}: {doc['message']}")
        if doc.get("exception"):
            yield str(doc["exception"]).rstrip()


def ended(core4: Core4, job_id: ObjectId) -> bool:
    """Journaled, removed, or in a final state: no run of it will log any more."""
    doc = core4.store.find(job_id)
    return doc is None or bool(doc.get("journaled")) or doc["state"] in FINAL_STATES


class LogReader:
    """Prints each job's records once, in order, however often it is asked."""

    def __init__(self, core4: Core4, job_ids: list[ObjectId], trial: int | None, levelno: int) -> None:
        self._logs = core4.job_data.logs
        self._trial = trial
        self._levelno = levelno
        self._seen = {job_id: (0, -1) for job_id in job_ids}

    def show(self) -> int:
        shown = 0
        for job_id, after in self._seen.items():
            records = self._logs.read(job_id, self._trial, self._levelno, after)
            for line in lines(records):
                click.echo(line)
            if records:
                self._seen[job_id] = (records[-1]["trial"], records[-1]["seq"])
                shown += len(records)
        return shown


@main.command("log")
@click.argument("target", metavar="ID|NAME")
@click.option("--follow", "-f", is_flag=True, help="keep printing new records until the job(s) end (Ctrl-C stops)")
@click.option("--run", "trial", type=click.IntRange(min=1), help="only run (trial) N")
@click.option("--level", type=click.Choice(LOG_LEVELS, case_sensitive=False), help="only records at or above L")
@click.pass_context
def log_command(ctx: click.Context, target: str, follow: bool, trial: int | None, level: str | None) -> None:
    """Log records of a job's runs (NAME: its live jobs, or its latest journaled ones), oldest first."""
    core4 = handle(ctx)
    job_ids = [ObjectId(str(doc["_id"])) for doc in documents(core4, target)]
    reader = LogReader(core4, job_ids, trial, logging.getLevelName(level.upper()) if level else 0)
    if not follow:
        if not reader.show():
            click.echo("no log records.")
        return
    try:
        while True:
            done = all(ended(core4, job_id) for job_id in job_ids)  # asked first: the last read is after the end
            reader.show()
            if done:
                return
            time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        return


@main.command("stdout")
@click.argument("job_id", metavar="ID")
@click.option("--run", "trial", type=click.IntRange(min=1), help="run (trial) N instead of the latest")
@click.pass_context
def stdout_command(ctx: click.Context, job_id: str, trial: int | None) -> None:
    """What a job's run wrote to stdout/stderr (the tail, up to core4celery_stdout_max_bytes)."""
    core4 = handle(ctx)
    job = core4.get(job_id)
    found = core4.job_data.stdout.read(ObjectId(job["_id"]), trial)
    if found is None:
        which = f"run {trial}" if trial else "no run"
        raise click.ClickException(f"job {job_id}: {which} wrote nothing to stdout/stderr (or it was not stored)")
    if found["cut"]:
        click.echo(f"[first {found['cut']:,} bytes cut; the tail is kept]", err=True)
    click.echo(found["text"], nl=not found["text"].endswith("\n"))
