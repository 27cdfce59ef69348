"""``core4celery schedules``: the app's scheduled tasks, their state and the worker that schedules."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from ..clock import now
from ..config.cron import Cron
from ..core import Core4
from ..worker.scheduler import scheduled_tasks
from . import handle, main

STAMP = "%Y-%m-%d %H:%M:%S"


def when(stamp: datetime | None) -> str:
    return "-" if stamp is None else f"{stamp:{STAMP}}"


def lease_line(core4: Core4) -> str:
    lease = core4.schedules.leader() or {}
    holder, until = lease.get("by"), lease.get("until")
    if holder is None:
        return "scheduler: none (the next worker heartbeat takes the lease)"
    if until is None or until < now():
        return f"scheduler: none (the lease of {holder} expired at {when(until)} UTC; another worker takes it)"
    return f"scheduler: {holder} (lease until {when(until)} UTC)"


def note(state: dict[str, Any]) -> str:
    error = state.get("last_error")
    if error:
        return f"error: {error.get('message')}"
    return str(state.get("last_job") or "-")


def schedule_row(name: str, cron: Cron, state: dict[str, Any] | None, width: int) -> str:
    if state is None or state.get("cron") != cron.expression:
        last, upcoming, skipped, last_job = None, None, 0, "- (a worker starts it on its next heartbeat)"
    else:
        last, skipped, last_job = state.get("last_run"), int(state.get("skipped") or 0), note(state)
        upcoming = cron.next_after(last) if last is not None else None
    return (f"{name:{width}} {cron.expression:15} {when(last):19} {when(upcoming):19} {skipped:7d} {last_job}")


@main.command()
@click.pass_context
def schedules(ctx: click.Context) -> None:
    """Scheduled tasks (the schedule= option): cron (UTC), last and next run, ticks skipped, last job."""
    core4 = handle(ctx)
    found = scheduled_tasks(core4.app.tasks)
    if not found:
        click.echo("no schedules.")
        return
    states = core4.schedules.states()
    width = max(len("name"), *(len(name) for name in found))
    click.echo(lease_line(core4))
    click.echo(f"{'name':{width}} {'cron':15} {'last run (UTC)':19} {'next run (UTC)':19} skipped last job")
    for name, cron in sorted(found.items()):
        click.echo(schedule_row(name, cron, states.get(name), width))
